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

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::run::{run, Job, RunArgs, RunFiles};
use crate::images::{rotate, PIXELS, SIDE};
use crate::model::conv::{conv3x3, max_pool2, to_features, to_images};
use crate::model::layers::{linear, unit_rows};
use crate::model::loss::{cross_entropy, nearest_prototype};
use crate::model::{store, Architecture};
use crate::tasks::augment::Augment;
use crate::tasks::omniglot::{Omniglot, OmniglotTasks, Split};

const EPS: f64 = 1e-5;
const HIDDEN: usize = 64;

/// Settings of a pre-training run; saved in its log. Give the run's
/// length and rates explicitly (this schedule's: `--iters 3000 --lr 2e-3
/// --lr-min 2e-5 --val-every 250 --ckpt-every 250`).
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct PretrainConfig {
    /// Folder with the Omniglot release (`images_background.zip`, `images_evaluation.zip`).
    #[arg(long, env = "METASGD_OMNIGLOT")]
    pub data: PathBuf,
    /// Output folder: `init.safetensors` (θ to start `train --init` from), checkpoints and `pretrain.log`.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Warp each training drawing at random (small affine, stroke
    /// thickness; [`crate::tasks::augment`]). Batch-norm folding and
    /// validation always see the drawings as they are.
    #[arg(long)]
    #[serde(default)]
    pub augment: bool,
    /// With `--augment`: the warps' ranges and the thickness chance as a
    /// fraction of the defaults (0.5: ±5°, shear 0.125, scale ±7.5%,
    /// shift ±1 px, thickness p = 0.25).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "full_strength")]
    pub augment_strength: f32,
    /// With S > 0 the 3,856-way head is a cosine classifier (Baseline++,
    /// Chen et al. 2019): class c scores `S · cos(w_c, f) + b_c`, so
    /// training separates classes by angle, the comparison nearest-centroid
    /// and the served head make on normalized features. 0: a linear head.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cosine_scale: f64,
}

fn is_zero(s: &f64) -> bool {
    *s == 0.0
}

fn full_strength() -> f32 {
    1.0
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
fn batch(
    data: &Omniglot,
    rng: &mut ChaCha8Rng,
    b: usize,
    augment: Option<&Augment>,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (mut xs, mut ys) = (Vec::with_capacity(b * PIXELS), Vec::with_capacity(b));
    for _ in 0..b {
        let c = rng.random_range(0..data.characters.len());
        let turns = rng.random_range(0..4usize);
        let ch = &data.characters[c];
        let i = ch.first + rng.random_range(0..ch.count);
        let img = rotate(data.image(i), turns);
        match augment {
            Some(a) => xs.extend(a.apply(&img, rng)),
            None => xs.extend(img),
        }
        ys.push((c * 4 + turns) as u32);
    }
    Ok((
        Tensor::from_vec(xs, (1, b, PIXELS), device)?,
        Tensor::from_vec(ys, b, device)?,
    ))
}

/// Folds batch norm into the convolutions, with statistics measured layer by
/// layer over `n` fixed background drawings. Returns the conv4 θ (zero head).
pub fn fold(p: &[Tensor], data: &Omniglot, n: usize, device: &Device) -> anyhow::Result<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (x, _) = batch(data, &mut rng, n, None, device)?;
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
        let pred = nearest_prototype(ep.support_t.tensor(), &fs, &fq)?;
        let truth = ep.query_t.tensor().argmax(D::Minus1)?;
        correct += pred.eq(&truth)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        total += truth.elem_count() as f64;
    }
    Ok(correct / total)
}

/// Pre-training's objective: cross-entropy over every background class.
struct PretrainJob {
    cfg: PretrainConfig,
    data: Arc<Omniglot>,
    eval: Arc<Omniglot>,
    device: Device,
    ema_acc: f64,
}

impl PretrainJob {
    fn folded(&self, vars: &[Var]) -> anyhow::Result<Vec<Tensor>> {
        let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        fold(&p, &self.data, 2048, &self.device)
    }
}

impl Job for PretrainJob {
    fn step(&mut self, it: u64, vars: &[Var]) -> anyhow::Result<(f64, Vec<Tensor>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(it + 1);
        let aug = self.cfg.augment.then(|| Augment::scaled(self.cfg.augment_strength));
        let (x, y) = batch(&self.data, &mut rng, self.cfg.batch, aug.as_ref(), &self.device)?;
        let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let f = body_bn(&p, &x)?;
        let logits = if self.cfg.cosine_scale > 0.0 {
            unit_rows(&f)?
                .broadcast_matmul(&unit_rows(&p[16])?.t()?)?
                .affine(self.cfg.cosine_scale, 0.0)?
                .broadcast_add(&p[17])?
        } else {
            linear(&f, &p[16], &p[17])?
        }
        .squeeze(0)?;
        let (loss, acc) = cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        let gs = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned().context("missing gradient"))
            .collect::<anyhow::Result<_>>()?;
        self.ema_acc = if self.ema_acc.is_nan() {
            acc
        } else {
            0.98 * self.ema_acc + 0.02 * acc
        };
        Ok((loss.to_scalar::<f32>()? as f64, gs))
    }

    fn validate(&mut self, vars: &[Var]) -> anyhow::Result<Vec<(String, f64)>> {
        let theta = self.folded(vars)?;
        let acc5 = centroid_accuracy(&theta, &self.eval, 200, &self.device)?;
        Ok(vec![
            ("train_acc_ema".into(), self.ema_acc),
            ("val_5way1shot_centroid_acc".into(), acc5),
        ])
    }

    fn throughput(&self) -> (f64, &'static str) {
        (self.cfg.batch as f64, "images")
    }

    fn ema_weight(&self) -> f64 {
        0.02
    }

    fn on_checkpoint(&mut self, vars: &[Var]) -> anyhow::Result<()> {
        let theta = self.folded(vars)?;
        let arch = Architecture::Conv4 {
            channels: 1,
            side: SIDE,
            hidden: HIDDEN,
            proto_start: false,
            shift_radius: 0,
        };
        store::save_params(&self.cfg.out.join("init.safetensors"), &arch, &[("theta", &theta)])
    }
}

/// Runs (or resumes) pre-training and writes `init.safetensors` into `cfg.out`.
pub fn pretrain(cfg: PretrainConfig, device: &Device) -> anyhow::Result<()> {
    let data = Arc::new(Omniglot::load(&cfg.data, Split::Background)?);
    let eval = Arc::new(Omniglot::load(&cfg.data, Split::Evaluation)?);
    let classes = data.characters.len() * 4;
    std::fs::create_dir_all(&cfg.out)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let init: Vec<(String, Tensor)> = param_names(classes)
        .into_iter()
        .map(|(n, _)| n)
        .zip(init(classes, &mut rng, device)?)
        .collect();
    let files = RunFiles::new(&cfg.out, "pretrain");
    let mut job = PretrainJob {
        cfg: cfg.clone(),
        data,
        eval,
        device: device.clone(),
        ema_acc: f64::NAN,
    };
    run(&files, &cfg.run, serde_json::to_value(&cfg)?, init, &mut job)?;
    Ok(())
}
