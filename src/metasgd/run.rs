//! The one run loop of `train` and `pretrain`: the learning-rate schedule,
//! Adam steps, a loss average, periodic validation, the progress bar, the
//! run log with its curves, and checkpoints that a resumed run continues
//! from bit for bit.
//!
//! A run folder holds `<name>.log` (a `config` line, then one line per
//! validation: `iter N key value …`), `<name>.png` (its curves, see
//! [`super::curves`]), `<name>_checkpoint.safetensors` (the variables and
//! Adam's moments by name) and `<name>_checkpoint.json` (iteration and
//! counters).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optim::Adam;
use crate::model::store::save_named;

/// The settings every run shares.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct RunArgs {
    /// Optimizer iterations in the whole run.
    #[arg(long, alias = "steps", default_value_t = 200_000)]
    pub iters: u64,
    /// Adam's learning rate.
    #[arg(long = "meta-lr", alias = "lr", default_value_t = 1e-3)]
    pub meta_lr: f64,
    /// With a value, the learning rate follows a cosine from `meta_lr`
    /// down to this at the last iteration; without, it stays constant.
    #[arg(long)]
    #[serde(default)]
    pub lr_min: Option<f64>,
    /// With a value, gradients whose global L2 norm exceeds it are scaled
    /// down to it before Adam's step (a task that blows up moves nothing far).
    #[arg(long)]
    #[serde(default)]
    pub clip: Option<f64>,
    /// Validate (and log a line) every this many iterations.
    #[arg(long, default_value_t = 5_000)]
    pub val_every: u64,
    /// Checkpoint every this many iterations.
    #[arg(long, default_value_t = 5_000)]
    pub ckpt_every: u64,
    /// Stop after this iteration with a checkpoint, as an interruption would
    /// (for time-boxed runs); `--resume` continues the same schedule.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub stop_at: Option<u64>,
    /// Continue from the checkpoint in the output folder if there is one.
    #[arg(long)]
    pub resume: bool,
}

