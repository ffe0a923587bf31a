//! Meta-training (`metasgd train`): the objective of one iteration, the
//! starting point, and the model folder a finished run writes. The loop
//! itself (schedule, Adam, log, checkpoints) is [`super::run`].
//!
//! Methods: meta-learning θ and the update rule's tensors (`metasgd`, first
//! or second order, any `--rule`), MAML (θ only, a fixed scalar α) and
//! Reptile (θ only, θ ← θ + ε(θ′ − θ) through Adam, for a fixed plain-SGD
//! rule).

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::init::{identity_body, init_alpha, init_rule, init_theta, mean_input};
use super::run::{run, Job, RunFiles};
use super::{meta_loss_with, Order};
use crate::eval::{episode_losses, over_episodes, EvalSpec};
use crate::model::adapt::{adapt_with, Support};
use crate::model::rule::{Rule, UpdateRule};
use crate::model::{loss_per_task, rule_names, save_model, store, Architecture, Manifest, TaskKind};
use crate::tasks::{families, TaskFamily};

pub use super::config::{Method, TrainConfig};

/// Mean query loss over a fixed set of tasks after `cfg.inner_steps` steps.
pub fn validate(
    fam: &dyn TaskFamily,
    arch: &Architecture,
    theta: &[Tensor],
    rule: &Rule,
    cfg: &TrainConfig,
    device: &Device,
) -> anyhow::Result<f64> {
    let spec = EvalSpec {
        shots: cfg.k_support,
        steps: cfg.inner_steps,
        tasks: cfg.val_tasks,
        queries: if fam.n_way().is_some() { cfg.k_query } else { 100 },
        seed: cfg.seed.wrapping_add(1_000_003),
    };
    let task = fam.manifest("val").task;
    let losses = over_episodes(fam, spec, crate::eval::chunk(fam, arch), device, |ep| {
        Ok(episode_losses(arch, task, theta, rule, cfg.inner_loss, ep, spec.steps)?.0)
    })?;
    Ok(crate::eval::mean_ci95(&losses).0)
}

/// One line that says how a model of `task` kind was trained.
pub fn summary(cfg: &TrainConfig, task: TaskKind) -> String {
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
    // Classification: the classes per training task.
    let ways = match (task, cfg.n_way_max) {
        (TaskKind::Regression, _) => String::new(),
        (TaskKind::Classification, Some(hi)) => format!(", {}..{hi}-way", cfg.n_way),
        (TaskKind::Classification, None) => format!(", {}-way", cfg.n_way),
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
        "{method}, {order}{ways}, {} iterations, meta-batch {}, {k} support / {} query, {} inner step(s), {lr}, seed {}{init}{}",
        cfg.run.iters,
        cfg.meta_batch,
        cfg.k_query,
        cfg.inner_steps,
        cfg.seed,
        body(cfg)
    )
}

