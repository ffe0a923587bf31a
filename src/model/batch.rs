//! Padded task batches: several tasks' support sets of different sizes and
//! class counts adapted as one `[T, N, …]` batch, with results that do not
//! depend on the company a task keeps.
//!
//! Each task is padded to a *bucket* that depends only on its own counts
//! ([`row_bucket`], [`class_bucket`]): padded rows carry weight 0 (real rows
//! `1/n`, so each task's loss is still its own mean) and padded classes get a
//! logit of [`MASKED_LOGIT`], whose softmax probability is exactly 0. A task
//! adapted alone is padded to the same bucket, so alone or batched it runs
//! the same per-task operations on tensors of the same shapes: CPU matmuls
//! run per batch item (candle's gemm loops over the batch) and every other op
//! is elementwise or reduces within a task. Alone and batched agree bit for
//! bit; `tests` below check it for the three architectures.

use candle_core::{Device, Result, Tensor, Var, D};

use super::adapt::{for_target, Adapted};
use super::rule::{Rule, State};
use super::{Architecture, InnerLoss, TaskKind};

/// The logit given to a padded class: `exp(MASKED_LOGIT − max)` is 0 in f32
/// and f64, so a padded class takes no probability and gets no gradient.
pub const MASKED_LOGIT: f64 = -1e30;

/// Rows a support or query set of `n` examples is padded to: a multiple of 4
/// up to 64, then of 16; for the conv4 network, `n` itself. A padded image
/// costs as much as a real one (5 images padded to 8 took 1.6× the CPU of
/// 5 unpadded), while a padded MLP row costs next to nothing beside the
/// per-op overhead that batching shares.
pub fn row_bucket(arch: &Architecture, n: usize) -> usize {
    if matches!(arch, Architecture::Conv4 { .. }) {
        return n.max(1);
    }
    let step = if n <= 64 { 4 } else { 16 };
    n.max(1).div_ceil(step) * step
}

/// Classes a task of `c` classes is padded to: a multiple of 4.
pub fn class_bucket(c: usize) -> usize {
    c.max(1).div_ceil(4) * 4
}

/// One task's support set before padding: `n` rows of `dim` inputs, and per
/// row a regression target of `out` values or a class index below `classes`.
pub struct TaskSet<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub labels: Labels<'a>,
}

