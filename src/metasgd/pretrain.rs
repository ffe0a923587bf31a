//! Supervised pre-training of the conv4 body on every Omniglot background
//! class, to start meta-training from (the CPU-budget schedule of issue 3).
//!
//! The body is trained as an ordinary classifier over all 964 × 4 = 3,856
//! background classes (rotations included), in batches, with batch norm
//! after each convolution and a 3,856-way linear head. Afterwards batch norm's
//! statistics are measured once over a fixed set of background drawings and
//! folded into each convolution (w ← w·γ/σ, b ← (b − μ)·γ/σ + β), so the
//! served network has fixed statistics and no normalization layer. The big
//! head is dropped; the class-shared head row starts at zero.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use crate::images::{rotate, PIXELS, SIDE};
use crate::model::conv::{conv3x3, max_pool2, to_features, to_images};
use crate::model::layers::linear;
use crate::model::{store, Architecture};
use crate::tasks::omniglot::{Omniglot, OmniglotTasks, Split};

const EPS: f64 = 1e-5;
const HIDDEN: usize = 64;

/// Settings of a pre-training run; saved in its log.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct PretrainConfig {
    /// Folder with the Omniglot release (`images_background.zip`, `images_evaluation.zip`).
    #[arg(long, env = "METASGD_OMNIGLOT")]
    pub data: PathBuf,
    /// Output folder: `init.safetensors` (θ to start `train --init` from), checkpoints and `pretrain.log`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Adam's learning rate, decayed on a cosine to `lr_min`.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 2e-5)]
    pub lr_min: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 500)]
    pub ckpt_every: u64,
    /// Stop after this step with a checkpoint, as an interruption would;
    /// `--resume` continues (with `--steps`, possibly changed).
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub stop_at: Option<u64>,
    /// Continue from the checkpoint in `--out`.
    #[arg(long)]
    pub resume: bool,
}

/// Conv weights and biases (8), batch-norm γ and β (8), head weight and bias.
fn param_names(classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for l in 1..=4 {
        let cin = if l == 1 { 1 } else { HIDDEN };
        v.push((format!("c{l}.weight"), vec![HIDDEN, cin, 3, 3]));
        v.push((format!("c{l}.bias"), vec![HIDDEN]));
    }
    for l in 1..=4 {
        v.push((format!("bn{l}.gamma"), vec![HIDDEN]));
        v.push((format!("bn{l}.beta"), vec![HIDDEN]));
    }
    v.push(("fc.weight".into(), vec![classes, HIDDEN]));
    v.push(("fc.bias".into(), vec![classes]));
    v
}

fn init(classes: usize, rng: &mut ChaCha8Rng, device: &Device) -> anyhow::Result<Vec<Tensor>> {
    param_names(classes)
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in: usize = if shape.len() > 1 {
                shape[1..].iter().product()
            } else {
                1
            };
            let v: Vec<f32> = if name.ends_with("gamma") {
                vec![1.0; n]
            } else if name.ends_with("beta") {
                vec![0.0; n]
            } else {
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            Ok(Tensor::from_vec(v, shape.as_slice(), device)?)
        })
        .collect()
}

/// Per-channel batch-norm statistics of `[1, C, N, H, W]`: mean and variance `[C]`.
fn channel_stats(h: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let c = h.dim(1)?;
    let flat = h.squeeze(0)?.reshape((c, ()))?;
    let mean = flat.mean(1)?;
    let var = flat.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.mean(1)?;
    Ok((mean, var))
}

/// Training forward pass with batch statistics. `x` is `[1, N, 784]`. Returns features `[1, N, 64]`.
fn body_bn(p: &[Tensor], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = to_images(x, 1, SIDE)?;
    for l in 0..4 {
        let z = conv3x3(&h, &p[2 * l], &p[2 * l + 1])?;
        let (mean, var) = channel_stats(&z)?;
        let scale = p[8 + 2 * l].broadcast_div(&(var + EPS)?.sqrt()?)?;
        let shift = p[9 + 2 * l].sub(&mean.mul(&scale)?)?;
        let z = z
            .broadcast_mul(&scale.reshape((1, HIDDEN, 1, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, HIDDEN, 1, 1, 1))?)?;
        h = max_pool2(&z.relu()?)?;
    }
    to_features(&h)
}