/// The summary's clause for a body before the head and for task centering
/// (empty for neither).
fn body(cfg: &TrainConfig) -> String {
    let mut s = String::new();
    if !cfg.hidden.is_empty() {
        let sizes: Vec<String> = cfg.hidden.iter().map(|h| h.to_string()).collect();
        let units = match sizes.as_slice() {
            [one] => format!("{one} units"),
            many => format!("{} layers of {} units", many.len(), many.join(", ")),
        };
        let kind = if cfg.linear_body {
            "linear, started at the identity"
        } else {
            "ReLU"
        };
        s += &format!("; a body of {units} ({kind}");
        if let Some(a) = cfg.alpha_body {
            s += &format!(", alpha starting at {a}");
        }
        if cfg.body_lr != 1.0 {
            s += &format!(", Adam rate ×{}", cfg.body_lr);
        }
        s += ")";
    }
    if cfg.task_center {
        s += "; each task centered on its support mean";
    }
    if let Some(m) = cfg.proto_start {
        s += &format!("; the head started at each task's class prototypes (metric starting at {m})");
    }
    s
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
        let ep = match cfg.n_way_max {
            Some(hi) if hi > cfg.n_way => {
                let n = rng.random_range(cfg.n_way..=hi);
                let fam = self
                    .fam
                    .with_n_way(n)
                    .with_context(|| format!("--n-way-max: the {} family has no class count", cfg.task))?;
                fam.sample(&mut rng, cfg.meta_batch, k, cfg.k_query, &self.device)?
            }
            _ => self
                .fam
                .sample(&mut rng, cfg.meta_batch, k, cfg.k_query, &self.device)?,
        };
        let (theta, rule) = self.split(vars)?;
        if cfg.method == Method::Reptile {
            let support = Support {
                x: ep.support_x,
                target: ep.support_t,
            };
            let (inner, steps) = (cfg.inner_loss, cfg.inner_steps);
            let a = adapt_with(&self.arch, self.task, &theta, &rule, inner, &support, steps)?;
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
        let (inner, steps) = (cfg.inner_loss, cfg.inner_steps);
        let loss = meta_loss_with(&self.arch, self.task, &theta, &rule, inner, &ep, steps, cfg.order)?;
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

    /// `--body-lr` for a feature-vector model's hidden layers (their θ and
    /// every rule tensor of theirs, named `….l<k>.weight` or `….l<k>.bias`).
    fn lr_scale(&self, name: &str) -> f64 {
        let hidden = matches!(&self.arch, Architecture::Features { hidden, .. } if !hidden.is_empty());
        let layer = name.rsplit('.').nth(1).unwrap_or("");
        if hidden && layer.starts_with('l') && layer[1..].parse::<usize>().is_ok() {
            self.cfg.body_lr
        } else {
            1.0
        }
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
    match &mut manifest.architecture {
        Architecture::Conv4 { proto_start, .. } | Architecture::Features { proto_start, .. } => {
            *proto_start = cfg.proto_start.is_some();
        }
        Architecture::Mlp { .. } if cfg.proto_start.is_some() => {
            bail!("--proto-start applies to class-shared heads (conv4 and feature-vector models) only")
        }
        Architecture::Mlp { .. } => {}
    }
    match &mut manifest.architecture {
        Architecture::Conv4 { shift_radius, .. } => *shift_radius = cfg.shift_radius,
        _ if cfg.shift_radius > 0 => bail!("--shift-radius applies to conv4 models only"),
        _ => {}
    }
    if let Architecture::Features {
        hidden,
        center,
        cosine,
        linear_body,
        task_center,
        lexical,
        ..
    } = &mut manifest.architecture
    {
        *lexical = cfg.lexical;
        *task_center = cfg.task_center;
        hidden.clone_from(&cfg.hidden);
        *center = cfg.center;
        *cosine = cfg.cosine;
        *linear_body = cfg.linear_body;
    } else if !cfg.hidden.is_empty()
        || cfg.center
        || cfg.cosine
        || cfg.linear_body
        || cfg.task_center
        || cfg.lexical > 0
    {
        bail!("--hidden, --center, --cosine, --linear-body, --task-center and --lexical apply to feature-vector models only");
    }
    if cfg.lexical > 0 {
        let Some(enc) = manifest.encoder.as_mut() else {
            bail!("--lexical applies to text models only");
        };
        enc.lexical = cfg.lexical;
        manifest.input.shape = vec![enc.width()];
    }
    manifest.update_rule = cfg.rule;
    manifest.inner_grad_clip = cfg.inner_grad_clip;
    manifest.inner_loss = cfg.inner_loss;
    if let (Some(max), Some(n)) = (cfg.n_way_max, manifest.n_way) {
        manifest.n_way = Some(n.max(max));
    }
    // Serve with the step count the model was meta-trained for.
    manifest.default_steps = cfg.inner_steps;
    manifest.max_steps = manifest.max_steps.max(cfg.inner_steps);
    manifest.validate().map_err(anyhow::Error::msg)?;
    Ok(manifest)
}

/// Runs (or resumes) a training run and writes the finished model into `cfg.out`.
pub fn train(cfg: TrainConfig, device: &Device) -> anyhow::Result<()> {
    let (mut fam, mut val_fam) = families(&cfg.task, cfg.data.as_deref(), cfg.n_way)?;
    if cfg.lexical > 0 {
        let none = || anyhow::anyhow!("--lexical applies to text families only");
        fam = fam.with_lexical(cfg.lexical).ok_or_else(none)?;
        val_fam = val_fam.with_lexical(cfg.lexical).ok_or_else(none)?;
    }
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
    } else if let Architecture::Features {
        center,
        linear_body,
        task_center,
        ..
    } = arch
    {
        if center && task_center {
            theta[0] = theta[0].zeros_like()?;
        } else if center {
            // (The embedding's part of the inputs: token buckets follow it.)
            theta[0] = mean_input(fam.as_ref(), &cfg, device)?.narrow(0, 0, theta[0].dim(0)?)?;
        }
        if linear_body {
            identity_body(&arch, &mut theta, device)?;
        }
    }
    if let Some(metric) = cfg.proto_start {
        // The shared head row is the prototype start's metric (`model::proto`).
        let k = theta.len();
        theta[k - 2] = theta[k - 2].ones_like()?.affine(metric, 0.0)?;
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
        summary(&cfg, manifest.task)
    );
    save_model(&cfg.out, &manifest, &theta, &rule)?;
    std::fs::write(
        cfg.out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
