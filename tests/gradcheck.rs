//! Gradient check of the meta-gradient: autograd (second order) against
//! central finite differences of the meta-loss, in f64, for 1 and 3 steps.
//!
//! This binary sets `CANDLE_GRAD_DO_NOT_DETACH=1` for itself, as `train` does.

use candle_core::{DType, Device, Tensor, Var};
use metasgd::metasgd::{meta_loss, Order};
use metasgd::model::{Architecture, InnerLoss, Target, TaskKind};
use metasgd::tasks::Episode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn enable_second_order() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1"));
}

fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

struct Problem {
    arch: Architecture,
    task: TaskKind,
    theta: Vec<Tensor>,
    alpha: Vec<Tensor>,
    ep: Episode,
}

fn problem(task: TaskKind, seed: u64) -> Problem {
    let out = if task == TaskKind::Regression { 1 } else { 3 };
    let arch = Architecture::Mlp {
        sizes: vec![2, 6, 5, out],
    };
    problem_for(arch, task, seed, 2, out)
}

/// A conv4 with 3 filters on 16×16 inputs (a 1×1 feature map), 3 classes.
fn conv_problem(seed: u64, proto_start: bool) -> Problem {
    conv_problem_shifted(seed, proto_start, 0)
}

/// The same with a shift ensemble of `shift_radius`.
fn conv_problem_shifted(seed: u64, proto_start: bool, shift_radius: usize) -> Problem {
    let arch = Architecture::Conv4 {
        channels: 1,
        side: 16,
        hidden: 3,
        proto_start,
        shift_radius,
    };
    problem_for(arch, TaskKind::Classification, seed, 256, 3)
}

fn problem_for(arch: Architecture, task: TaskKind, seed: u64, input: usize, out: usize) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let theta: Vec<Tensor> = arch
        .params()
        .iter()
        .map(|s| rand_tensor(&mut rng, &s.shape, -0.8, 0.8))
        .collect();
    // α includes negative entries, as trained α does.
    let alpha: Vec<Tensor> = arch
        .params()
        .iter()
        .map(|s| rand_tensor(&mut rng, &s.shape, -0.05, 0.3))
        .collect();
    let (t, k, q) = (2, 5, 4);
    let target = |rng: &mut ChaCha8Rng, n: usize| match task {
        TaskKind::Regression => Target::Values(rand_tensor(rng, &[t, n, 1], -2.0, 2.0)),
        TaskKind::Classification => {
            let mut v = vec![0f64; t * n * out];
            for i in 0..t * n {
                v[i * out + rng.random_range(0..out)] = 1.0;
            }
            Target::OneHot(Tensor::from_vec(v, (t, n, out), &Device::Cpu).unwrap())
        }
    };
    let ep = Episode {
        support_x: rand_tensor(&mut rng, &[t, k, input], -2.0, 2.0),
        support_t: target(&mut rng, k),
        query_x: rand_tensor(&mut rng, &[t, q, input], -2.0, 2.0),
        query_t: target(&mut rng, q),
    };
    Problem {
        arch,
        task,
        theta,
        alpha,
        ep,
    }
}

fn loss_at(p: &Problem, theta: &[Tensor], alpha: &[Tensor], steps: usize, order: Order) -> f64 {
    meta_loss(&p.arch, p.task, theta, alpha, &p.ep, steps, order)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Autograd meta-gradients (θ then α), flattened per tensor.
fn autograd(p: &Problem, steps: usize, order: Order) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let tv: Vec<Var> = p.theta.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let av: Vec<Var> = p.alpha.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tt: Vec<Tensor> = tv.iter().map(|v| v.as_tensor().clone()).collect();
    let at: Vec<Tensor> = av.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = meta_loss(&p.arch, p.task, &tt, &at, &p.ep, steps, order).unwrap();
    let g = loss.backward().unwrap();
    let flat = |ts: &[Tensor]| -> Vec<Vec<f64>> {
        ts.iter()
            .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect()
    };
    (flat(&tt), flat(&at))
}

