//! Where a training run starts: θ (PyTorch's initialisation, a file, or a
//! features model's mean input) and the update rule's tensors.

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Method, TrainConfig};
use crate::model::rule::{Rule, UpdateRule, LSTM_INPUTS};
use crate::model::{store, Architecture};
use crate::tasks::TaskFamily;

/// PyTorch's default `Linear` initialisation: U(±1/√fan_in) for weight and bias.
pub fn init_theta(arch: &Architecture, rng: &mut ChaCha8Rng, device: &Device) -> anyhow::Result<Vec<Tensor>> {
    let mut out = Vec::new();
    let mut fan_in = arch.input_dim();
    for spec in arch.params() {
        if spec.shape.len() == 2 {
            fan_in = spec.shape[1];
        }
        let bound = 1.0 / (fan_in as f32).sqrt();
        let n: usize = spec.shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        out.push(Tensor::from_vec(v, spec.shape.as_slice(), device)?);
    }
    Ok(out)
}

/// A linear body's start: each square `l*.weight` the identity, each
/// `l*.bias` zero.
pub fn identity_body(arch: &Architecture, theta: &mut [Tensor], device: &Device) -> anyhow::Result<()> {
    for (spec, t) in arch.params().iter().zip(theta.iter_mut()) {
        if !spec.name.starts_with('l') {
            continue;
        }
        *t = match spec.shape[..] {
            [o, i] if o == i => Tensor::eye(o, DType::F32, device)?,
            [_] => Tensor::zeros(spec.shape.as_slice(), DType::F32, device)?,
            _ => anyhow::bail!("--linear-body needs square layers, {} is {:?}", spec.name, spec.shape),
        };
    }
    Ok(())
}

/// The mean input vector over 64 meta-training tasks' support sets (its
/// own random stream): the start of a `Features` model's `center`.
pub fn mean_input(fam: &dyn TaskFamily, cfg: &TrainConfig, device: &Device) -> anyhow::Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(2_000_003));
    let ep = fam.sample(&mut rng, 64, cfg.k_support, 1, device)?;
    Ok(ep.support_x.flatten_to(1)?.mean(0)?)
}

/// α's starting value: random per element (or the mean per tensor), the
/// head's constant, or `--init-alpha`'s tensors.
pub fn init_alpha(
    cfg: &TrainConfig,
    arch: &Architecture,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> anyhow::Result<Vec<Tensor>> {
    if cfg.method != Method::Metasgd {
        return arch
            .params()
            .iter()
            .map(|_| Ok(Tensor::new(cfg.maml_alpha as f32, device)?))
            .collect();
    }
    let mut alpha = Vec::new();
    for spec in arch.params() {
        let n: usize = spec.shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if cfg.alpha_hi > cfg.alpha_lo {
                    rng.random_range(cfg.alpha_lo as f32..cfg.alpha_hi as f32)
                } else {
                    cfg.alpha_lo as f32
                }
            })
            .collect();
        let constant = if spec.name.starts_with("head.") {
            cfg.alpha_head
        } else if spec.name.starts_with('l') {
            cfg.alpha_body
        } else {
            None
        };
        let mut a = match constant {
            Some(c) => Tensor::full(c as f32, spec.shape.as_slice(), device)?,
            None => Tensor::from_vec(v, spec.shape.as_slice(), device)?,
        };
        if let (Some(c), "head.weight", true) = (cfg.alpha_lexical, spec.name.as_str(), cfg.lexical > 0) {
            // The row's last `lexical` values weigh the token buckets.
            let f = spec.shape[1] - cfg.lexical;
            a = Tensor::cat(
                &[a.narrow(1, 0, f)?, Tensor::full(c as f32, (1, cfg.lexical), device)?],
                1,
            )?;
        }
        alpha.push(if cfg.per_tensor { a.mean_all()? } else { a });
    }
    if let (true, Some(init)) = (cfg.init_alpha, &cfg.init) {
        let loaded = store::load_params(init, arch, &["alpha"], device)
            .with_context(|| format!("loading alpha.* of --init {}", init.display()))?
            .remove(0);
        alpha = loaded
            .into_iter()
            .map(|a| if cfg.per_tensor { a.mean_all() } else { Ok(a) })
            .collect::<candle_core::Result<_>>()?;
    }
    Ok(alpha)
}

/// The rule a run starts from.
pub fn init_rule(cfg: &TrainConfig, alpha: Vec<Tensor>, device: &Device) -> anyhow::Result<Rule> {
    let later = if cfg.init_alpha { cfg.init_alpha_later } else { 1.0 };
    let scaled =
        |a: &[Tensor]| -> candle_core::Result<Vec<Tensor>> { a.iter().map(|t| t.affine(later, 0.0)).collect() };
    Ok(match cfg.rule {
        UpdateRule::Metasgd => Rule::MetaSgd { alpha },
        UpdateRule::PerStep => {
            let mut steps = vec![alpha.clone()];
            for _ in 1..cfg.inner_steps {
                steps.push(scaled(&alpha)?);
            }
            Rule::PerStep { alpha: steps }
        }
        UpdateRule::Momentum => Rule::Momentum {
            beta: alpha
                .iter()
                .map(|a| a.ones_like()?.affine(cfg.beta_init, 0.0))
                .collect::<candle_core::Result<_>>()?,
            alpha: scaled(&alpha)?,
        },
        UpdateRule::Lstm => {
            // i = σ(b_i) starts at α's mean; f at σ(lstm_bf).
            let mean = (cfg.alpha_lo + cfg.alpha_hi) / 2.0;
            Rule::Lstm {
                wf: Tensor::zeros(LSTM_INPUTS, DType::F32, device)?,
                bf: Tensor::new(&[cfg.lstm_bf as f32], device)?,
                wi: Tensor::zeros(LSTM_INPUTS, DType::F32, device)?,
                bi: Tensor::new(&[(mean / (1.0 - mean)).ln() as f32], device)?,
            }
        }
    })
}
