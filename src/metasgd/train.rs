//! Meta-training (`metasgd train`): the objective of one iteration, the
//! starting point, and the model folder a finished run writes. The loop
//! itself (schedule, Adam, log, checkpoints) is [`super::run`].
//!
//! Methods: meta-learning θ and the update rule's tensors (`metasgd`, first
//! or second order, any `--rule`), MAML (θ only, a fixed scalar α) and
//! Reptile (θ only, θ ← θ + ε(θ′ − θ) through Adam, for a fixed plain-SGD
//! rule).

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::run::{run, Job, RunArgs, RunFiles};
use super::{meta_loss_with, Order};
use crate::model::adapt::{adapt, Support};
use crate::model::rule::{Rule, UpdateRule, LSTM_INPUTS};
use crate::model::{loss_per_task, rule_names, save_model, store, Architecture, Manifest, TaskKind};
use crate::tasks::{families, TaskFamily};

/// What is meta-learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// θ and the update rule's tensors (Meta-SGD's α, and the like).
    Metasgd,
    /// θ only; α is the fixed scalar `--maml-alpha`.
    Maml,
    /// θ only, by Reptile's first-order update; α is `--maml-alpha`.
    Reptile,
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
    /// `pretrain`'s `init.safetensors`, or a model's weights) instead of a
    /// random initialisation.
    #[arg(long)]
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// With `--init`: start the rule's α (every step's, for `per_step`) from
    /// that file's `alpha.*` too.
    #[arg(long)]
    #[serde(default)]
    pub init_alpha: bool,
    /// With `--init-alpha`: the factor on the loaded α for every step after
    /// the first (`per_step`) or for all steps (`momentum`), so that a rule
    /// started from a one-step model does not overshoot.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub init_alpha_later: f64,
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
    /// The update rule (see `model::rule`); `maml` and `reptile` need `metasgd`.
    #[arg(long, value_enum, default_value = "metasgd")]
    #[serde(default)]
    pub rule: UpdateRule,
    #[arg(long, value_enum, default_value = "second")]
    pub order: Order,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 25)]
    pub meta_batch: usize,
    /// Support examples per task; with `--k-support-max`, the fewest.
    #[arg(long, default_value_t = 10)]
    pub k_support: usize,
    /// With a value, each iteration's K is drawn uniformly from
    /// `k_support..=k_support_max` (one K for the whole meta-batch).
    #[arg(long)]
    #[serde(default)]
    pub k_support_max: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub k_query: usize,
    #[arg(long, default_value_t = 1)]
    pub inner_steps: usize,
    /// α starts uniform in [alpha_lo, alpha_hi] (per element), or at their
    /// mean (per tensor).
    #[arg(long, default_value_t = 0.005)]
    pub alpha_lo: f64,
    #[arg(long, default_value_t = 0.1)]
    pub alpha_hi: f64,
    /// α of the class-shared head starts at this constant instead
    /// (the head starts at zero, so its step sets the logits' scale).
    #[arg(long)]
    #[serde(default)]
    pub alpha_head: Option<f64>,
    /// Learn one rate per tensor (MAML++'s LSLR) instead of per element.
    #[arg(long)]
    #[serde(default)]
    pub per_tensor: bool,
    /// Scale each task's inner gradient to at most this L2 norm at every
    /// step (saved as the manifest's `inner_grad_clip`, so serving does the same).
    #[arg(long)]
    #[serde(default)]
    pub inner_grad_clip: Option<f64>,
    /// `momentum`: β's starting value.
    #[arg(long, default_value_t = 0.5)]
    #[serde(default = "default_beta")]
    pub beta_init: f64,
    /// `lstm`: the forget gate's starting bias (σ(6) ≈ 0.9975 keeps θ).
    #[arg(long, default_value_t = 6.0)]
    #[serde(default = "default_lstm_bf")]
    pub lstm_bf: f64,
    /// MAML and Reptile: the fixed inner learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub maml_alpha: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of validation tasks (fixed, drawn from a separate seed).
    #[arg(long, default_value_t = 500)]
    pub val_tasks: usize,
}

