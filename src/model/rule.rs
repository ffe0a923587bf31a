//! Learned update rules: how one inner step turns the parameters and their
//! support-loss gradient into the next parameters. Adaptation (serving) and
//! the meta-objective (training) call the same [`Rule::step`].
//!
//! - `metasgd`: θ ← θ − α∘g; α per element, or per tensor (MAML).
//! - `per_step`: θ ← θ − α_k∘g at step k (MAML++'s LSLR, per element or per
//!   tensor). A step past the trained ones uses the last trained α.
//! - `momentum`: v ← β∘v + g, θ ← θ − α∘v, with α and β learned (v₀ = 0).
//! - `lstm`: the coordinate-wise meta-learner of Ravi & Larochelle (2017):
//!   the cell state is θ, θ_t = f_t∘θ_{t−1} − i_t∘g_t, with the gates
//!   f_t = σ(w_f·[∇̃, L̃, θ_{t−1}, f_{t−1}] + b_f) and i_t likewise, one small
//!   cell shared by every coordinate. ∇̃ and L̃ are the gradient and the
//!   task's loss preprocessed as in the paper (two values each, p = 10);
//!   f₀ = i₀ = 0.
//!
//! Every operation is a differentiable tensor op, so the meta-gradient of
//! θ and of the rule's own tensors flows through steps (`tests/gradcheck.rs`
//! checks it against finite differences in f64).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// The rule a model declares (`update_rule` in its manifest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum UpdateRule {
    #[default]
    Metasgd,
    PerStep,
    Momentum,
    Lstm,
}

impl UpdateRule {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateRule::Metasgd => "metasgd",
            UpdateRule::PerStep => "per_step",
            UpdateRule::Momentum => "momentum",
            UpdateRule::Lstm => "lstm",
        }
    }
}

/// Inputs of an LSTM gate: ∇̃ (2), L̃ (2), θ, the previous gate.
pub const LSTM_INPUTS: usize = 6;

/// The preprocessing's p: values below e^−p are read as linear.
const P: f64 = 10.0;

/// A rule with its learned tensors, each θ-shaped one in θ's order.
#[derive(Clone, Debug)]
pub enum Rule {
    MetaSgd {
        alpha: Vec<Tensor>,
    },
    /// `alpha[k]` for step k.
    PerStep {
        alpha: Vec<Vec<Tensor>>,
    },
    Momentum {
        alpha: Vec<Tensor>,
        beta: Vec<Tensor>,
    },
    /// Gate weights `[LSTM_INPUTS]` and biases `[1]`.
    Lstm {
        wf: Tensor,
        bf: Tensor,
        wi: Tensor,
        bi: Tensor,
    },
    /// `inner` with each task's gradient scaled to an L2 norm (over all
    /// parameters) of at most `max` at every step (the manifest's
    /// `inner_grad_clip`): a task with huge gradients takes a bounded step
    /// instead of blowing up.
    Clipped {
        max: f64,
        inner: Box<Rule>,
    },
}

/// What a rule carries from one step to the next.
#[derive(Clone, Debug, Default)]
pub struct State {
    velocity: Option<Vec<Tensor>>,
    gates: Option<(Vec<Tensor>, Vec<Tensor>)>,
}

impl Rule {
    /// Meta-SGD's rule with these rates (θ-shaped or one scalar per tensor).
    pub fn metasgd(alpha: &[Tensor]) -> Rule {
        Rule::MetaSgd { alpha: alpha.to_vec() }
    }

    pub fn kind(&self) -> UpdateRule {
        match self {
            Rule::MetaSgd { .. } => UpdateRule::Metasgd,
            Rule::PerStep { .. } => UpdateRule::PerStep,
            Rule::Momentum { .. } => UpdateRule::Momentum,
            Rule::Lstm { .. } => UpdateRule::Lstm,
            Rule::Clipped { inner, .. } => inner.kind(),
        }
    }

    /// `self` with per-task gradient clipping at `max`, when there is one.
    pub fn clipped(self, max: Option<f64>) -> Rule {
        match max {
            Some(max) => Rule::Clipped {
                max,
                inner: Box::new(self.unclipped().clone()),
            },
            None => self,
        }
    }

