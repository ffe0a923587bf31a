//! First-order adaptation: k steps of θ ← θ − α∘∇L_support(θ), per task.
//!
//! This is what the server runs. Gradients come from candle's ordinary
//! (first-order) `backward`; nothing here needs `CANDLE_GRAD_DO_NOT_DETACH`.

use candle_core::{Result, Tensor, Var};

use crate::model::{loss_per_task, Architecture, Target, TaskKind};

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
pub fn adapt(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    alpha: &[Tensor],
    support: &Support,
    steps: usize,
) -> Result<Adapted> {
    let t = support.x.dim(0)?;
    let (theta, alpha) = (
        &for_target(arch, theta, &support.target)?,
        &for_target(arch, alpha, &support.target)?,
    );
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
                let g = grads
                    .get(p)
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))?;
                p.sub(&g.broadcast_mul(a)?)?.detach().contiguous()
            })
            .collect::<Result<_>>()?;
    }
    let loss_after = loss_per_task(task, &arch.forward(&params, &support.x)?, &support.target)?.to_vec1::<f32>()?;
    Ok(Adapted {
        loss_before: loss_before.unwrap_or_else(|| loss_after.clone()),
        loss_after,
        params,
    })
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
mod tests {
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
        let a = adapt(&arch, TaskKind::Regression, &theta, &alpha, &support, 1).unwrap();
        let r = 2.0 * x + 0.5 - y; // residual
        let (gw, gb) = (2.0 * r * x, 2.0 * r);
        let w = a.params[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = a.params[1].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((w - (2.0 - 0.1 * gw)).abs() < 1e-5);
        assert!((b - (0.5 + 0.2 * gb)).abs() < 1e-5, "a negative α steps uphill");
        assert!((a.loss_before[0] - r * r).abs() < 1e-4);
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
            &alpha,
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
            let alone = adapt(&arch, TaskKind::Regression, &theta, &alpha, &one, 3).unwrap();
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
