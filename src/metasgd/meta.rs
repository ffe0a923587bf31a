//! The meta-objective: the query loss after inner-loop adaptation, as a
//! differentiable function of θ and α.
//!
//! Second order needs the inner gradients to stay in the graph, which
//! candle 0.11 does only when `CANDLE_GRAD_DO_NOT_DETACH=1` is set before the
//! thread's first `backward()`. The `train` command sets it for itself; the
//! server never does.

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::rule::{Rule, State};
use crate::model::{loss_per_task, Architecture, InnerLoss, TaskKind};
use crate::tasks::Episode;

/// Whether meta-gradients flow through the inner gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    First,
    Second,
}

/// True when this thread's `backward()` keeps gradients differentiable.
pub fn second_order_available() -> bool {
    std::env::var("CANDLE_GRAD_DO_NOT_DETACH")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// Mean over tasks of the query loss after `steps` inner steps from (θ, α).
///
/// `theta` and `alpha` are usually `Var`s; `alpha` may be a constant (MAML).
/// With [`Order::First`] the inner gradients are treated as constants.
pub fn meta_loss(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    alpha: &[Tensor],
    ep: &Episode,
    steps: usize,
    order: Order,
) -> Result<Tensor> {
    let rule = Rule::MetaSgd { alpha: alpha.to_vec() };
    meta_loss_with(arch, task, theta, &rule, InnerLoss::Mean, ep, steps, order)
}

/// [`meta_loss`] for any update rule (`model::rule`): differentiable in θ
/// and in the rule's tensors. With [`Order::First`] the inner gradients and
/// the losses the rule reads are treated as constants.
#[allow(clippy::too_many_arguments)]
pub fn meta_loss_with(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    inner: InnerLoss,
    ep: &Episode,
    steps: usize,
    order: Order,
) -> Result<Tensor> {
    if order == Order::Second && !second_order_available() {
        return Err(candle_core::Error::Msg(
            "second order needs CANDLE_GRAD_DO_NOT_DETACH=1 set before the first backward".into(),
        ));
    }
    let t = ep.support_x.dim(0)?;
    let theta = &crate::model::adapt::for_target(arch, theta, &ep.support_t)?;
    let rule = &rule.map_param_shaped(&|ts| crate::model::adapt::for_target(arch, ts, &ep.support_t))?;
    let cur: Vec<Tensor> = theta.iter().map(|p| p.broadcast_left(t)).collect::<Result<_>>()?;
    let mut cur = arch.start_params(cur, &ep.support_x, ep.support_t.onehot(), None, usize::MAX, &mut || {
        Ok(())
    })?;
    let mut state = State::default();
    for k in 0..steps {
        // A zero variable added to each per-task parameter gives a node whose
        // gradient store entry survives backward: the per-task gradient.
        let zeros: Vec<Var> = cur
            .iter()
            .map(|p| Var::zeros(p.shape(), p.dtype(), p.device()))
            .collect::<Result<_>>()?;
        let point: Vec<Tensor> = cur
            .iter()
            .zip(&zeros)
            .map(|(p, z)| p.add(z.as_tensor()))
            .collect::<Result<_>>()?;
        let per_task = inner.support_loss(task, &arch.forward(&point, &ep.support_x)?, &ep.support_t)?;
        let grads = per_task.sum_all()?.backward()?;
        let first = order == Order::First;
        let g: Vec<Tensor> = zeros
            .iter()
            .map(|z| {
                let g = grads
                    .get(z.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg("missing inner gradient".into()))?;
                Ok(if first { g.detach() } else { g.clone() })
            })
            .collect::<Result<_>>()?;
        let loss = if first { per_task.detach() } else { per_task };
        cur = rule.step(k, &mut state, &point, &g, &loss)?;
    }
    let per_task = loss_per_task(task, &arch.forward(&cur, &ep.query_x)?, &ep.query_t)?;
    per_task.mean_all()
}
