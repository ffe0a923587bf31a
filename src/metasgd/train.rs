//! Meta-training: Adam over meta-batches of tasks, with seeded sampling,
//! periodic validation, a progress bar, and resumable checkpoints.
//!
//! Methods: Meta-SGD (θ and per-element α learned, first or second order)
//! and MAML (θ learned, α a fixed scalar) as the baseline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::{meta_loss, Order};
use crate::model::{save_model, store, Architecture};
use crate::tasks::{families, TaskFamily};

/// What is meta-learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// θ and a per-element learning rate α.
    Metasgd,
    /// θ only; α is the fixed scalar `--maml-alpha`.
    Maml,
}

/// Every setting of a training run; saved as `train_config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Task family to meta-train on.
    #[arg(long, default_value = "sinusoid")]
    pub task: String,
    /// Dataset folder, for task families that read one (omniglot).
    #[arg(long)]
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Classes per task, for classification families.
    #[arg(long, default_value_t = 5)]
    #[serde(default = "default_n_way")]
    pub n_way: usize,
    /// Start θ from this safetensors file's `theta.*` tensors (for example
    /// `pretrain`'s `init.safetensors`) instead of a random initialisation.
    #[arg(long)]
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// For feature-vector models (the intents family): the hidden layer
    /// sizes of a meta-learned MLP body before the head, comma separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// For feature-vector models: subtract a meta-learned center and
    /// L2-normalize (see `Architecture::Features`).
    #[arg(long)]
    #[serde(default)]
    pub center: bool,
    /// For feature-vector models: a cosine head (see `Architecture::Features`).
    #[arg(long)]
    #[serde(default)]
    pub cosine: bool,
    /// Output model folder (checkpoints are kept there too).
    #[arg(long)]
    pub out: PathBuf,
    /// Model name in the manifest (default: the folder name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum, default_value = "metasgd")]
    pub method: Method,
    #[arg(long, value_enum, default_value = "second")]
    pub order: Order,
    #[arg(long, default_value_t = 200_000)]
    pub iters: u64,
    #[arg(long, default_value_t = 25)]
    pub meta_batch: usize,
    #[arg(long, default_value_t = 10)]
    pub k_support: usize,
    #[arg(long, default_value_t = 10)]
    pub k_query: usize,
    #[arg(long, default_value_t = 1)]
    pub inner_steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub meta_lr: f64,
    /// With a value, the meta learning rate follows a cosine from `meta_lr`
    /// down to this at the last iteration; without, it stays constant.
    #[arg(long)]
    #[serde(default)]
    pub lr_min: Option<f64>,
    /// Meta-SGD: α starts uniform in [alpha_lo, alpha_hi].
    #[arg(long, default_value_t = 0.005)]
    pub alpha_lo: f64,
    #[arg(long, default_value_t = 0.1)]
    pub alpha_hi: f64,
    /// Meta-SGD: α of the class-shared head starts at this constant instead
    /// (the head starts at zero, so its step sets the logits' scale).
    #[arg(long)]
    #[serde(default)]
    pub alpha_head: Option<f64>,
    /// MAML: the fixed inner learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub maml_alpha: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate every this many iterations.
    #[arg(long, default_value_t = 5_000)]
    pub val_every: u64,
    /// Number of validation tasks (fixed, drawn from a separate seed).
    #[arg(long, default_value_t = 500)]
    pub val_tasks: usize,
    /// Checkpoint every this many iterations.
    #[arg(long, default_value_t = 5_000)]
    pub ckpt_every: u64,
    /// Stop after this iteration with a checkpoint, as an interruption would
    /// (for time-boxed runs); `--resume` continues the same schedule.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub stop_at: Option<u64>,
    /// Continue from the checkpoint in `--out` if there is one.
    #[arg(long)]
    pub resume: bool,
}

fn default_n_way() -> usize {
    5
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    iter: u64,
    adam_step: u64,
    ema_loss: f64,
    elapsed_s: f64,
    config: TrainConfig,
}

/// PyTorch's default `Linear` initialisation: U(±1/√fan_in) for weight and bias.
fn init_theta(arch: &Architecture, rng: &mut ChaCha8Rng, device: &Device) -> anyhow::Result<Vec<Tensor>> {
    use rand::Rng;
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

/// The mean input vector over 64 meta-training tasks' support sets (its
/// own random stream): the start of a `Features` model's `center`.
fn mean_input(fam: &dyn TaskFamily, cfg: &TrainConfig, device: &Device) -> anyhow::Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(2_000_003));
    let ep = fam.sample(&mut rng, 64, cfg.k_support, 1, device)?;
    Ok(ep.support_x.flatten_to(1)?.mean(0)?)
}