/// Central finite differences of the exact (second-order) meta-loss.
fn finite_differences(p: &Problem, steps: usize, wrt_alpha: bool) -> Vec<Vec<f64>> {
    let eps = 1e-6;
    let base = if wrt_alpha { &p.alpha } else { &p.theta };
    (0..base.len())
        .map(|i| {
            let flat = base[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            (0..flat.len())
                .map(|j| {
                    let bumped = |d: f64| {
                        let mut v = flat.clone();
                        v[j] += d;
                        let mut ts = base.clone();
                        ts[i] = Tensor::from_vec(v, base[i].shape(), &Device::Cpu).unwrap();
                        if wrt_alpha {
                            loss_at(p, &p.theta, &ts, steps, Order::Second)
                        } else {
                            loss_at(p, &ts, &p.alpha, steps, Order::Second)
                        }
                    };
                    (bumped(eps) - bumped(-eps)) / (2.0 * eps)
                })
                .collect()
        })
        .collect()
}

fn max_rel_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let scale = b.iter().flatten().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn check(task: TaskKind, steps: usize) {
    check_problem(problem(task, 7 + steps as u64), steps);
}

fn check_problem(p: Problem, steps: usize) {
    enable_second_order();
    let task = p.task;
    assert_eq!(p.theta[0].dtype(), DType::F64);
    let (gt, ga) = autograd(&p, steps, Order::Second);
    let (ft, fa) = (
        finite_differences(&p, steps, false),
        finite_differences(&p, steps, true),
    );
    let (et, ea) = (max_rel_err(&gt, &ft), max_rel_err(&ga, &fa));
    assert!(
        et < 1e-6,
        "{task:?} {steps} step(s): θ meta-gradient off by {et:e} (relative to max |grad|)"
    );
    assert!(ea < 1e-6, "{task:?} {steps} step(s): α meta-gradient off by {ea:e}");
    // The gradients are not trivially zero.
    assert!(gt.iter().flatten().any(|x| x.abs() > 1e-4) && ga.iter().flatten().any(|x| x.abs() > 1e-4));
}

#[test]
fn metagradient_matches_finite_differences_one_step() {
    check(TaskKind::Regression, 1);
}

#[test]
fn metagradient_matches_finite_differences_three_steps() {
    check(TaskKind::Regression, 3);
}

#[test]
fn metagradient_matches_finite_differences_cross_entropy() {
    check(TaskKind::Classification, 1);
    check(TaskKind::Classification, 3);
}

/// With one step, the first-order α-gradient −∇L_q(θ')∘g is already exact,
/// while the first-order θ-gradient drops the Hessian term and is not.
#[test]
fn first_order_alpha_gradient_is_exact_for_one_step() {
    enable_second_order();
    let p = problem(TaskKind::Regression, 11);
    let (st, sa) = autograd(&p, 1, Order::Second);
    let (ft, fa) = autograd(&p, 1, Order::First);
    assert!(
        max_rel_err(&fa, &sa) < 1e-12,
        "first-order α-gradient differs from the exact one"
    );
    assert!(
        max_rel_err(&ft, &st) > 1e-4,
        "first-order θ-gradient should differ from the exact one"
    );
}

/// The conv4 path (im2col and max-pool custom ops, the class-shared head
/// expanded to 3 rows): exact meta-gradients, so both the ops' backward and
/// their backward-of-backward are right.
#[test]
fn conv4_metagradient_matches_finite_differences() {
    check_problem(conv_problem(5, false), 1);
    check_problem(conv_problem(6, false), 2);
}

/// The prototype start (`model::proto`): the meta-gradient flows through
/// the class means into the body and through the metric row, and then
/// through the steps, as Proto-MAML's does.
#[test]
fn conv4_prototype_start_metagradient_matches_finite_differences() {
    check_problem(conv_problem(15, true), 1);
    check_problem(conv_problem(16, true), 2);
}

/// The shift ensemble (`conv::features`): the copies, the mean of their
/// unit features and its normalization are differentiated exactly, with
/// the class-shared head and with the prototype start.
#[test]
fn conv4_shift_ensemble_metagradient_matches_finite_differences() {
    check_problem(conv_problem_shifted(25, false, 1), 1);
    check_problem(conv_problem_shifted(26, true, 1), 2);
}

/// The text intents head: a class-shared head on feature vectors, plain
/// and cosine, with a learned center and L2 normalization, with a ReLU body,
/// and with token buckets beside the embedding.
#[test]
fn features_head_metagradient_matches_finite_differences() {
    for (hidden, center, cosine, linear_body, task_center, proto_start, lexical, seed) in [
        (vec![4], false, false, false, false, false, 0, 7),
        (vec![], true, true, false, false, false, 0, 8),
        (vec![4], true, false, false, false, false, 0, 9),
        (vec![], false, true, false, false, false, 0, 10),
        (vec![6], true, true, true, false, false, 0, 11),
        (vec![], true, true, false, true, false, 0, 12),
        // The prototype start, on a plain head (its metric row is what θ
        // is then) and on the shipped intents design.
        (vec![], false, false, false, false, true, 0, 13),
        (vec![6], true, true, true, true, true, 0, 14),
        // Token buckets beside the embedding: on the intents design (the
        // cosine head plus the buckets' dot product) and on a dot head.
        (vec![6], true, true, true, true, false, 4, 15),
        (vec![4], true, false, false, false, false, 3, 16),
        // ... and with the prototype start on the embedding's part.
        (vec![6], true, true, true, true, true, 4, 17),
    ] {
        let center_or_cosine = center || cosine || proto_start;
        let arch = Architecture::Features {
            dim: 6,
            hidden,
            scale: 1.5,
            center,
            cosine,
            linear_body,
            task_center,
            proto_start,
            lexical,
        };
        // (A plain linear head with no body is left out: softmax ignores the
        // shared row w0·h, so its θ-gradient is exactly zero at any step count.)
        // A ReLU body's first step from the shared row gets no gradient, so
        // without center or cosine, θ matters from the second step on.
        let input = 6 + lexical;
        if center_or_cosine {
            check_problem(problem_for(arch.clone(), TaskKind::Classification, seed, input, 3), 1);
        }
        check_problem(problem_for(arch, TaskKind::Classification, seed + 10, input, 3), 2);
    }
}

/// The learned update rules (`model::rule`), each on the regression and
/// the classification MLP at 1 and 3 steps: the meta-gradients of θ and of
/// every one of the rule's own tensors against central differences.
mod rules {
    use super::*;
    use metasgd::metasgd::meta_loss_with;
    use metasgd::model::rule::{Rule, LSTM_INPUTS};

    fn rule_for(kind: &str, p: &Problem, rng: &mut ChaCha8Rng, steps: usize) -> Rule {
        let like = |rng: &mut ChaCha8Rng, lo, hi| -> Vec<Tensor> {
            p.theta.iter().map(|t| rand_tensor(rng, t.dims(), lo, hi)).collect()
        };
        if let Some(inner) = kind.strip_prefix("clipped ") {
            // A bound well below these tasks' gradient norms: every step clips.
            return rule_for(inner, p, rng, steps).clipped(Some(0.05));
        }
        match kind {
            "metasgd" => Rule::MetaSgd { alpha: p.alpha.clone() },
            // Per tensor for step 0 (MAML++'s LSLR), per element after.
            "per_step" => Rule::PerStep {
                alpha: (0..steps)
                    .map(|k| {
                        if k == 0 {
                            p.theta.iter().map(|_| rand_tensor(rng, &[1], 0.02, 0.3)).collect()
                        } else {
                            like(rng, -0.05, 0.3)
                        }
                    })
                    .collect(),
            },
            "momentum" => Rule::Momentum {
                alpha: like(rng, -0.05, 0.3),
                beta: like(rng, 0.1, 0.9),
            },
            _ => Rule::Lstm {
                wf: rand_tensor(rng, &[LSTM_INPUTS], -0.5, 0.5),
                bf: rand_tensor(rng, &[1], 1.0, 3.0),
                wi: rand_tensor(rng, &[LSTM_INPUTS], -0.5, 0.5),
                bi: rand_tensor(rng, &[1], -3.0, -1.0),
            },
        }
    }

    fn loss(p: &Problem, theta: &[Tensor], rule: &Rule, inner: InnerLoss, steps: usize) -> f64 {
        meta_loss_with(&p.arch, p.task, theta, rule, inner, &p.ep, steps, Order::Second)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    /// Autograd and central differences of every tensor of `ts`, where
    /// `at(ts)` is the meta-loss with `ts` in place.
    fn compare(what: &str, ts: &[Tensor], at: &dyn Fn(&[Tensor]) -> f64, grads: &[Vec<f64>]) {
        let eps = 1e-6;
        let fd: Vec<Vec<f64>> = (0..ts.len())
            .map(|i| {
                let v0 = flat(&ts[i]);
                (0..v0.len())
                    .map(|j| {
                        let bumped = |d: f64| {
                            let mut v = v0.clone();
                            v[j] += d;
                            let mut b = ts.to_vec();
                            b[i] = Tensor::from_vec(v, ts[i].shape(), &Device::Cpu).unwrap();
                            at(&b)
                        };
                        (bumped(eps) - bumped(-eps)) / (2.0 * eps)
                    })
                    .collect()
            })
            .collect();
        let e = max_rel_err(grads, &fd);
        assert!(e < 1e-6, "{what}: meta-gradient off by {e:e} (relative to max |grad|)");
        assert!(
            grads.iter().flatten().any(|x| x.abs() > 1e-5),
            "{what}: gradient is zero"
        );
    }

    fn check_rule(kind: &str, task: TaskKind, steps: usize) {
        check_rule_with(kind, task, steps, InnerLoss::Mean);
    }

    fn check_rule_with(kind: &str, task: TaskKind, steps: usize, inner: InnerLoss) {
        enable_second_order();
        let p = problem(task, 21 + steps as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(5 + steps as u64);
        let rule = rule_for(kind, &p, &mut rng, steps);
        let tv: Vec<Var> = p.theta.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let rv: Vec<Var> = rule.tensors().iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tt: Vec<Tensor> = tv.iter().map(|v| v.as_tensor().clone()).collect();
        let rt: Vec<Tensor> = rv.iter().map(|v| v.as_tensor().clone()).collect();
        let l = meta_loss_with(
            &p.arch,
            p.task,
            &tt,
            &rule.with_tensors(&rt).unwrap(),
            inner,
            &p.ep,
            steps,
            Order::Second,
        )
        .unwrap();
        let g = l.backward().unwrap();
        // A tensor the loss does not reach (β at one step: v₀ = 0) has no
        // gradient entry: its gradient is zero, and the differences say so.
        let get = |ts: &[Tensor]| -> Vec<Vec<f64>> {
            ts.iter()
                .map(|t| g.get(t).map_or_else(|| vec![0.0; t.elem_count()], flat))
                .collect()
        };
        let what = format!("{kind} {task:?} {steps} step(s), {inner:?} inner loss");
        compare(
            &format!("{what}, θ"),
            &p.theta,
            &|th| loss(&p, th, &rule, inner, steps),
            &get(&tt),
        );
        let rule_ts = rule.tensors();
        compare(
            &format!("{what}, the rule's tensors"),
            &rule_ts,
            &|rs| loss(&p, &p.theta, &rule.with_tensors(rs).unwrap(), inner, steps),
            &get(&rt),
        );
    }

    #[test]
    fn metasgd_rule_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule("metasgd", TaskKind::Regression, steps);
        }
    }

    #[test]
    fn per_step_rule_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule("per_step", TaskKind::Regression, steps);
            check_rule("per_step", TaskKind::Classification, steps);
        }
    }

    #[test]
    fn momentum_rule_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule("momentum", TaskKind::Regression, steps);
            check_rule("momentum", TaskKind::Classification, steps);
        }
    }

    #[test]
    fn lstm_rule_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule("lstm", TaskKind::Regression, steps);
            check_rule("lstm", TaskKind::Classification, steps);
        }
    }

    #[test]
    fn clipped_rules_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule("clipped per_step", TaskKind::Regression, steps);
            check_rule("clipped momentum", TaskKind::Classification, steps);
        }
    }

    /// The per-class inner loss (the row mean times the class count) through
    /// Meta-SGD and per-step rates: its scale enters every step's update.
    #[test]
    fn per_class_inner_loss_metagradients_match_finite_differences() {
        for steps in [1, 3] {
            check_rule_with("metasgd", TaskKind::Classification, steps, InnerLoss::PerClass);
            check_rule_with("per_step", TaskKind::Classification, steps, InnerLoss::PerClass);
        }
    }
}