pub enum Labels<'a> {
    Values { y: &'a [f32], out: usize },
    Classes { index: &'a [u32], classes: usize },
}

/// Tasks padded to one bucket: `x` `[T, N, dim]`, `weights` `[T, N]`, and
/// the targets (`[T, N, out]` values, or one-hot `[T, N, C]` with the
/// additive class mask `[T, 1, C]`).
pub struct Padded {
    pub x: Tensor,
    pub weights: Tensor,
    pub target: PaddedTarget,
}

pub enum PaddedTarget {
    Values(Tensor),
    Classes { onehot: Tensor, mask: Tensor },
}

/// Pads `tasks` to `rows` rows and (for classification) `classes` classes.
/// Every task must fit: `n <= rows`, its class count `<= classes`. The row
/// weights make [`weighted_loss`] the `inner` support loss of each task.
pub fn pad(
    tasks: &[TaskSet],
    dim: usize,
    rows: usize,
    classes: usize,
    inner: InnerLoss,
    device: &Device,
) -> Result<Padded> {
    let t = tasks.len();
    let mut x = vec![0f32; t * rows * dim];
    let mut w = vec![0f32; t * rows];
    for (i, task) in tasks.iter().enumerate() {
        if task.n > rows || task.x.len() != task.n * dim {
            candle_core::bail!("task {i}: {} rows do not fit a bucket of {rows}", task.n);
        }
        x[i * rows * dim..][..task.n * dim].copy_from_slice(task.x);
        let classes = match &task.labels {
            Labels::Classes { classes: c, .. } => Some(*c),
            Labels::Values { .. } => None,
        };
        let scale = inner.class_scale(classes) as f32;
        w[i * rows..][..task.n].fill(scale / task.n as f32);
    }
    let target = match tasks.first().map(|s| &s.labels) {
        Some(Labels::Values { out, .. }) => {
            let out = *out;
            let mut y = vec![0f32; t * rows * out];
            for (i, task) in tasks.iter().enumerate() {
                let Labels::Values { y: v, .. } = &task.labels else {
                    candle_core::bail!("task {i}: classes in a regression batch")
                };
                y[i * rows * out..][..v.len()].copy_from_slice(v);
            }
            // The mean over outputs too, as `loss_per_task` takes it.
            w.iter_mut().for_each(|v| *v /= out as f32);
            PaddedTarget::Values(Tensor::from_vec(y, (t, rows, out), device)?)
        }
        _ => {
            let mut onehot = vec![0f32; t * rows * classes];
            let mut mask = vec![MASKED_LOGIT as f32; t * classes];
            for (i, task) in tasks.iter().enumerate() {
                let Labels::Classes { index, classes: c } = &task.labels else {
                    candle_core::bail!("task {i}: values in a classification batch")
                };
                if *c > classes {
                    candle_core::bail!("task {i}: {c} classes do not fit a bucket of {classes}");
                }
                mask[i * classes..][..*c].fill(0.0);
                for (r, &k) in index.iter().enumerate() {
                    onehot[(i * rows + r) * classes + k as usize] = 1.0;
                }
            }
            PaddedTarget::Classes {
                onehot: Tensor::from_vec(onehot, (t, rows, classes), device)?,
                mask: Tensor::from_vec(mask, (t, 1, classes), device)?,
            }
        }
    };
    Ok(Padded {
        x: Tensor::from_vec(x, (t, rows, dim), device)?,
        weights: Tensor::from_vec(w, (t, rows), device)?,
        target,
    })
}

/// Per-task weighted loss `[T]`: Σ_rows weight · loss(row), with padded
/// classes masked out of the softmax.
pub fn weighted_loss(task: TaskKind, pred: &Tensor, p: &Padded) -> Result<Tensor> {
    let per_row = match (task, &p.target) {
        (TaskKind::Regression, PaddedTarget::Values(y)) => pred.sub(y)?.sqr()?.sum(D::Minus1)?,
        (TaskKind::Classification, PaddedTarget::Classes { onehot, mask }) => {
            let c = onehot.dim(D::Minus1)?;
            let logp = super::log_softmax(&pred.narrow(D::Minus1, 0, c)?.broadcast_add(mask)?)?;
            (logp * onehot)?.sum(D::Minus1)?.neg()?
        }
        _ => candle_core::bail!("target does not match the task kind"),
    };
    (per_row * &p.weights)?.sum(1)
}

/// `steps` steps of `rule` from θ for every padded task at once.
/// The head (a class-shared row) is expanded to the class bucket; padded
/// head rows get no gradient and stay θ's row.
pub fn adapt_padded(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    p: &Padded,
    steps: usize,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Adapted> {
    let t = p.x.dim(0)?;
    let target = match &p.target {
        PaddedTarget::Values(y) => super::Target::Values(y.clone()),
        PaddedTarget::Classes { onehot, .. } => super::Target::OneHot(onehot.clone()),
    };
    let theta = &for_target(arch, theta, &target)?;
    let rule = &rule.map_param_shaped(&|ts| for_target(arch, ts, &target))?;
    let params: Vec<Tensor> = theta
        .iter()
        .map(|q| q.detach().broadcast_left(t)?.contiguous())
        .collect::<Result<_>>()?;
    let onehot = match &p.target {
        PaddedTarget::Classes { onehot, .. } => Some(onehot),
        PaddedTarget::Values(_) => None,
    };
    let mut params = arch.start_params(params, &p.x, onehot, Some(&p.weights), usize::MAX, check)?;
    let mut loss_before = None;
    let mut state = State::default();
    for k in 0..steps {
        check()?;
        let vars: Vec<Var> = params.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let per_task = weighted_loss(task, &arch.forward(&tensors, &p.x)?, p)?;
        if loss_before.is_none() {
            loss_before = Some(per_task.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?);
        }
        let g = per_task.sum_all()?.backward()?;
        let grads: Vec<Tensor> = tensors
            .iter()
            .map(|q| {
                g.get(q)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
            })
            .collect::<Result<_>>()?;
        params = rule
            .step(k, &mut state, &tensors, &grads, &per_task.detach())?
            .into_iter()
            .map(|q| q.detach().contiguous())
            .collect::<Result<_>>()?;
    }
    check()?;
    let after = weighted_loss(task, &arch.forward(&params, &p.x)?, p)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    Ok(Adapted {
        loss_before: loss_before.unwrap_or_else(|| after.clone()),
        loss_after: after,
        params,
    })
}

/// Per-task parameters (each with a leading dim of 1, as adaptation leaves
/// them) stacked into one `[T, …]` batch for a batched forward.
pub fn stack_tasks(tasks: &[&[Tensor]]) -> Result<Vec<Tensor>> {
    let k = tasks.first().map_or(0, |p| p.len());
    (0..k)
        .map(|i| Tensor::cat(&tasks.iter().map(|p| &p[i]).collect::<Vec<_>>(), 0))
        .collect()
}

/// Task `i`'s parameters out of a `[T, …]` batch, each `[1, …]` in its own
/// compact storage. A narrow shares the whole batch's storage, and candle's
/// `Tensor::copy` clones all of it whatever the layout, so a split by
/// narrow+copy made every task hold the batch's T tasks of parameters (and a
/// session cache counting `elem_count` held T times what it counted).
pub fn task_params(params: &[Tensor], i: usize) -> Result<Vec<Tensor>> {
    params.iter().map(|p| p.narrow(0, i, 1)?.force_contiguous()).collect()
}

/// Query inputs of several tasks padded with zero rows to `rows` each:
/// `[T, rows, dim]`. Rows are independent in every architecture here, so
/// the padding changes no real row's output beyond what the shapes fix.
pub fn pad_inputs(tasks: &[(&[f32], usize)], dim: usize, rows: usize, device: &Device) -> Result<Tensor> {
    let mut x = vec![0f32; tasks.len() * rows * dim];
    for (i, (v, n)) in tasks.iter().enumerate() {
        if *n > rows || v.len() != n * dim {
            candle_core::bail!("task {i}: {n} inputs do not fit a bucket of {rows}");
        }
        x[i * rows * dim..][..v.len()].copy_from_slice(v);
    }
    Tensor::from_vec(x, (tasks.len(), rows, dim), device)
}

#[cfg(test)]
mod tests;
