//! Every loss and log-sum-exp of the crate: the per-task losses adaptation
//! and meta-training minimise, softmax and log-softmax, cross-entropy over
//! class ids (pre-training), and nearest-prototype classification (the
//! baseline and pre-training's progress signal).

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use super::{Target, TaskKind};

/// How the support loss that adaptation minimises is normalized (the
/// manifest's `inner_loss`). Query losses, and so the meta-objective, are
/// always row means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum InnerLoss {
    /// The mean over support rows. With N classes of K shots, each class's
    /// head row gets 1/N of the step it would get alone.
    #[default]
    Mean,
    /// The row mean times the task's class count: for a balanced support set,
    /// the sum over classes of each class's mean loss, so a class's step does
    /// not shrink as N grows and one set of rates serves any N.
    PerClass,
}

impl InnerLoss {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            InnerLoss::Mean => "mean",
            InnerLoss::PerClass => "per_class",
        }
    }

    /// The factor on a task's row-mean support loss: its class count for
    /// `per_class` classification, else 1.
    pub fn scale(self, task: TaskKind, target: &Target) -> Result<f64> {
        Ok(match (task, target) {
            (TaskKind::Classification, Target::OneHot(t)) => self.class_scale(Some(t.dim(D::Minus1)?)),
            _ => 1.0,
        })
    }

    /// [`InnerLoss::scale`] from a task's class count (`None` for regression).
    pub fn class_scale(self, classes: Option<usize>) -> f64 {
        match (self, classes) {
            (InnerLoss::PerClass, Some(c)) => c as f64,
            _ => 1.0,
        }
    }

    /// The support loss adaptation minimises, per task `[T]`.
    pub fn support_loss(self, task: TaskKind, pred: &Tensor, target: &Target) -> Result<Tensor> {
        let l = loss_per_task(task, pred, target)?;
        let s = self.scale(task, target)?;
        if s == 1.0 {
            Ok(l)
        } else {
            l.affine(s, 0.0)
        }
    }
}

/// Per-task mean losses, summed over tasks. `pred` is `[T, N, out]`.
///
/// Summing (not averaging) over tasks makes the gradient with respect to a
/// per-task parameter exactly that task's own gradient, whatever `T` is.
pub fn loss_sum(task: TaskKind, pred: &Tensor, target: &Target) -> Result<Tensor> {
    loss_per_task(task, pred, target)?.sum_all()
}

/// Per-task mean loss, shape `[T]`: MSE for regression, cross-entropy for
/// classification.
pub fn loss_per_task(task: TaskKind, pred: &Tensor, target: &Target) -> Result<Tensor> {
    match (task, target) {
        (TaskKind::Regression, Target::Values(y)) => {
            // y is [T, N, out]
            pred.sub(y)?.sqr()?.flatten_from(1)?.mean(1)
        }
        (TaskKind::Classification, Target::OneHot(onehot)) => {
            // onehot is [T, N, C] with C <= out: extra outputs are masked out.
            let c = onehot.dim(D::Minus1)?;
            let logp = log_softmax(&pred.narrow(D::Minus1, 0, c)?)?;
            let n = onehot.dim(1)? as f64;
            (logp * onehot)?.sum(D::Minus1)?.sum(1)?.affine(-1.0 / n, 0.0)
        }
        _ => Err(candle_core::Error::Msg("target does not match the task kind".into())),
    }
}

/// log Σ exp over the last dimension (kept), stabilized by the detached
/// row maximum.
pub fn log_sum_exp(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .broadcast_add(&m)
}

/// log-softmax over the last dimension.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    logits.broadcast_sub(&log_sum_exp(logits)?)
}

/// softmax over the last dimension, shifted by the row maximum (the
/// exponentials normalized directly, so each row sums to 1 to rounding).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let e = logits.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Mean cross-entropy of `logits` `[N, C]` against class ids `labels` `[N]`
/// (u32), and the accuracy of their argmax.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, f64)> {
    let picked = log_softmax(logits)?.gather(&labels.unsqueeze(1)?, 1)?;
    let acc = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok((picked.mean_all()?.neg()?, acc))
}

/// Nearest-prototype classification: each class's prototype is the mean of
/// its support features (`onehot` `[T, N, C]`, `support` `[T, N, F]`), and each
/// query (`[T, Q, F]`) takes the class of the nearest (Euclidean). Returns
/// the class ids `[T, Q]`.
pub fn nearest_prototype(onehot: &Tensor, support: &Tensor, query: &Tensor) -> Result<Tensor> {
    let counts = onehot.sum(1)?.unsqueeze(2)?;
    let protos = onehot.transpose(1, 2)?.matmul(support)?.broadcast_div(&counts)?;
    // ‖q − p‖² orders as ‖p‖² − 2 q·p.
    let qp = query.matmul(&protos.transpose(1, 2)?.contiguous()?)?;
    let pp = protos.sqr()?.sum(2)?.unsqueeze(1)?;
    pp.broadcast_sub(&qp.affine(2.0, 0.0)?)?.argmin(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softmax_of_huge_logits_is_finite_and_sums_to_one() {
        let x = Tensor::new(&[[1000f32, 999.0, -1000.0]], &Device::Cpu).unwrap();
        let p = softmax(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        assert!((p[0][0] / p[0][1] - 1f32.exp()).abs() < 1e-3);
    }

    #[test]
    fn nearest_prototype_picks_the_closest_class_mean() {
        let d = Device::Cpu;
        // Two classes at x = 0 and x = 10 (two shots each); queries at 1 and 9.
        let onehot = Tensor::new(&[[[1f32, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], &d).unwrap();
        let s = Tensor::new(&[[[-1f32], [1.0], [9.0], [11.0]]], &d).unwrap();
        let q = Tensor::new(&[[[1f32], [9.0], [4.0]]], &d).unwrap();
        let ids = nearest_prototype(&onehot, &s, &q).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(ids, vec![vec![0, 1, 0]]);
    }
}