impl RunArgs {
    /// The learning rate at iteration `it` (constant, or cosine to `lr_min`).
    pub fn learning_rate(&self, it: u64) -> f64 {
        match self.lr_min {
            None => self.meta_lr,
            Some(min) => {
                let t = it as f64 / self.iters.max(1) as f64;
                min + 0.5 * (self.meta_lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// What one kind of run computes; the loop does the rest.
pub trait Job {
    /// The loss of iteration `it` and the gradient of every variable (in
    /// the order the run was given them). The loop steps Adam with them.
    fn step(&mut self, it: u64, vars: &[Var]) -> anyhow::Result<(f64, Vec<Tensor>)>;
    /// Measurements for the log line (`val_…`, `rate.…`), at a validation.
    fn validate(&mut self, vars: &[Var]) -> anyhow::Result<Vec<(String, f64)>>;
    /// Units of work per iteration and their name, for the throughput field.
    fn throughput(&self) -> (f64, &'static str);
    /// The weight of the newest loss in the logged average.
    fn ema_weight(&self) -> f64 {
        0.001
    }
    /// The factor on the learning rate for the variable `name`.
    fn lr_scale(&self, _name: &str) -> f64 {
        1.0
    }
    /// Runs after each checkpoint (for example to export the current model).
    fn on_checkpoint(&mut self, _vars: &[Var]) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    iter: u64,
    adam_step: u64,
    ema_loss: f64,
    elapsed_s: f64,
    config: serde_json::Value,
}

/// The files of a run named `name` in `dir`.
pub struct RunFiles {
    pub log: PathBuf,
    pub png: PathBuf,
    ckpt: PathBuf,
    ckpt_meta: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            log: dir.join(format!("{name}.log")),
            png: dir.join(format!("{name}.png")),
            ckpt: dir.join(format!("{name}_checkpoint.safetensors")),
            ckpt_meta: dir.join(format!("{name}_checkpoint.json")),
        }
    }
}

/// Appends one line to a run log.
pub fn log_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Runs (or resumes) `job` over the named variables `init`. Returns the
/// variables' final values when the run reached `args.iters`, `None` when it
/// stopped at `--stop-at`.
pub fn run(
    files: &RunFiles,
    args: &RunArgs,
    config: serde_json::Value,
    init: Vec<(String, Tensor)>,
    job: &mut dyn Job,
) -> anyhow::Result<Option<Vec<(String, Tensor)>>> {
    let named: Vec<(String, Var)> = init
        .into_iter()
        .map(|(n, t)| Ok((n, Var::from_tensor(&t)?)))
        .collect::<candle_core::Result<_>>()?;
    let mut adam = Adam::with_scales(named, args.meta_lr, |n| job.lr_scale(n))?;
    let (mut start, mut ema, mut elapsed0) = (0u64, f64::NAN, 0.0);
    if args.resume && files.ckpt_meta.exists() {
        let meta: CheckpointMeta = serde_json::from_str(&std::fs::read_to_string(&files.ckpt_meta)?)?;
        let device = adam.vars()[0].device().clone();
        let map = candle_core::safetensors::load(&files.ckpt, &device)?;
        adam.restore(&map, meta.adam_step)?;
        (start, ema, elapsed0) = (meta.iter, meta.ema_loss, meta.elapsed_s);
        log_line(&files.log, &format!("resumed at iteration {start}"))?;
    } else {
        let _ = std::fs::remove_file(&files.log);
        log_line(&files.log, &format!("config {}", serde_json::to_string(&config)?))?;
    }
    let vars = adam.vars();
    let pb = indicatif::ProgressBar::new(args.iters);
    pb.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    pb.set_position(start);
    let t0 = Instant::now();
    let end = args.stop_at.unwrap_or(args.iters).min(args.iters);
    let w = job.ema_weight();
    let (mut skipped, mut in_a_row) = (0u64, 0u64);
    for it in start..end {
        let (loss, grads) = job.step(it, &vars)?;
        if !loss.is_finite() {
            // One meta-batch whose inner loop blew up: no step from it. A
            // run that keeps blowing up stops.
            skipped += 1;
            in_a_row += 1;
            anyhow::ensure!(
                in_a_row < 20,
                "the loss was {loss} for 20 iterations in a row, up to {it}"
            );
        } else {
            in_a_row = 0;
        }
        let grads = match args.clip {
            Some(max) => clip(grads, max)?,
            None => grads,
        };
        if loss.is_finite() {
            adam.lr = args.learning_rate(it);
            adam.update(&grads)?;
        }
        if loss.is_finite() {
            ema = if ema.is_nan() { loss } else { (1.0 - w) * ema + w * loss };
        }
        pb.inc(1);
        let done = it + 1;
        let elapsed = elapsed0 + t0.elapsed().as_secs_f64();
        if done % args.val_every == 0 || done == args.iters {
            let mut line = format!("iter {done} train_loss_ema {ema:.4}");
            for (k, v) in job.validate(&vars)? {
                line += &format!(" {k} {v:.5}");
            }
            let (units, name) = job.throughput();
            if skipped > 0 {
                line += &format!(" skipped_nonfinite {skipped}");
            }
            line += &format!(
                " elapsed_s {elapsed:.1} {name}_per_s {:.0}",
                (done - start) as f64 * units / t0.elapsed().as_secs_f64()
            );
            pb.set_message(format!("ema {ema:.3}"));
            pb.println(&line);
            log_line(&files.log, &line)?;
            if let Err(e) = super::curves::plot(&files.log, &files.png) {
                pb.println(format!("curves not drawn: {e:#}"));
            }
        }
        if done % args.ckpt_every == 0 || done == args.iters || done == end {
            let mut all = adam.values();
            all.extend(adam.state());
            save_named(&files.ckpt, &all)?;
            let meta = CheckpointMeta {
                iter: done,
                adam_step: adam.step,
                ema_loss: ema,
                elapsed_s: elapsed,
                config: config.clone(),
            };
            std::fs::write(&files.ckpt_meta, serde_json::to_string_pretty(&meta)?)?;
            job.on_checkpoint(&vars)?;
        }
    }
    pb.finish();
    if end < args.iters {
        log_line(
            &files.log,
            &format!("stopped at iteration {end} (--stop-at); continue with --resume"),
        )?;
        return Ok(None);
    }
    Ok(Some(adam.values()))
}

/// `grads` scaled so that their global L2 norm is at most `max`.
pub fn clip(grads: Vec<Tensor>, max: f64) -> candle_core::Result<Vec<Tensor>> {
    let mut sq = 0f64;
    for g in &grads {
        sq += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if !norm.is_finite() || norm <= max {
        return Ok(grads);
    }
    grads.iter().map(|g| g.affine(max / norm, 0.0)).collect()
}