fn init_alpha(
    cfg: &TrainConfig,
    arch: &Architecture,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> anyhow::Result<Vec<Tensor>> {
    use rand::Rng;
    arch.params()
        .iter()
        .map(|spec| {
            Ok(match cfg.method {
                Method::Maml => Tensor::new(cfg.maml_alpha as f32, device)?,
                Method::Metasgd if spec.name.starts_with("head.") && cfg.alpha_head.is_some() => {
                    let a = cfg.alpha_head.unwrap_or_default() as f32;
                    Tensor::full(a, spec.shape.as_slice(), device)?
                }
                Method::Metasgd => {
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
                    Tensor::from_vec(v, spec.shape.as_slice(), device)?
                }
            })
        })
        .collect()
}

/// Mean query loss over a fixed set of tasks after `steps` first-order steps.
pub fn validate(
    fam: &dyn TaskFamily,
    arch: &Architecture,
    theta: &[Tensor],
    alpha: &[Tensor],
    cfg: &TrainConfig,
    device: &Device,
) -> anyhow::Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(1_000_003));
    let queries = if fam.n_way().is_some() { cfg.k_query } else { 100 };
    let task = fam.manifest("val").task;
    let mut losses = Vec::new();
    let mut left = cfg.val_tasks;
    while left > 0 {
        let n = left.min(fam.eval_chunk());
        let ep = fam.sample(&mut rng, n, cfg.k_support, queries, device)?;
        losses.extend(crate::eval::episode_losses(arch, task, theta, alpha, ep, cfg.inner_steps)?.0);
        left -= n;
    }
    Ok(crate::eval::mean_ci95(&losses).0)
}

/// One line that says how a model was trained.
pub fn summary(cfg: &TrainConfig) -> String {
    let method = match cfg.method {
        Method::Metasgd => "Meta-SGD".to_string(),
        Method::Maml => format!("MAML with alpha {}", cfg.maml_alpha),
    };
    let order = match cfg.order {
        Order::First => "first",
        Order::Second => "second",
    };
    let lr = match cfg.lr_min {
        Some(min) => format!("Adam {} cosine to {min}", cfg.meta_lr),
        None => format!("Adam {}", cfg.meta_lr),
    };
    let init = match &cfg.init {
        Some(p) => format!(", theta from {}", p.display()),
        None => String::new(),
    };
    format!(
        "{method}, {order} order, {} iterations, meta-batch {}, K={} support / {} query, {} inner step(s), {lr}, seed {}{init}",
        cfg.iters, cfg.meta_batch, cfg.k_support, cfg.k_query, cfg.inner_steps, cfg.seed
    )
}