    /// The rule without its clipping.
    pub fn unclipped(&self) -> &Rule {
        match self {
            Rule::Clipped { inner, .. } => inner.unclipped(),
            r => r,
        }
    }

    /// The per-task gradient clipping, if any.
    pub fn clip(&self) -> Option<f64> {
        match self {
            Rule::Clipped { max, .. } => Some(*max),
            _ => None,
        }
    }

    /// The same rule with every tensor passed through `f` (to move it to a
    /// device or change its dtype).
    pub fn map_all(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Rule> {
        let ts = self.tensors().iter().map(f).collect::<Result<Vec<_>>>()?;
        self.with_tensors(&ts)
    }

    /// The steps whose rates were trained separately (`per_step`), if any.
    pub fn trained_steps(&self) -> Option<usize> {
        match self {
            Rule::PerStep { alpha } => Some(alpha.len()),
            Rule::Clipped { inner, .. } => inner.trained_steps(),
            _ => None,
        }
    }

    /// The learned tensors, flat, in a fixed order (for optimizers and checks).
    pub fn tensors(&self) -> Vec<Tensor> {
        match self {
            Rule::MetaSgd { alpha } => alpha.clone(),
            Rule::PerStep { alpha } => alpha.iter().flatten().cloned().collect(),
            Rule::Momentum { alpha, beta } => alpha.iter().chain(beta).cloned().collect(),
            Rule::Lstm { wf, bf, wi, bi } => vec![wf.clone(), bf.clone(), wi.clone(), bi.clone()],
            Rule::Clipped { inner, .. } => inner.tensors(),
        }
    }

    /// The same rule with its tensors replaced by `ts` (in [`Rule::tensors`]' order).
    pub fn with_tensors(&self, ts: &[Tensor]) -> Result<Rule> {
        let want = self.tensors().len();
        if ts.len() != want {
            candle_core::bail!("the {:?} rule has {want} tensors, got {}", self.kind(), ts.len());
        }
        Ok(match self {
            Rule::MetaSgd { .. } => Rule::MetaSgd { alpha: ts.to_vec() },
            Rule::PerStep { alpha } => Rule::PerStep {
                alpha: ts.chunks(alpha[0].len()).map(<[Tensor]>::to_vec).collect(),
            },
            Rule::Momentum { alpha, .. } => Rule::Momentum {
                alpha: ts[..alpha.len()].to_vec(),
                beta: ts[alpha.len()..].to_vec(),
            },
            Rule::Lstm { .. } => Rule::Lstm {
                wf: ts[0].clone(),
                bf: ts[1].clone(),
                wi: ts[2].clone(),
                bi: ts[3].clone(),
            },
            Rule::Clipped { max, inner } => Rule::Clipped {
                max: *max,
                inner: Box::new(inner.with_tensors(ts)?),
            },
        })
    }

    /// Applies `f` to every θ-shaped tensor (to size them for a class count).
    pub fn map_param_shaped(&self, f: &dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>) -> Result<Rule> {
        Ok(match self {
            Rule::MetaSgd { alpha } => Rule::MetaSgd { alpha: f(alpha)? },
            Rule::PerStep { alpha } => Rule::PerStep {
                alpha: alpha.iter().map(|a| f(a)).collect::<Result<_>>()?,
            },
            Rule::Momentum { alpha, beta } => Rule::Momentum {
                alpha: f(alpha)?,
                beta: f(beta)?,
            },
            lstm @ Rule::Lstm { .. } => lstm.clone(),
            Rule::Clipped { max, inner } => Rule::Clipped {
                max: *max,
                inner: Box::new(inner.map_param_shaped(f)?),
            },
        })
    }

    /// Whether [`Rule::step`] reads the tasks' losses (else any tensor will do).
    pub fn reads_loss(&self) -> bool {
        matches!(self.unclipped(), Rule::Lstm { .. })
    }

    /// Step `k` (from 0): the next parameters from `params` (`[T, …]`), their
    /// gradients and each task's loss `[T]`.
    pub fn step(
        &self,
        k: usize,
        state: &mut State,
        params: &[Tensor],
        grads: &[Tensor],
        loss: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let sgd = |alpha: &[Tensor], g: &[Tensor]| -> Result<Vec<Tensor>> {
            params
                .iter()
                .zip(g)
                .zip(alpha)
                .map(|((p, g), a)| p.sub(&g.broadcast_mul(a)?))
                .collect()
        };
        match self {
            Rule::Clipped { max, inner } => inner.step(k, state, params, &clip_per_task(grads, *max)?, loss),
            Rule::MetaSgd { alpha } => sgd(alpha, grads),
            Rule::PerStep { alpha } => sgd(&alpha[k.min(alpha.len() - 1)], grads),
            Rule::Momentum { alpha, beta } => {
                let v: Vec<Tensor> = match &state.velocity {
                    None => grads.to_vec(),
                    Some(v) => v
                        .iter()
                        .zip(grads)
                        .zip(beta)
                        .map(|((v, g), b)| v.broadcast_mul(b)?.add(g))
                        .collect::<Result<_>>()?,
                };
                let next = sgd(alpha, &v)?;
                state.velocity = Some(v);
                Ok(next)
            }
            Rule::Lstm { wf, bf, wi, bi } => {
                let t = loss.dim(0)?;
                let mut next = Vec::with_capacity(params.len());
                let (mut fs, mut is) = (Vec::new(), Vec::new());
                for (j, (p, g)) in params.iter().zip(grads).enumerate() {
                    let mut shape = vec![t];
                    shape.resize(p.rank(), 1);
                    let l = loss.reshape(shape)?;
                    let (g1, g2) = preprocess(g)?;
                    let (l1, l2) = preprocess(&l)?;
                    let prev = state.gates.as_ref().map(|(f, i)| (&f[j], &i[j]));
                    let gate = |w: &Tensor, b: &Tensor, prev: Option<&Tensor>| -> Result<Tensor> {
                        let w = |i: usize| w.narrow(0, i, 1);
                        let mut z = g1.broadcast_mul(&w(0)?)?;
                        z = z.add(&g2.broadcast_mul(&w(1)?)?)?;
                        z = z.broadcast_add(&l1.broadcast_mul(&w(2)?)?)?;
                        z = z.broadcast_add(&l2.broadcast_mul(&w(3)?)?)?;
                        z = z.add(&p.broadcast_mul(&w(4)?)?)?;
                        if let Some(prev) = prev {
                            z = z.add(&prev.broadcast_mul(&w(5)?)?)?;
                        }
                        sigmoid(&z.broadcast_add(b)?)
                    };
                    let f = gate(wf, bf, prev.map(|x| x.0))?;
                    let i = gate(wi, bi, prev.map(|x| x.1))?;
                    next.push(f.mul(p)?.sub(&i.mul(g)?)?);
                    fs.push(f);
                    is.push(i);
                }
                state.gates = Some((fs, is));
                Ok(next)
            }
        }
    }
}

/// Each task's gradients (`[T, …]` per parameter) scaled by
/// min(1, max / ‖g_t‖), the norm over all of the task's parameters.
pub fn clip_per_task(grads: &[Tensor], max: f64) -> Result<Vec<Tensor>> {
    let Some(first) = grads.first() else {
        return Ok(Vec::new());
    };
    let t = first.dim(0)?;
    let mut sq = Tensor::zeros(t, first.dtype(), first.device())?;
    for g in grads {
        sq = sq.add(&g.sqr()?.reshape((t, ()))?.sum(1)?)?;
    }
    // max / max(‖g‖, max): 1 below the bound.
    let scale = sq.sqrt()?.maximum(max)?.recip()?.affine(max, 0.0)?;
    grads
        .iter()
        .map(|g| {
            let mut shape = vec![t];
            shape.resize(g.rank(), 1);
            g.broadcast_mul(&scale.reshape(shape)?)
        })
        .collect()
}

/// σ(z) = 1 / (1 + e^−z), from differentiable ops.
fn sigmoid(z: &Tensor) -> Result<Tensor> {
    z.neg()?.exp()?.affine(1.0, 1.0)?.recip()
}

/// Ravi & Larochelle's preprocessing of x into two values:
/// (log|x| / p, sign x) when |x| ≥ e^−p, else (−1, e^p·x). Written as
/// log(max(|x|, e^−p)) / p and clamp(e^p·x, −1, 1), which are those values
/// everywhere and differentiable where they are.
pub fn preprocess(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let floor = (-P).exp();
    let a = x.abs()?.maximum(floor)?.log()?.affine(1.0 / P, 0.0)?;
    let b = x.affine(P.exp(), 0.0)?.clamp(-1.0, 1.0)?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn preprocessing_matches_the_paper_on_both_sides_of_the_threshold() {
        let x = Tensor::new(&[0.5f64, -2.0, 1e-6, -1e-6, 0.0], &Device::Cpu).unwrap();
        let (a, b) = preprocess(&x).unwrap();
        let (a, b) = (a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        let e = P.exp();
        let want_a = [0.5f64.ln() / P, 2f64.ln() / P, -1.0, -1.0, -1.0];
        let want_b = [1.0, -1.0, e * 1e-6, -e * 1e-6, 0.0];
        for k in 0..5 {
            assert!((a[k] - want_a[k]).abs() < 1e-12, "a[{k}] = {}", a[k]);
            assert!((b[k] - want_b[k]).abs() < 1e-12, "b[{k}] = {}", b[k]);
        }
    }

    #[test]
    fn per_step_past_the_trained_steps_uses_the_last_alpha() {
        let d = Device::Cpu;
        let one = |v: f64| vec![Tensor::new(&[v], &d).unwrap()];
        let rule = Rule::PerStep {
            alpha: vec![one(0.1), one(0.2)],
        };
        let p = one(1.0);
        let g = one(1.0);
        let loss = Tensor::new(&[0.0f64], &d).unwrap();
        let at = |k| {
            rule.step(k, &mut State::default(), &p, &g, &loss).unwrap()[0]
                .to_vec1::<f64>()
                .unwrap()[0]
        };
        assert!((at(0) - 0.9).abs() < 1e-12);
        assert!((at(1) - 0.8).abs() < 1e-12);
        assert!((at(5) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn clipping_bounds_each_tasks_gradient_norm_and_leaves_small_ones() {
        let d = Device::Cpu;
        // Task 0: gradient (3, 4), norm 5 → scaled to norm 1. Task 1: (0.3, 0.4) kept.
        let g = vec![
            Tensor::new(&[[3.0f64], [0.3]], &d).unwrap(),
            Tensor::new(&[[4.0f64], [0.4]], &d).unwrap(),
        ];
        let c = clip_per_task(&g, 1.0).unwrap();
        let v: Vec<Vec<f64>> = c
            .iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect();
        assert!((v[0][0] - 0.6).abs() < 1e-12 && (v[1][0] - 0.8).abs() < 1e-12, "{v:?}");
        assert!((v[0][1] - 0.3).abs() < 1e-12 && (v[1][1] - 0.4).abs() < 1e-12, "{v:?}");
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let d = Device::Cpu;
        let one = |v: f64| vec![Tensor::new(&[v], &d).unwrap()];
        let rule = Rule::Momentum {
            alpha: one(0.1),
            beta: one(0.5),
        };
        let mut s = State::default();
        let loss = Tensor::new(&[0.0f64], &d).unwrap();
        let p1 = rule.step(0, &mut s, &one(1.0), &one(2.0), &loss).unwrap();
        // v = 2, θ = 1 − 0.2
        assert!((p1[0].to_vec1::<f64>().unwrap()[0] - 0.8).abs() < 1e-12);
        let p2 = rule.step(1, &mut s, &p1, &one(2.0), &loss).unwrap();
        // v = 0.5·2 + 2 = 3, θ = 0.8 − 0.3
        assert!((p2[0].to_vec1::<f64>().unwrap()[0] - 0.5).abs() < 1e-12);
    }
}