/// A batch of `b` background drawings (each class a character at one rotation) and their class ids.
fn batch(data: &Omniglot, rng: &mut ChaCha8Rng, b: usize, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let (mut xs, mut ys) = (Vec::with_capacity(b * PIXELS), Vec::with_capacity(b));
    for _ in 0..b {
        let c = rng.random_range(0..data.characters.len());
        let turns = rng.random_range(0..4usize);
        let ch = &data.characters[c];
        let i = ch.first + rng.random_range(0..ch.count);
        xs.extend(rotate(data.image(i), turns));
        ys.push((c * 4 + turns) as u32);
    }
    Ok((
        Tensor::from_vec(xs, (1, b, PIXELS), device)?,
        Tensor::from_vec(ys, b, device)?,
    ))
}

fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle_core::Result<(Tensor, f64)> {
    let logp = crate::model::log_softmax(logits)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?;
    let acc = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok((picked.mean_all()?.neg()?, acc))
}

/// Folds batch norm into the convolutions, with statistics measured layer by
/// layer over `n` fixed background drawings. Returns the conv4 θ (zero head).
pub fn fold(p: &[Tensor], data: &Omniglot, n: usize, device: &Device) -> anyhow::Result<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (x, _) = batch(data, &mut rng, n, device)?;
    let mut folded: Vec<Tensor> = Vec::new();
    let mut h = to_images(&x, 1, SIDE)?;
    for l in 0..4 {
        let z = conv3x3(&h, &p[2 * l], &p[2 * l + 1])?;
        let (mean, var) = channel_stats(&z)?;
        let scale = p[8 + 2 * l].broadcast_div(&(var + EPS)?.sqrt()?)?;
        let w = p[2 * l].broadcast_mul(&scale.reshape((HIDDEN, 1, 1, 1))?)?;
        let b = p[2 * l + 1].sub(&mean)?.mul(&scale)?.add(&p[9 + 2 * l])?;
        h = max_pool2(&conv3x3(&h, &w, &b)?)?.relu()?;
        folded.push(w);
        folded.push(b);
    }
    folded.push(Tensor::zeros((1, HIDDEN), DType::F32, device)?);
    folded.push(Tensor::zeros(1, DType::F32, device)?);
    Ok(folded)
}