/// The meta learning rate at iteration `it` (constant, or cosine to `lr_min`).
pub fn learning_rate(cfg: &TrainConfig, it: u64) -> f64 {
    match cfg.lr_min {
        None => cfg.meta_lr,
        Some(min) => {
            let t = it as f64 / cfg.iters.max(1) as f64;
            min + 0.5 * (cfg.meta_lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

fn log_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Runs (or resumes) a training run and writes the finished model into `cfg.out`.
pub fn train(cfg: TrainConfig, device: &Device) -> anyhow::Result<()> {
    let (fam, val_fam) = families(&cfg.task, cfg.data.as_deref(), cfg.n_way)?;
    if cfg.order == Order::Second && !super::meta::second_order_available() {
        bail!("second order needs CANDLE_GRAD_DO_NOT_DETACH=1 before the first backward (the train command sets it)");
    }
    let name = cfg.name.clone().unwrap_or_else(|| {
        cfg.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| cfg.task.clone())
    });
    let mut manifest = fam.manifest(&name);
    if let Architecture::Features {
        hidden, center, cosine, ..
    } = &mut manifest.architecture
    {
        hidden.clone_from(&cfg.hidden);
        *center = cfg.center;
        *cosine = cfg.cosine;
    } else if !cfg.hidden.is_empty() || cfg.center || cfg.cosine {
        anyhow::bail!("--hidden applies to feature-vector models only");
    }
    // Serve with the step count the model was meta-trained for.
    manifest.default_steps = cfg.inner_steps;
    manifest.max_steps = manifest.max_steps.max(cfg.inner_steps);
    manifest.validate().map_err(anyhow::Error::msg)?;
    let arch = manifest.architecture.clone();
    std::fs::create_dir_all(&cfg.out)?;
    let ckpt = cfg.out.join("checkpoint.safetensors");
    let ckpt_meta = cfg.out.join("checkpoint.json");
    let log = cfg.out.join("train.log");

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (mut theta0, mut alpha0) = (
        init_theta(&arch, &mut rng, device)?,
        init_alpha(&cfg, &arch, &mut rng, device)?,
    );
    if let Some(init) = &cfg.init {
        theta0 = store::load_params(init, &arch, &["theta"], device)
            .with_context(|| format!("loading --init {}", init.display()))?
            .remove(0);
    } else if let Architecture::Features { center: true, .. } = arch {
        theta0[0] = mean_input(fam.as_ref(), &cfg, device)?;
    }
    let (mut start, mut ema, mut elapsed0, mut adam_state) = (0u64, f64::NAN, 0.0, None);
    if cfg.resume && ckpt_meta.exists() {
        let meta: CheckpointMeta = serde_json::from_str(&std::fs::read_to_string(&ckpt_meta)?)?;
        let groups = if cfg.method == Method::Metasgd {
            vec!["theta", "alpha", "m_theta", "v_theta", "m_alpha", "v_alpha"]
        } else {
            vec!["theta", "alpha", "m_theta", "v_theta"]
        };
        let mut g = store::load_params(&ckpt, &arch, &groups, device)?.into_iter();
        theta0 = g.next().unwrap();
        alpha0 = g.next().unwrap();
        adam_state = Some((meta.adam_step, g.collect::<Vec<_>>()));
        (start, ema, elapsed0) = (meta.iter, meta.ema_loss, meta.elapsed_s);
        log_line(&log, &format!("resumed at iteration {start}"))?;
    } else {
        let _ = std::fs::remove_file(&log);
        log_line(&log, &format!("config {}", serde_json::to_string(&cfg)?))?;
    }

    let theta: Vec<Var> = theta0
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let alpha_vars: Vec<Var> = match cfg.method {
        Method::Metasgd => alpha0
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?,
        Method::Maml => vec![],
    };
    let mut vars: Vec<Var> = theta.clone();
    vars.extend(alpha_vars.iter().cloned());
    let mut adam = Adam::new(&vars, cfg.meta_lr)?;
    if let Some((step, mv)) = adam_state {
        adam.step = step;
        let n = theta.len();
        adam.m = mv[0].clone();
        adam.v = mv[1].clone();
        if cfg.method == Method::Metasgd {
            adam.m.extend(mv[2].clone());
            adam.v.extend(mv[3].clone());
        }
        debug_assert_eq!(adam.m.len(), n + alpha_vars.len());
    }
    let alpha_of = |alpha_vars: &[Var]| -> Vec<Tensor> {
        if alpha_vars.is_empty() {
            alpha0.clone()
        } else {
            alpha_vars.iter().map(|v| v.as_tensor().clone()).collect()
        }
    };

    let pb = indicatif::ProgressBar::new(cfg.iters);
    pb.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    pb.set_position(start);
    let t0 = Instant::now();
    let end = cfg.stop_at.unwrap_or(cfg.iters).min(cfg.iters);
    for it in start..end {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(it + 1);
        let ep = fam.sample(&mut rng, cfg.meta_batch, cfg.k_support, cfg.k_query, device)?;
        let th: Vec<Tensor> = theta.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = meta_loss(
            &arch,
            manifest.task,
            &th,
            &alpha_of(&alpha_vars),
            &ep,
            cfg.inner_steps,
            cfg.order,
        )?;
        let grads = loss.backward()?;
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .context("no gradient for a meta-parameter")
            })
            .collect::<anyhow::Result<_>>()?;
        adam.lr = learning_rate(&cfg, it);
        adam.update(&vars, &gs)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !l.is_finite() {
            bail!("meta-loss became {l} at iteration {it}");
        }
        ema = if ema.is_nan() { l } else { 0.999 * ema + 0.001 * l };
        pb.inc(1);
        let done = it + 1;
        let elapsed = elapsed0 + t0.elapsed().as_secs_f64();
        if done % cfg.val_every == 0 || done == cfg.iters {
            let val = validate(val_fam.as_ref(), &arch, &th, &alpha_of(&alpha_vars), &cfg, device)?;
            let line = format!(
                "iter {done} train_query_loss_ema {ema:.4} val_query_loss {val:.4} elapsed_s {elapsed:.1} tasks_per_s {:.0}",
                (done - start) as f64 * cfg.meta_batch as f64 / t0.elapsed().as_secs_f64()
            );
            pb.set_message(format!("ema {ema:.3} val {val:.3}"));
            pb.println(&line);
            log_line(&log, &line)?;
        }
        if done % cfg.ckpt_every == 0 || done == cfg.iters || done == end {
            let th: Vec<Tensor> = theta.iter().map(|v| v.as_tensor().clone()).collect();
            let al = alpha_of(&alpha_vars);
            let n = theta.len();
            let mut groups: Vec<(&str, &[Tensor])> = vec![
                ("theta", &th),
                ("alpha", &al),
                ("m_theta", &adam.m[..n]),
                ("v_theta", &adam.v[..n]),
            ];
            if cfg.method == Method::Metasgd {
                groups.push(("m_alpha", &adam.m[n..]));
                groups.push(("v_alpha", &adam.v[n..]));
            }
            store::save_params(&ckpt, &arch, &groups)?;
            let meta = CheckpointMeta {
                iter: done,
                adam_step: adam.step,
                ema_loss: ema,
                elapsed_s: elapsed,
                config: cfg.clone(),
            };
            std::fs::write(&ckpt_meta, serde_json::to_string_pretty(&meta)?)?;
        }
    }
    pb.finish();
    if end < cfg.iters {
        log_line(
            &log,
            &format!("stopped at iteration {end} (--stop-at); continue with --resume"),
        )?;
        return Ok(());
    }
    let th: Vec<Tensor> = theta.iter().map(|v| v.as_tensor().clone()).collect();
    manifest.description = format!(
        "{} Meta-trained by `metasgd train`: {}.",
        manifest.description,
        summary(&cfg)
    );
    save_model(&cfg.out, &manifest, &th, &alpha_of(&alpha_vars))?;
    std::fs::write(
        cfg.out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(out: &Path, iters: u64) -> TrainConfig {
        TrainConfig {
            task: "sinusoid".into(),
            data: None,
            n_way: 5,
            init: None,
            hidden: Vec::new(),
            center: false,
            cosine: false,
            out: out.to_path_buf(),
            name: Some("t".into()),
            method: Method::Metasgd,
            order: Order::First,
            iters,
            meta_batch: 4,
            k_support: 5,
            k_query: 5,
            inner_steps: 1,
            meta_lr: 1e-3,
            lr_min: Some(1e-4),
            alpha_lo: 0.005,
            alpha_hi: 0.1,
            alpha_head: None,
            maml_alpha: 0.01,
            seed: 3,
            val_every: 10,
            val_tasks: 20,
            ckpt_every: 10,
            stop_at: None,
            resume: true,
        }
    }

    fn weights(dir: &Path) -> Vec<Vec<f32>> {
        let m = crate::model::load_model(dir, &Device::Cpu).unwrap();
        m.theta
            .iter()
            .chain(&m.alpha)
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn resumed_training_equals_uninterrupted_training() {
        let base = std::env::temp_dir().join(format!("metasgd-train-{}", std::process::id()));
        let (a, b) = (base.join("straight"), base.join("resumed"));
        let _ = std::fs::remove_dir_all(&base);
        train(cfg(&a, 30), &Device::Cpu).unwrap();
        train(
            TrainConfig {
                stop_at: Some(20),
                ..cfg(&b, 30)
            },
            &Device::Cpu,
        )
        .unwrap();
        assert!(
            !b.join("model.safetensors").exists(),
            "an interrupted run writes no model"
        );
        train(cfg(&b, 30), &Device::Cpu).unwrap();
        let (wa, wb) = (weights(&a), weights(&b));
        let diff = wa
            .iter()
            .flatten()
            .zip(wb.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert_eq!(diff, 0.0, "resuming from a checkpoint must reproduce the same run");
        let log = std::fs::read_to_string(b.join("train.log")).unwrap();
        assert!(log.contains("resumed at iteration 20"), "{log}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn maml_keeps_alpha_fixed() {
        let out = std::env::temp_dir().join(format!("metasgd-maml-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut c = cfg(&out, 10);
        c.method = Method::Maml;
        c.resume = false;
        train(c, &Device::Cpu).unwrap();
        let m = crate::model::load_model(&out, &Device::Cpu).unwrap();
        for a in &m.alpha {
            assert_eq!(a.dims(), &[] as &[usize]);
            assert_eq!(a.to_scalar::<f32>().unwrap(), 0.01);
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}