fn default_n_way() -> usize {
    5
}
fn one() -> f64 {
    1.0
}
fn default_beta() -> f64 {
    0.5
}
fn default_lstm_bf() -> f64 {
    6.0
}

/// PyTorch's default `Linear` initialisation: U(±1/√fan_in) for weight and bias.
fn init_theta(arch: &Architecture, rng: &mut ChaCha8Rng, device: &Device) -> anyhow::Result<Vec<Tensor>> {
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

/// α's starting value: random per element (or the mean per tensor), the
/// head's constant, or `--init-alpha`'s tensors.
fn init_alpha(
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
        let a = match cfg.alpha_head {
            Some(h) if spec.name.starts_with("head.") => Tensor::full(h as f32, spec.shape.as_slice(), device)?,
            _ => Tensor::from_vec(v, spec.shape.as_slice(), device)?,
        };
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
fn init_rule(cfg: &TrainConfig, alpha: Vec<Tensor>, device: &Device) -> anyhow::Result<Rule> {
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

/// Mean query loss over a fixed set of tasks after `cfg.inner_steps` steps.
pub fn validate(
    fam: &dyn TaskFamily,
    arch: &Architecture,
    theta: &[Tensor],
    rule: &Rule,
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
        losses.extend(crate::eval::episode_losses(arch, task, theta, rule, ep, cfg.inner_steps)?.0);
        left -= n;
    }
    Ok(crate::eval::mean_ci95(&losses).0)
}

/// One line that says how a model was trained.
pub fn summary(cfg: &TrainConfig) -> String {
    let rule = match cfg.rule {
        UpdateRule::Metasgd => "Meta-SGD",
        UpdateRule::PerStep => "per-step rates (MAML++ LSLR)",
        UpdateRule::Momentum => "learned momentum",
        UpdateRule::Lstm => "LSTM meta-learner",
    };
    let method = match cfg.method {
        Method::Metasgd => format!("{rule}{}", if cfg.per_tensor { ", one rate per tensor" } else { "" }),
        Method::Maml => format!("MAML with alpha {}", cfg.maml_alpha),
        Method::Reptile => format!("Reptile with alpha {}", cfg.maml_alpha),
    };
    let order = match (cfg.method, cfg.order) {
        (Method::Reptile, _) => "first-order (Reptile)",
        (_, Order::First) => "first order",
        (_, Order::Second) => "second order",
    };
    let lr = match cfg.run.lr_min {
        Some(min) => format!("Adam {} cosine to {min}", cfg.run.meta_lr),
        None => format!("Adam {}", cfg.run.meta_lr),
    };
    let init = match &cfg.init {
        Some(p) => format!(
            ", theta{} from {}",
            if cfg.init_alpha { " and alpha" } else { "" },
            p.display()
        ),
        None => String::new(),
    };
    let k = match cfg.k_support_max {
        Some(hi) => format!("K={}..{hi}", cfg.k_support),
        None => format!("K={}", cfg.k_support),
    };
    let lr = match (cfg.inner_grad_clip, cfg.run.clip) {
        (None, None) => lr,
        (a, b) => {
            let mut s = lr;
            if let Some(a) = a {
                s += &format!(", inner gradients clipped to norm {a} per task");
            }
            if let Some(b) = b {
                s += &format!(", meta-gradient clipped to norm {b}");
            }
            s
        }
    };
    format!(
        "{method}, {order}, {} iterations, meta-batch {}, {k} support / {} query, {} inner step(s), {lr}, seed {}{init}",
        cfg.run.iters, cfg.meta_batch, cfg.k_query, cfg.inner_steps, cfg.seed
    )
}

/// Means of the rule's rates for the log (`rate.alpha`, `rate.alpha.<k>`, …).
fn rates(rule: &Rule) -> anyhow::Result<Vec<(String, f64)>> {
    let mean = |ts: &[Tensor]| -> anyhow::Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for t in ts {
            sum += t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            n += t.elem_count();
        }
        Ok(sum / n.max(1) as f64)
    };
    Ok(match rule.unclipped() {
        Rule::Clipped { .. } => vec![],
        Rule::MetaSgd { alpha } => vec![("rate.alpha".into(), mean(alpha)?)],
        Rule::PerStep { alpha } => alpha
            .iter()
            .enumerate()
            .map(|(k, a)| Ok((format!("rate.alpha.{k}"), mean(a)?)))
            .collect::<anyhow::Result<_>>()?,
        Rule::Momentum { alpha, beta } => vec![("rate.alpha".into(), mean(alpha)?), ("rate.beta".into(), mean(beta)?)],
        Rule::Lstm { bf, bi, .. } => vec![
            ("rate.lstm.bf".into(), mean(std::slice::from_ref(bf))?),
            ("rate.lstm.bi".into(), mean(std::slice::from_ref(bi))?),
        ],
    })
}

/// One meta-training run's objective.
struct TrainJob {
    cfg: TrainConfig,
    fam: Box<dyn TaskFamily>,
    val_fam: Box<dyn TaskFamily>,
    arch: Architecture,
    task: TaskKind,
    device: Device,
    /// The rule's shape (and its values when it is not learned).
    rule: Rule,
    learned_rule: bool,
    n_theta: usize,
}

impl TrainJob {
    fn split(&self, vars: &[Var]) -> anyhow::Result<(Vec<Tensor>, Rule)> {
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let rule = if self.learned_rule {
            self.rule.with_tensors(&ts[self.n_theta..])?
        } else {
            self.rule.clone()
        };
        Ok((ts[..self.n_theta].to_vec(), rule))
    }
}

impl Job for TrainJob {
    fn step(&mut self, it: u64, vars: &[Var]) -> anyhow::Result<(f64, Vec<Tensor>)> {
        let cfg = &self.cfg;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(it + 1);
        let k = match cfg.k_support_max {
            Some(hi) => rng.random_range(cfg.k_support..=hi.max(cfg.k_support)),
            None => cfg.k_support,
        };
        let ep = self
            .fam
            .sample(&mut rng, cfg.meta_batch, k, cfg.k_query, &self.device)?;
        let (theta, rule) = self.split(vars)?;
        if cfg.method == Method::Reptile {
            let support = Support {
                x: ep.support_x,
                target: ep.support_t,
            };
            let a = adapt(&self.arch, self.task, &theta, &rule, &support, cfg.inner_steps)?;
            let q = loss_per_task(self.task, &self.arch.forward(&a.params, &ep.query_x)?, &ep.query_t)?;
            let loss = q.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            // Adam on θ − mean θ′ is Reptile's θ ← θ + ε(θ′ − θ) with Adam's ε.
            let grads = theta
                .iter()
                .zip(&a.params)
                .map(|(t, p)| t.sub(&p.mean(0)?))
                .collect::<candle_core::Result<_>>()?;
            return Ok((loss, grads));
        }
        let loss = meta_loss_with(&self.arch, self.task, &theta, &rule, &ep, cfg.inner_steps, cfg.order)?;
        let grads = loss.backward()?;
        let gs = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .context("no gradient for a meta-parameter")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, gs))
    }

    fn validate(&mut self, vars: &[Var]) -> anyhow::Result<Vec<(String, f64)>> {
        let (theta, rule) = self.split(vars)?;
        let val = validate(
            self.val_fam.as_ref(),
            &self.arch,
            &theta,
            &rule,
            &self.cfg,
            &self.device,
        )?;
        let mut out = vec![("val_query_loss".to_string(), val)];
        if self.learned_rule {
            out.extend(rates(&rule)?);
        }
        Ok(out)
    }

    fn throughput(&self) -> (f64, &'static str) {
        (self.cfg.meta_batch as f64, "tasks")
    }
}