/// Nearest-centroid accuracy of the folded body on 5-way 1-shot evaluation episodes (a progress signal).
pub fn centroid_accuracy(
    theta: &[Tensor],
    eval: &Arc<Omniglot>,
    episodes: usize,
    device: &Device,
) -> anyhow::Result<f64> {
    use crate::tasks::TaskFamily;
    let fam = OmniglotTasks {
        data: eval.clone(),
        n_way: 5,
        rotations: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut correct = 0f64;
    let mut total = 0f64;
    for _ in 0..episodes.div_ceil(20) {
        let ep = fam.sample(&mut rng, 20, 1, 5, device)?;
        let fs = crate::model::conv::body(&theta[..8], &ep.support_x, 1, SIDE)?;
        let fq = crate::model::conv::body(&theta[..8], &ep.query_x, 1, SIDE)?;
        let st = ep.support_t.tensor();
        // Prototypes [T, n, F] = onehotᵀ · features / counts.
        let protos = st.t()?.matmul(&fs)?.broadcast_div(&st.sum(1)?.unsqueeze(2)?)?;
        let d = fq
            .broadcast_matmul(&protos.t()?)?
            .affine(2.0, 0.0)?
            .broadcast_sub(&protos.sqr()?.sum(2)?.unsqueeze(1)?)?;
        let pred = d.argmax(D::Minus1)?;
        let truth = ep.query_t.tensor().argmax(D::Minus1)?;
        correct += pred.eq(&truth)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        total += truth.elem_count() as f64;
    }
    Ok(correct / total)
}

fn log_line(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Runs (or resumes) pre-training and writes `init.safetensors` into `cfg.out`.
pub fn pretrain(cfg: PretrainConfig, device: &Device) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let data = Arc::new(Omniglot::load(&cfg.data, Split::Background)?);
    let eval = Arc::new(Omniglot::load(&cfg.data, Split::Evaluation)?);
    let classes = data.characters.len() * 4;
    std::fs::create_dir_all(&cfg.out)?;
    let (ckpt, log) = (
        cfg.out.join("pretrain_checkpoint.safetensors"),
        cfg.out.join("pretrain.log"),
    );
    let names = param_names(classes);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut params = init(classes, &mut rng, device)?;
    let mut start = 0u64;
    let mut adam_state = None;
    if cfg.resume && ckpt.exists() {
        let t = candle_core::safetensors::load(&ckpt, device)?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .with_context(|| format!("{k} missing in {}", ckpt.display()))
        };
        params = names.iter().map(|(n, _)| get(n)).collect::<anyhow::Result<_>>()?;
        let m = names
            .iter()
            .map(|(n, _)| get(&format!("adam_m.{n}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let v = names
            .iter()
            .map(|(n, _)| get(&format!("adam_v.{n}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        start = get("step")?.to_scalar::<u32>()? as u64;
        adam_state = Some((m, v));
        log_line(&log, &format!("resumed at step {start}"))?;
    } else {
        let _ = std::fs::remove_file(&log);
        log_line(&log, &format!("config {}", serde_json::to_string(&cfg)?))?;
        log_line(
            &log,
            &format!(
                "loaded {} background and {} evaluation drawings in {:.1}s",
                data.files.len(),
                eval.files.len(),
                t_load.elapsed().as_secs_f64()
            ),
        )?;
    }
    let vars: Vec<Var> = params
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let mut adam = Adam::new(&vars, cfg.lr)?;
    if let Some((m, v)) = adam_state {
        (adam.m, adam.v, adam.step) = (m, v, start);
    }
    let pb = indicatif::ProgressBar::new(cfg.steps);
    pb.set_position(start);
    let t0 = Instant::now();
    let (mut ema_loss, mut ema_acc) = (f64::NAN, f64::NAN);
    let end = cfg.stop_at.unwrap_or(cfg.steps).min(cfg.steps);
    for step in start..end {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(step + 1);
        let (x, y) = batch(&data, &mut rng, cfg.batch, device)?;
        let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let f = body_bn(&p, &x)?;
        let logits = linear(&f, &p[16], &p[17])?.squeeze(0)?;
        let (loss, acc) = cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned().context("missing gradient"))
            .collect::<anyhow::Result<_>>()?;
        let t = step as f64 / cfg.steps as f64;
        adam.lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + (std::f64::consts::PI * t).cos());
        adam.update(&vars, &gs)?;
        let l = loss.to_scalar::<f32>()? as f64;
        anyhow::ensure!(l.is_finite(), "loss became {l} at step {step}");
        ema_loss = if ema_loss.is_nan() {
            l
        } else {
            0.98 * ema_loss + 0.02 * l
        };
        ema_acc = if ema_acc.is_nan() {
            acc
        } else {
            0.98 * ema_acc + 0.02 * acc
        };
        pb.inc(1);
        let done = step + 1;
        if done % cfg.ckpt_every == 0 || done == end {
            let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let theta = fold(&p, &data, 2048, device)?;
            let acc5 = centroid_accuracy(&theta, &eval, 200, device)?;
            let line = format!(
                "step {done} loss_ema {ema_loss:.4} train_acc_ema {ema_acc:.4} eval_5way1shot_centroid_acc {acc5:.4} images_per_s {:.0}",
                (done - start) as f64 * cfg.batch as f64 / t0.elapsed().as_secs_f64()
            );
            pb.println(&line);
            log_line(&log, &line)?;
            let mut map: HashMap<String, Tensor> = HashMap::new();
            for (i, (n, _)) in names.iter().enumerate() {
                map.insert(n.clone(), p[i].clone());
                map.insert(format!("adam_m.{n}"), adam.m[i].clone());
                map.insert(format!("adam_v.{n}"), adam.v[i].clone());
            }
            map.insert("step".into(), Tensor::new(done as u32, device)?);
            candle_core::safetensors::save(&map, &ckpt)?;
            let arch = Architecture::Conv4 {
                channels: 1,
                side: SIDE,
                hidden: HIDDEN,
            };
            store::save_params(&cfg.out.join("init.safetensors"), &arch, &[("theta", &theta)])?;
        }
    }
    pb.finish();
    Ok(())
}
