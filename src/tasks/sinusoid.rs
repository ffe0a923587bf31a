//! The sinusoid regression benchmark of MAML and Meta-SGD:
//! y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5].

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::episode::Episode;
use super::family::TaskFamily;
use crate::model::{Architecture, InputKind, InputSpec, Manifest, Target, TaskKind};

pub struct Sinusoid;

/// One sinusoid task's parameters.
#[derive(Clone, Copy, Debug)]
pub struct SineTask {
    pub amplitude: f32,
    pub phase: f32,
}

impl SineTask {
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        Self {
            amplitude: rng.random_range(0.1..5.0),
            phase: rng.random_range(0.0..std::f32::consts::PI),
        }
    }
    pub fn eval(&self, x: f32) -> f32 {
        self.amplitude * (x - self.phase).sin()
    }
}

fn points(rng: &mut ChaCha8Rng, tasks: &[SineTask], k: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut xs = Vec::with_capacity(tasks.len() * k);
    let mut ys = Vec::with_capacity(tasks.len() * k);
    for t in tasks {
        for _ in 0..k {
            let x: f32 = rng.random_range(-5.0..5.0);
            xs.push(x);
            ys.push(t.eval(x));
        }
    }
    Ok((
        Tensor::from_vec(xs, (tasks.len(), k, 1), device)?,
        Tensor::from_vec(ys, (tasks.len(), k, 1), device)?,
    ))
}

impl TaskFamily for Sinusoid {
    fn name(&self) -> &'static str {
        "sinusoid"
    }

    fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        tasks: usize,
        k_support: usize,
        k_query: usize,
        device: &Device,
    ) -> Result<Episode> {
        let ts: Vec<SineTask> = (0..tasks).map(|_| SineTask::random(rng)).collect();
        let (sx, sy) = points(rng, &ts, k_support, device)?;
        let (qx, qy) = points(rng, &ts, k_query, device)?;
        Ok(Episode {
            support_x: sx,
            support_t: Target::Values(sy),
            query_x: qx,
            query_t: Target::Values(qy),
        })
    }

    fn manifest(&self, name: &str) -> Manifest {
        Manifest {
            inner_loss: Default::default(),
            update_rule: Default::default(),
            inner_grad_clip: None,
            name: name.to_string(),
            task: TaskKind::Regression,
            input: InputSpec {
                kind: InputKind::Vector,
                shape: vec![1],
            },
            architecture: Architecture::Mlp {
                sizes: vec![1, 40, 40, 1],
            },
            n_way: None,
            default_steps: 1,
            max_steps: 10,
            weights: "model.safetensors".into(),
            family: Some("sinusoid".into()),
            encoder: None,
            limits: Default::default(),
            description: "Sinusoid regression y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]; \
                          MLP 1-40-40-1 with ReLU."
                .into(),
        }
    }
}