/// The manifest a run writes, from the family's and the run's settings.
fn manifest_for(cfg: &TrainConfig, fam: &dyn TaskFamily) -> anyhow::Result<Manifest> {
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
        bail!("--hidden applies to feature-vector models only");
    }
    manifest.update_rule = cfg.rule;
    manifest.inner_grad_clip = cfg.inner_grad_clip;
    // Serve with the step count the model was meta-trained for.
    manifest.default_steps = cfg.inner_steps;
    manifest.max_steps = manifest.max_steps.max(cfg.inner_steps);
    manifest.validate().map_err(anyhow::Error::msg)?;
    Ok(manifest)
}

/// Runs (or resumes) a training run and writes the finished model into `cfg.out`.
pub fn train(cfg: TrainConfig, device: &Device) -> anyhow::Result<()> {
    let (fam, val_fam) = families(&cfg.task, cfg.data.as_deref(), cfg.n_way)?;
    if cfg.order == Order::Second && cfg.method != Method::Reptile && !super::meta::second_order_available() {
        bail!("second order needs CANDLE_GRAD_DO_NOT_DETACH=1 before the first backward (the train command sets it)");
    }
    if cfg.method != Method::Metasgd && cfg.rule != UpdateRule::Metasgd {
        bail!(
            "--method {:?} trains θ for a fixed plain-SGD rule: use --rule metasgd",
            cfg.method
        );
    }
    let mut manifest = manifest_for(&cfg, fam.as_ref())?;
    let arch = manifest.architecture.clone();
    std::fs::create_dir_all(&cfg.out)?;

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut theta = init_theta(&arch, &mut rng, device)?;
    let alpha = init_alpha(&cfg, &arch, &mut rng, device)?;
    if let Some(init) = &cfg.init {
        theta = store::load_params(init, &arch, &["theta"], device)
            .with_context(|| format!("loading --init {}", init.display()))?
            .remove(0);
    } else if let Architecture::Features { center: true, .. } = arch {
        theta[0] = mean_input(fam.as_ref(), &cfg, device)?;
    }
    let rule = init_rule(&cfg, alpha, device)?.clipped(cfg.inner_grad_clip);
    let learned_rule = cfg.method == Method::Metasgd;
    let mut named: Vec<(String, Tensor)> = arch
        .params()
        .into_iter()
        .zip(&theta)
        .map(|(s, t)| (format!("theta.{}", s.name), t.clone()))
        .collect();
    if learned_rule {
        named.extend(rule_names::named(&rule, &arch));
    }
    let mut job = TrainJob {
        n_theta: theta.len(),
        cfg: cfg.clone(),
        fam,
        val_fam,
        task: manifest.task,
        arch: arch.clone(),
        device: device.clone(),
        rule,
        learned_rule,
    };
    let files = RunFiles::new(&cfg.out, "train");
    let Some(done) = run(&files, &cfg.run, serde_json::to_value(&cfg)?, named, &mut job)? else {
        return Ok(());
    };
    let vars: Vec<Var> = done
        .iter()
        .map(|(_, t)| Var::from_tensor(t))
        .collect::<candle_core::Result<_>>()?;
    let (theta, rule) = job.split(&vars)?;
    manifest.description = format!(
        "{} Meta-trained by `metasgd train`: {}.",
        manifest.description,
        summary(&cfg)
    );
    save_model(&cfg.out, &manifest, &theta, &rule)?;
    std::fs::write(
        cfg.out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(out: &Path, iters: u64) -> TrainConfig {
        TrainConfig {
            task: "sinusoid".into(),
            data: None,
            n_way: 5,
            init: None,
            init_alpha: false,
            init_alpha_later: 1.0,
            hidden: Vec::new(),
            center: false,
            cosine: false,
            out: out.to_path_buf(),
            name: Some("t".into()),
            method: Method::Metasgd,
            rule: UpdateRule::Metasgd,
            order: Order::First,
            run: RunArgs {
                iters,
                meta_lr: 1e-3,
                lr_min: Some(1e-4),
                clip: None,
                val_every: 10,
                ckpt_every: 10,
                stop_at: None,
                resume: true,
            },
            meta_batch: 4,
            k_support: 5,
            k_support_max: None,
            k_query: 5,
            inner_steps: 1,
            alpha_lo: 0.005,
            alpha_hi: 0.1,
            alpha_head: None,
            per_tensor: false,
            inner_grad_clip: None,
            beta_init: 0.5,
            lstm_bf: 6.0,
            maml_alpha: 0.01,
            seed: 3,
            val_tasks: 20,
        }
    }

    fn weights(dir: &Path) -> Vec<Vec<f32>> {
        let m = crate::model::load_model(dir, &Device::Cpu).unwrap();
        m.theta
            .iter()
            .chain(&m.rule.tensors())
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn resumed_training_equals_uninterrupted_training_for_every_rule() {
        let base = std::env::temp_dir().join(format!("metasgd-train-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for rule in [
            UpdateRule::Metasgd,
            UpdateRule::PerStep,
            UpdateRule::Momentum,
            UpdateRule::Lstm,
        ] {
            let (a, b) = (
                base.join(format!("{rule:?}-straight")),
                base.join(format!("{rule:?}-resumed")),
            );
            let c = |out: &Path| TrainConfig {
                rule,
                inner_steps: 2,
                k_support_max: Some(8),
                ..cfg(out, 30)
            };
            train(c(&a), &Device::Cpu).unwrap();
            let mut stopped = c(&b);
            stopped.run.stop_at = Some(20);
            train(stopped, &Device::Cpu).unwrap();
            assert!(
                !b.join("model.safetensors").exists(),
                "an interrupted run writes no model"
            );
            train(c(&b), &Device::Cpu).unwrap();
            let m = crate::model::load_model(&b, &Device::Cpu).unwrap();
            assert_eq!(m.manifest.update_rule, rule);
            assert_eq!(
                max_diff(&weights(&a), &weights(&b)),
                0.0,
                "{rule:?}: resuming from a checkpoint must reproduce the same run"
            );
            let log = std::fs::read_to_string(b.join("train.log")).unwrap();
            assert!(log.contains("resumed at iteration 20"), "{log}");
            assert!(b.join("train.png").exists(), "the curves are drawn beside the log");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn maml_and_reptile_keep_alpha_fixed() {
        for method in [Method::Maml, Method::Reptile] {
            let out = std::env::temp_dir().join(format!("metasgd-{method:?}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&out);
            let mut c = cfg(&out, 10);
            c.method = method;
            c.run.resume = false;
            train(c, &Device::Cpu).unwrap();
            let m = crate::model::load_model(&out, &Device::Cpu).unwrap();
            for a in &m.rule.tensors() {
                assert_eq!(a.dims(), &[] as &[usize]);
                assert_eq!(a.to_scalar::<f32>().unwrap(), 0.01);
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }

    #[test]
    fn reptile_moves_theta_toward_the_adapted_parameters() {
        let out = std::env::temp_dir().join(format!("metasgd-reptile-theta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut c = cfg(&out, 1);
        c.method = Method::Reptile;
        c.run.lr_min = None;
        c.run.resume = false;
        // With Adam's first step every element moves by the learning rate, in
        // the sign of θ′ − θ: check against one adaptation done here.
        let (fam, _) = families("sinusoid", None, 5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
        let arch = fam.manifest("t").architecture;
        let theta0 = init_theta(&arch, &mut rng, &Device::Cpu).unwrap();
        train(c.clone(), &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
        rng.set_stream(1);
        let ep = fam
            .sample(&mut rng, c.meta_batch, c.k_support, c.k_query, &Device::Cpu)
            .unwrap();
        let rule = Rule::MetaSgd {
            alpha: arch
                .params()
                .iter()
                .map(|_| Tensor::new(0.01f32, &Device::Cpu).unwrap())
                .collect(),
        };
        let s = Support {
            x: ep.support_x,
            target: ep.support_t,
        };
        let a = adapt(&arch, TaskKind::Regression, &theta0, &rule, &s, 1).unwrap();
        let m = crate::model::load_model(&out, &Device::Cpu).unwrap();
        for ((t0, p), t1) in theta0.iter().zip(&a.params).zip(&m.theta) {
            let toward = p
                .mean(0)
                .unwrap()
                .sub(t0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let moved = t1.sub(t0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (d, m) in toward.iter().zip(&moved) {
                if d.abs() > 1e-6 {
                    assert!(d.signum() == m.signum() && (m.abs() - 1e-3).abs() < 1e-4, "{d} {m}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}
