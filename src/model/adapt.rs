//! First-order adaptation: k steps of θ ← θ − α∘∇L_support(θ), per task,
//! through the update rule's one step (`model::rule`).
//!
//! This is what the server runs, and what meta-training's inner loop and
//! `eval` run. Gradients come from candle's ordinary (first-order)
//! `backward`; nothing here needs `CANDLE_GRAD_DO_NOT_DETACH`.
//!
//! [`adapt_chunked`] bounds memory: the support set is cut into chunks of
//! rows, and each chunk's forward and backward run alone. Because the
//! support loss is a mean, L = Σ_c (n_c/n)·mean_c, the chunks' weighted
//! gradients sum to the whole set's gradient (up to float rounding). One
//! chunk runs exactly the unchunked operations, bit for bit.

use candle_core::{Result, Tensor, Var};

use super::rule::{Rule, State};
use super::{Architecture, InnerLoss, Target, TaskKind};

/// A batch of support sets: `x` is `[T, N, in]`.
#[derive(Clone, Debug)]
pub struct Support {
    pub x: Tensor,
    pub target: Target,
}

/// The result of adaptation: per-task parameters (leading dim `T`) and the
/// per-task support losses before and after.
#[derive(Clone, Debug)]
pub struct Adapted {
    pub params: Vec<Tensor>,
    pub loss_before: Vec<f32>,
    pub loss_after: Vec<f32>,
}

/// Runs `steps` steps of `rule` from θ on each task's support set, on the
/// row-mean support loss ([`adapt_chunked`] takes the model's `inner_loss`).
///
/// θ has the architecture's shapes; the rule's θ-shaped tensors have the
/// same shapes or are one scalar per tensor. With `steps == 0` the result is
/// θ itself, broadcast per task.
pub fn adapt(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    support: &Support,
    steps: usize,
) -> Result<Adapted> {
    adapt_with(arch, task, theta, rule, InnerLoss::Mean, support, steps)
}

/// [`adapt`] on the `inner` support loss, the support set in one chunk.
pub fn adapt_with(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    inner: InnerLoss,
    support: &Support,
    steps: usize,
) -> Result<Adapted> {
    adapt_chunked(arch, task, theta, rule, inner, support, steps, usize::MAX, &mut || {
        Ok(())
    })
}

/// [`adapt`] on the `inner` support loss, with the support rows cut into
/// chunks of at most `rows` (see the module docs). `check` runs before every
/// chunk of every step; an error from it (a cancellation) stops the
/// adaptation there. The losses it reports are the `inner` loss.
#[allow(clippy::too_many_arguments)]
pub fn adapt_chunked(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    inner: InnerLoss,
    support: &Support,
    steps: usize,
    rows: usize,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Adapted> {
    let t = support.x.dim(0)?;
    let theta = &for_target(arch, theta, &support.target)?;
    let rule = &rule.map_param_shaped(&|ts| for_target(arch, ts, &support.target))?;
    let chunks = chunks_of(support, rows)?;
    let params: Vec<Tensor> = theta
        .iter()
        .map(|p| p.detach().broadcast_left(t)?.contiguous())
        .collect::<Result<_>>()?;
    let mut params = arch.start_params(params, &support.x, support.target.onehot(), None, rows, check)?;
    let mut loss_before = None;
    let mut state = State::default();
    for k in 0..steps {
        let vars: Vec<Var> = params.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; tensors.len()];
        let mut losses = Losses::new(t);
        for c in &chunks {
            check()?;
            let per_task =
                c.weigh(inner.support_loss(task, &arch.forward(&tensors, &c.support.x)?, &c.support.target)?)?;
            losses.add(&per_task)?;
            let g = per_task.sum_all()?.backward()?;
            for (acc, p) in grads.iter_mut().zip(&tensors) {
                let gp = g
                    .get(p)
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))?;
                *acc = Some(match acc.take() {
                    None => gp.clone(),
                    Some(a) => (a + gp)?,
                });
            }
        }
        let grads: Vec<Tensor> = grads
            .into_iter()
            .map(|g| g.ok_or_else(|| candle_core::Error::Msg("empty support set".into())))
            .collect::<Result<_>>()?;
        let loss = if rule.reads_loss() {
            Tensor::from_slice(&losses.values, t, support.x.device())?.to_dtype(support.x.dtype())?
        } else {
            grads[0].clone()
        };
        if loss_before.is_none() {
            loss_before = Some(losses.values);
        }
        params = rule
            .step(k, &mut state, &tensors, &grads, &loss)?
            .into_iter()
            .map(|p| p.detach().contiguous())
            .collect::<Result<_>>()?;
    }
    let mut after = Losses::new(t);
    for c in &chunks {
        check()?;
        after.add(&c.weigh(inner.support_loss(
            task,
            &arch.forward(&params, &c.support.x)?,
            &c.support.target,
        )?)?)?;
    }
    Ok(Adapted {
        loss_before: loss_before.unwrap_or_else(|| after.values.clone()),
        loss_after: after.values,
        params,
    })
}

