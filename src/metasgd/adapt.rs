//! First-order adaptation: k steps of θ ← θ − α∘∇L_support(θ), per task.
//!
//! This is what the server runs. Gradients come from candle's ordinary
//! (first-order) `backward`; nothing here needs `CANDLE_GRAD_DO_NOT_DETACH`.

use candle_core::{Result, Tensor, Var};

use crate::model::{loss_per_task, Architecture, TaskKind, Target};

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

/// Runs `steps` steps of Meta-SGD adaptation from (θ, α) on each task's support set.
///
/// θ has the architecture's shapes; α has the same shapes or is one scalar per
/// tensor. With `steps == 0` the result is θ itself, broadcast per task.
pub fn adapt(arch: &Architecture, task: TaskKind, theta: &[Tensor], alpha: &[Tensor], support: &Support, steps: usize) -> Result<Adapted> {
    let t = support.x.dim(0)?;
    let mut params: Vec<Tensor> = theta
        .iter()
        .map(|p| p.detach().broadcast_left(t)?.contiguous())
        .collect::<Result<_>>()?;
    let mut loss_before = None;
    for _ in 0..steps {
        let vars: Vec<Var> = params.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let per_task = loss_per_task(task, &arch.forward(&tensors, &support.x)?, &support.target)?;
        if loss_before.is_none() {
            loss_before = Some(per_task.to_vec1::<f32>()?);
        }
        let grads = per_task.sum_all()?.backward()?;
        params = tensors
            .iter()
            .zip(alpha)
            .map(|(p, a)| {
                let g = grads.get(p).ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))?;
                p.sub(&g.broadcast_mul(a)?)?.detach().contiguous()
            })
            .collect::<Result<_>>()?;
    }
    let loss_after = loss_per_task(task, &arch.forward(&params, &support.x)?, &support.target)?.to_vec1::<f32>()?;
    Ok(Adapted { loss_before: loss_before.unwrap_or_else(|| loss_after.clone()), loss_after, params })
}

/// Selects task `i`'s parameters from a per-task batch, keeping a leading dim of 1.
pub fn select_task(params: &[Tensor], i: usize) -> Result<Vec<Tensor>> {
    params.iter().map(|p| p.narrow(0, i, 1)).collect()
}