/// The forward pass over inputs `x` (`[T, N, in]`) in chunks of at most
/// `rows` rows, with `check` before each; the outputs are concatenated.
/// Every architecture here treats rows independently.
pub fn forward_chunked(
    arch: &Architecture,
    params: &[Tensor],
    x: &Tensor,
    rows: usize,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Tensor> {
    super::layers::in_row_chunks(x, rows, check, &|c| arch.forward(params, c))
}

/// One chunk of a support set, and its share `n_c / n` of the mean
/// (`None` when it is the whole set: no rescaling, the unchunked ops).
struct Chunk {
    support: Support,
    weight: Option<f64>,
}

impl Chunk {
    fn weigh(&self, per_task: Tensor) -> Result<Tensor> {
        match self.weight {
            None => Ok(per_task),
            Some(w) => per_task.affine(w, 0.0),
        }
    }
}

fn chunks_of(s: &Support, rows: usize) -> Result<Vec<Chunk>> {
    let n = s.x.dim(1)?;
    let rows = rows.max(1);
    if n <= rows {
        return Ok(vec![Chunk {
            support: s.clone(),
            weight: None,
        }]);
    }
    let narrow = |t: &Tensor, start: usize, len: usize| t.narrow(1, start, len);
    (0..n)
        .step_by(rows)
        .map(|start| {
            let len = rows.min(n - start);
            let target = match &s.target {
                Target::Values(y) => Target::Values(narrow(y, start, len)?),
                Target::OneHot(y) => Target::OneHot(narrow(y, start, len)?),
            };
            Ok(Chunk {
                support: Support {
                    x: narrow(&s.x, start, len)?,
                    target,
                },
                weight: Some(len as f64 / n as f64),
            })
        })
        .collect()
}

/// Per-task losses summed over chunks (on the host).
struct Losses {
    values: Vec<f32>,
    chunks: usize,
}

impl Losses {
    fn new(t: usize) -> Self {
        Losses {
            values: vec![0.0; t],
            chunks: 0,
        }
    }

    fn add(&mut self, per_task: &Tensor) -> Result<()> {
        let v = per_task.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        if self.chunks == 0 {
            self.values = v;
        } else {
            for (a, b) in self.values.iter_mut().zip(v) {
                *a += b;
            }
        }
        self.chunks += 1;
        Ok(())
    }
}

/// θ or α sized for the target's class count (see [`Architecture::for_classes`]).
pub fn for_target(arch: &Architecture, params: &[Tensor], target: &Target) -> Result<Vec<Tensor>> {
    match target {
        Target::OneHot(t) if arch.shared_head() => arch.for_classes(params, t.dim(candle_core::D::Minus1)?),
        _ => Ok(params.to_vec()),
    }
}

/// Selects task `i`'s parameters from a per-task batch, keeping a leading dim of 1.
pub fn select_task(params: &[Tensor], i: usize) -> Result<Vec<Tensor>> {
    params.iter().map(|p| p.narrow(0, i, 1)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_step_is_theta_minus_alpha_times_gradient() {
        // Linear model y = w x + b, MSE on one point: the gradient is known in closed form.
        let dev = Device::Cpu;
        let arch = Architecture::Mlp { sizes: vec![1, 1] };
        let theta = vec![
            Tensor::new(&[[2f32]], &dev).unwrap(),
            Tensor::new(&[0.5f32], &dev).unwrap(),
        ];
        let alpha = vec![
            Tensor::new(&[[0.1f32]], &dev).unwrap(),
            Tensor::new(-0.2f32, &dev).unwrap(),
        ];
        let (x, y) = (3f32, 1f32);
        let support = Support {
            x: Tensor::new(&[[[x]]], &dev).unwrap(),
            target: Target::Values(Tensor::new(&[[[y]]], &dev).unwrap()),
        };
        let a = adapt(&arch, TaskKind::Regression, &theta, &Rule::metasgd(&alpha), &support, 1).unwrap();
        let r = 2.0 * x + 0.5 - y; // residual
        let (gw, gb) = (2.0 * r * x, 2.0 * r);
        let w = a.params[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = a.params[1].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((w - (2.0 - 0.1 * gw)).abs() < 1e-5);
        assert!((b - (0.5 + 0.2 * gb)).abs() < 1e-5, "a negative α steps uphill");
        assert!((a.loss_before[0] - r * r).abs() < 1e-4);
    }

    /// Two classes whose embeddings are the same and whose texts differ in
    /// one word ("on" / "off"): from the class-shared row they score alike;
    /// one step moves each class's bucket weights by α∘(its buckets − the
    /// other's)/N, so the query's own word decides.
    #[test]
    fn one_step_tells_apart_classes_only_their_token_buckets_separate() {
        let dev = Device::Cpu;
        let arch = Architecture::Features {
            dim: 2,
            hidden: vec![],
            scale: 1.0,
            center: false,
            cosine: true,
            linear_body: false,
            task_center: false,
            proto_start: false,
            lexical: 3,
        };
        // (scale 1: the buckets' logits are scaled as the cosine's.)
        let theta = vec![
            Tensor::new(&[[1f32, 0.0, 0.0, 0.0, 0.0]], &dev).unwrap(),
            Tensor::new(&[0f32], &dev).unwrap(),
        ];
        let alpha: Vec<Tensor> = theta.iter().map(|t| t.ones_like().unwrap()).collect();
        // Buckets: 0 = "turn", 1 = "on", 2 = "off"; the embedding is the same.
        let x = |on: bool| [0.6f32, 0.8, 1.0, on as u8 as f32, !on as u8 as f32];
        let support = Support {
            x: Tensor::new(&[[x(true), x(false)]], &dev).unwrap(),
            target: Target::OneHot(Tensor::new(&[[[1f32, 0.0], [0.0, 1.0]]], &dev).unwrap()),
        };
        let a = adapt(
            &arch,
            TaskKind::Classification,
            &theta,
            &Rule::metasgd(&alpha),
            &support,
            1,
        )
        .unwrap();
        assert!((a.loss_before[0] - 2f32.ln()).abs() < 1e-6, "alike before the step");
        let queries = Tensor::new(&[[x(false), x(true)]], &dev).unwrap();
        let logits = arch.forward(&a.params, &queries).unwrap().to_vec3::<f32>().unwrap();
        // Each class's "on"/"off" weight moved by ±1·(1 − ½)/2 = ±0.25.
        assert!((logits[0][0][1] - logits[0][0][0] - 0.5).abs() < 1e-5, "{logits:?}");
        assert!((logits[0][1][0] - logits[0][1][1] - 0.5).abs() < 1e-5, "{logits:?}");
    }

    #[test]
    fn chunked_gradients_and_predictions_agree_with_unchunked() {
        let dev = Device::Cpu;
        let arch = Architecture::Mlp { sizes: vec![2, 16, 3] };
        let theta: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|p| Tensor::randn(0f32, 0.5, p.shape.as_slice(), &dev).unwrap())
            .collect();
        let alpha: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|p| {
                Tensor::ones(p.shape.as_slice(), candle_core::DType::F32, &dev)
                    .unwrap()
                    .affine(0.1, 0.0)
                    .unwrap()
            })
            .collect();
        let n = 23;
        let x = Tensor::randn(0f32, 1.0, (1, n, 2), &dev).unwrap();
        let idx: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let onehot = Tensor::new(idx.as_slice(), &dev)
            .unwrap()
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let onehot = Tensor::eye(3, candle_core::DType::F32, &dev)
            .unwrap()
            .index_select(&onehot, 0)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let s = Support {
            x: x.clone(),
            target: Target::OneHot(onehot),
        };
        let whole = adapt(&arch, TaskKind::Classification, &theta, &Rule::metasgd(&alpha), &s, 3).unwrap();
        let mut calls = 0;
        let mut count = || {
            calls += 1;
            Ok(())
        };
        let parts = adapt_chunked(
            &arch,
            TaskKind::Classification,
            &theta,
            &Rule::metasgd(&alpha),
            InnerLoss::Mean,
            &s,
            3,
            5,
            &mut count,
        )
        .unwrap();
        assert_eq!(
            calls,
            3 * 5 + 5,
            "a check before each of 5 chunks, 3 steps and the final loss"
        );
        for (p, q) in whole.params.iter().zip(&parts.params) {
            let d = max_abs_diff(p, q);
            assert!(d < 1e-6, "{d}");
        }
        assert!((whole.loss_before[0] - parts.loss_before[0]).abs() < 1e-6);
        assert!((whole.loss_after[0] - parts.loss_after[0]).abs() < 1e-6);
        let a = arch.forward(&whole.params, &x).unwrap();
        let b = forward_chunked(&arch, &whole.params, &x, 4, &mut || Ok(())).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-6);
        // One chunk is the unchunked computation, bit for bit.
        let one = adapt_chunked(
            &arch,
            TaskKind::Classification,
            &theta,
            &Rule::metasgd(&alpha),
            InnerLoss::Mean,
            &s,
            3,
            n,
            &mut || Ok(()),
        )
        .unwrap();
        for (p, q) in whole.params.iter().zip(&one.params) {
            assert_eq!(
                p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    /// A small conv4 (4 filters; with `proto_start`, the head started at the
    /// prototypes) in f64 with random θ, α = 0.5, and a
    /// 3-class support set of `x` (`[1, n, 784]`), labels cycling.
    fn conv4_f64(x: Tensor, proto_start: bool) -> (Architecture, Vec<Tensor>, Vec<Tensor>, Support) {
        let dev = Device::Cpu;
        let arch = Architecture::Conv4 {
            channels: 1,
            side: 28,
            hidden: 4,
            proto_start,
            shift_radius: 0,
        };
        let theta = arch
            .params()
            .iter()
            .map(|p| Tensor::randn(0f64, 0.3, p.shape.as_slice(), &dev).unwrap())
            .collect();
        let alpha = arch
            .params()
            .iter()
            .map(|_| Tensor::new(0.5f64, &dev).unwrap())
            .collect();
        let n = x.dim(1).unwrap();
        let idx: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let idx = Tensor::new(idx.as_slice(), &dev).unwrap();
        let onehot = Tensor::eye(3, candle_core::DType::F64, &dev)
            .unwrap()
            .index_select(&idx, 0)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let s = Support {
            x,
            target: Target::OneHot(onehot),
        };
        (arch, theta, alpha, s)
    }

    /// On conv4 in f64 the chunked sum of weighted gradients is the whole
    /// set's gradient to 1e-10: the chunking is exact, and what differs in
    /// f32 is rounding only.
    #[test]
    fn chunked_conv4_adaptation_is_exact_in_f64() {
        for proto_start in [false, true] {
            chunked_conv4_adaptation_is_exact(proto_start);
        }
    }

    /// The prototype start's class means are computed in the same chunks.
    fn chunked_conv4_adaptation_is_exact(proto_start: bool) {
        let x = Tensor::rand(0f64, 1.0, (1, 13, 784), &Device::Cpu).unwrap();
        let (arch, theta, alpha, s) = conv4_f64(x, proto_start);
        let whole = adapt(&arch, TaskKind::Classification, &theta, &Rule::metasgd(&alpha), &s, 3).unwrap();
        let parts = adapt_chunked(
            &arch,
            TaskKind::Classification,
            &theta,
            &Rule::metasgd(&alpha),
            InnerLoss::Mean,
            &s,
            3,
            4,
            &mut || Ok(()),
        )
        .unwrap();
        for (p, q) in whole.params.iter().zip(&parts.params) {
            let d = max_abs_diff(p, q);
            assert!(d < 1e-10, "{d}");
        }
    }

    /// Three adaptation steps of conv4 with the pooling that non-CPU devices
    /// run (elementwise ops) give the CPU custom op's parameters exactly, on
    /// images with large blank (tied) regions.
    #[test]
    fn window_pooling_adapts_as_the_cpu_op_at_three_steps() {
        let n = 6;
        let ink: Vec<f64> = (0..n * 784)
            .map(|i| {
                if (i % 784) / 28 > 14 && (i % 28) < 20 {
                    ((i * 31) % 7) as f64 / 7.0
                } else {
                    0.0
                }
            })
            .collect();
        let (arch, theta, alpha, s) = conv4_f64(Tensor::from_vec(ink, (1, n, 784), &Device::Cpu).unwrap(), false);
        let cpu = adapt(&arch, TaskKind::Classification, &theta, &Rule::metasgd(&alpha), &s, 3).unwrap();
        let win = crate::model::conv::with_window_pooling(|| {
            adapt(&arch, TaskKind::Classification, &theta, &Rule::metasgd(&alpha), &s, 3).unwrap()
        });
        for (p, q) in cpu.params.iter().zip(&win.params) {
            let d = max_abs_diff(p, q);
            assert!(d < 1e-12, "{d}");
        }
    }

    #[test]
    fn a_failing_check_stops_adaptation() {
        let dev = Device::Cpu;
        let arch = Architecture::Mlp { sizes: vec![1, 4, 1] };
        let theta: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|p| Tensor::ones(p.shape.as_slice(), candle_core::DType::F32, &dev).unwrap())
            .collect();
        let alpha: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|_| Tensor::new(0.01f32, &dev).unwrap())
            .collect();
        let s = Support {
            x: Tensor::zeros((1, 8, 1), candle_core::DType::F32, &dev).unwrap(),
            target: Target::Values(Tensor::zeros((1, 8, 1), candle_core::DType::F32, &dev).unwrap()),
        };
        let mut calls = 0;
        let mut stop_at_third = || {
            calls += 1;
            if calls == 3 {
                Err(candle_core::Error::Msg("cancelled".into()))
            } else {
                Ok(())
            }
        };
        let e = adapt_chunked(
            &arch,
            TaskKind::Regression,
            &theta,
            &Rule::metasgd(&alpha),
            InnerLoss::Mean,
            &s,
            10,
            4,
            &mut stop_at_third,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cancelled"));
        assert_eq!(calls, 3);
    }

    /// The prototype start's pass over the support set checks before each
    /// chunk too: a request cancelled there does no more of it, nor any step.
    #[test]
    fn a_failing_check_stops_the_prototype_start() {
        let x = Tensor::rand(0f64, 1.0, (1, 13, 784), &Device::Cpu).unwrap();
        let (arch, theta, alpha, s) = conv4_f64(x, true);
        // 3 steps in chunks of 4 rows; `calls` counts the checks, and the
        // `stop_at`-th one cancels.
        let run = |stop_at: usize| {
            let mut calls = 0;
            let mut check = || {
                calls += 1;
                if calls == stop_at {
                    Err(candle_core::Error::Msg("cancelled".into()))
                } else {
                    Ok(())
                }
            };
            let rule = Rule::metasgd(&alpha);
            let r = adapt_chunked(
                &arch,
                TaskKind::Classification,
                &theta,
                &rule,
                InnerLoss::Mean,
                &s,
                3,
                4,
                &mut check,
            );
            (r.map(|_| ()), calls)
        };
        let (r, calls) = run(2);
        assert!(r.unwrap_err().to_string().contains("cancelled"));
        assert_eq!(calls, 2, "stopped in the start's second chunk of four");
        // Run through: the start's 4 chunks, 3 steps of 4, the loss after's 4.
        let (r, calls) = run(usize::MAX);
        r.unwrap();
        assert_eq!(calls, 4 + 3 * 4 + 4);
    }

    /// Largest |a − b|, in f64 whatever the tensors' dtype.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn tasks_in_a_batch_adapt_independently() {
        let dev = Device::Cpu;
        let arch = Architecture::Mlp { sizes: vec![1, 8, 1] };
        let theta: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|p| {
                Tensor::ones(p.shape.as_slice(), candle_core::DType::F32, &dev)
                    .unwrap()
                    .affine(0.3, 0.0)
                    .unwrap()
            })
            .collect();
        let alpha: Vec<Tensor> = arch
            .params()
            .iter()
            .map(|_| Tensor::new(0.01f32, &dev).unwrap())
            .collect();
        let xs = Tensor::new(&[[[1f32], [2.0]], [[-1f32], [0.5]]], &dev).unwrap();
        let ys = Tensor::new(&[[[0f32], [1.0]], [[2f32], [-1.0]]], &dev).unwrap();
        let both = adapt(
            &arch,
            TaskKind::Regression,
            &theta,
            &Rule::metasgd(&alpha),
            &Support {
                x: xs.clone(),
                target: Target::Values(ys.clone()),
            },
            3,
        )
        .unwrap();
        for t in 0..2 {
            let one = Support {
                x: xs.narrow(0, t, 1).unwrap(),
                target: Target::Values(ys.narrow(0, t, 1).unwrap()),
            };
            let alone = adapt(&arch, TaskKind::Regression, &theta, &Rule::metasgd(&alpha), &one, 3).unwrap();
            for (p, q) in select_task(&both.params, t).unwrap().iter().zip(&alone.params) {
                let d = p
                    .sub(q)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-6);
            }
            assert!(both.loss_after[t] < both.loss_before[t]);
        }
    }
}
