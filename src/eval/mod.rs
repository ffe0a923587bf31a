//! Evaluation: mean query loss ± 95% CI over fresh tasks, after adaptation.

pub mod report;

use std::path::Path;

use anyhow::Context;

use candle_core::{DType, Device, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use candle_core::Tensor;

use crate::model::adapt::{adapt_with, Support};
use crate::model::rule::Rule;
use crate::model::{load_model, loss_per_task, Architecture, InnerLoss, LoadedModel, Manifest, Target, TaskKind};
use crate::tasks::Episode;
use crate::tasks::TaskFamily;

/// One cell of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub model: String,
    pub shots: usize,
    pub steps: usize,
    pub tasks: usize,
    pub queries: usize,
    /// Classes per task (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ways: Option<usize>,
    /// Mean query loss and its 95% half-width.
    pub mean: f64,
    pub ci95: f64,
    /// Classification: mean query accuracy and its 95% half-width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_ci95: Option<f64>,
}

/// Mean and 95% normal-approximation half-width of a sample.
pub fn mean_ci95(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// How to evaluate: K shots, `steps` steps, `tasks` fresh tasks with
/// `queries` query points each, drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub struct EvalSpec {
    pub shots: usize,
    pub steps: usize,
    pub tasks: usize,
    pub queries: usize,
    pub seed: u64,
}

/// Per-task query losses (and accuracies, for classification) of `model`
/// on fresh tasks, sampled [`chunk`] tasks at a time.
pub fn task_losses(
    model: &LoadedModel,
    fam: &dyn TaskFamily,
    spec: EvalSpec,
    device: &Device,
) -> anyhow::Result<(Vec<f64>, Option<Vec<f64>>)> {
    let per_task = over_episodes(fam, spec, chunk(fam, model.architecture()), device, |ep| {
        let (l, a) = episode_losses(
            model.architecture(),
            model.manifest.task,
            &model.theta,
            &model.rule,
            model.manifest.inner_loss,
            ep,
            spec.steps,
        )?;
        let a = a.unwrap_or_else(|| vec![f64::NAN; l.len()]);
        Ok(l.into_iter().zip(a).collect())
    })?;
    let (losses, accs): (Vec<f64>, Vec<f64>) = per_task.into_iter().unzip();
    let accs = (model.manifest.task == TaskKind::Classification).then_some(accs);
    Ok((losses, accs))
}

/// Tasks evaluated at once for `arch` on `fam`: the family's chunk divided
/// by the body passes an input costs (a conv4 shift ensemble's nine copies
/// held 18 GB at 20-way 5-shot in 20-task chunks).
pub fn chunk(fam: &dyn TaskFamily, arch: &Architecture) -> usize {
    (fam.eval_chunk() / arch.passes_per_input()).max(1)
}

/// Draws `spec.tasks` episodes from the random stream `spec` fixes (so
/// every caller at the same `spec` sees the same tasks), `chunk` at a time
/// (the image and text families draw their tasks one after another, so the
/// chunk does not change which tasks they draw), and collects `f`'s
/// per-task values.
pub fn over_episodes<T>(
    fam: &dyn TaskFamily,
    spec: EvalSpec,
    chunk: usize,
    device: &Device,
    mut f: impl FnMut(Episode) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<Vec<T>> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    rng.set_stream(spec.shots as u64);
    let mut out = Vec::with_capacity(spec.tasks);
    let mut left = spec.tasks;
    while left > 0 {
        let n = left.min(chunk.max(1));
        out.extend(f(fam.sample(&mut rng, n, spec.shots, spec.queries, device)?)?);
        left -= n;
    }
    Ok(out)
}

/// Per-task query losses after `steps` first-order adaptation steps on each
/// task's support set, and for classification the per-task query accuracy.
pub fn episode_losses(
    arch: &Architecture,
    task: TaskKind,
    theta: &[Tensor],
    rule: &Rule,
    inner: InnerLoss,
    ep: Episode,
    steps: usize,
) -> anyhow::Result<(Vec<f64>, Option<Vec<f64>>)> {
    let support = Support {
        x: ep.support_x,
        target: ep.support_t,
    };
    let a = adapt_with(arch, task, theta, rule, inner, &support, steps)?;
    let out = arch.forward(&a.params, &ep.query_x)?;
    let per_task = loss_per_task(task, &out, &ep.query_t)?;
    let acc = match &ep.query_t {
        Target::OneHot(onehot) if task == TaskKind::Classification => {
            let c = onehot.dim(D::Minus1)?;
            let pred = out.narrow(D::Minus1, 0, c)?.argmax(D::Minus1)?;
            let truth = onehot.argmax(D::Minus1)?;
            Some(pred.eq(&truth)?.to_dtype(DType::F64)?.mean(1)?.to_vec1::<f64>()?)
        }
        _ => None,
    };
    Ok((per_task.to_dtype(DType::F64)?.to_vec1::<f64>()?, acc))
}

/// `fam` with the inputs `m` takes, when they differ (a text model with
/// token buckets); `None`: `fam` itself. The tasks drawn stay the same.
pub fn inputs_for(fam: &dyn TaskFamily, m: &Manifest) -> anyhow::Result<Option<Box<dyn TaskFamily>>> {
    match m.encoder.as_ref().map_or(0, |e| e.lexical) {
        0 => Ok(None),
        b => Ok(Some(fam.with_lexical(b).with_context(|| {
            format!(
                "{} takes token buckets, which family {} has no texts for",
                m.name,
                fam.name()
            )
        })?)),
    }
}

/// Evaluates `model` at `spec`, once per shot count in `shots`: a result
/// row each, with the per-task accuracies behind it (classification).
pub fn evaluate(
    model: &LoadedModel,
    label: &str,
    fam: &dyn TaskFamily,
    shots: &[usize],
    spec: EvalSpec,
    device: &Device,
) -> anyhow::Result<Vec<(EvalResult, Option<Vec<f64>>)>> {
    shots
        .iter()
        .map(|&k| {
            let spec = EvalSpec { shots: k, ..spec };
            let (losses, accs) = task_losses(model, fam, spec, device)?;
            Ok((result_row(label.to_string(), fam, spec, &losses, accs.as_deref()), accs))
        })
        .collect()
}

/// Per-task query accuracy of the nearest-centroid classifier on
/// `model`'s [`Architecture::centroid_features`] (its body's features
/// under its θ, or the raw inputs; `None`: the raw inputs): each class's
/// prototype is the mean of its support vectors, and a query takes the class
/// of the nearest prototype (Euclidean). Draws the same tasks as
/// [`task_losses`] at the same `spec`.
pub fn centroid_accuracies(
    fam: &dyn TaskFamily,
    model: Option<&LoadedModel>,
    spec: EvalSpec,
    device: &Device,
) -> anyhow::Result<Vec<f64>> {
    let n = model.map_or(fam.eval_chunk(), |m| chunk(fam, m.architecture()));
    over_episodes(fam, spec, n, device, |ep| {
        let (Target::OneHot(s1), Target::OneHot(q1)) = (&ep.support_t, &ep.query_t) else {
            anyhow::bail!("nearest-centroid needs a classification family");
        };
        let (sx, qx) = match model {
            Some(m) => {
                let arch = m.architecture();
                (
                    arch.centroid_features(&m.theta, &ep.support_x)?,
                    arch.centroid_features(&m.theta, &ep.query_x)?,
                )
            }
            None => (ep.support_x.clone(), ep.query_x.clone()),
        };
        let (sx, qx) = (sx.flatten_from(2)?, qx.flatten_from(2)?);
        let pred = crate::model::loss::nearest_prototype(s1, &sx, &qx)?;
        let truth = q1.argmax(D::Minus1)?;
        Ok(pred.eq(&truth)?.to_dtype(DType::F64)?.mean(1)?.to_vec1::<f64>()?)
    })
}

/// A result row: the mean and 95% CI of per-task losses (none for a
/// baseline or a paired difference) and of accuracies.
fn result_row(label: String, fam: &dyn TaskFamily, spec: EvalSpec, losses: &[f64], accs: Option<&[f64]>) -> EvalResult {
    let (mean, ci95) = if losses.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        mean_ci95(losses)
    };
    let acc = accs.map(mean_ci95);
    EvalResult {
        model: label,
        shots: spec.shots,
        steps: spec.steps,
        tasks: spec.tasks,
        queries: spec.queries,
        ways: fam.n_way(),
        mean,
        ci95,
        accuracy: acc.map(|a| a.0),
        accuracy_ci95: acc.map(|a| a.1),
    }
}

/// The nearest-centroid baseline as result rows, one per shot count, each
/// with its per-task accuracies.
pub fn evaluate_centroid(
    fam: &dyn TaskFamily,
    model: Option<&LoadedModel>,
    shots: &[usize],
    spec: EvalSpec,
    device: &Device,
) -> anyhow::Result<Vec<(EvalResult, Vec<f64>)>> {
    shots
        .iter()
        .map(|&k| {
            let spec = EvalSpec {
                shots: k,
                steps: 0,
                ..spec
            };
            let acc = centroid_accuracies(fam, model, spec, device)?;
            Ok((result_row("nearest-centroid".into(), fam, spec, &[], Some(&acc)), acc))
        })
        .collect()
}

/// The row "`label` − `against`" (nearest-centroid, or a baseline): the
/// mean and 95% CI of the per-episode accuracy difference on the same
/// episodes (paired, so much tighter than the two rows' own intervals).
/// `spec` is the model's, at one shot count.
pub fn paired_row(
    label: &str,
    against: &str,
    fam: &dyn TaskFamily,
    spec: EvalSpec,
    model_accs: &[f64],
    other_accs: &[f64],
) -> EvalResult {
    let diff: Vec<f64> = model_accs.iter().zip(other_accs).map(|(a, b)| a - b).collect();
    result_row(format!("{label} − {against} (paired)"), fam, spec, &[], Some(&diff))
}

/// The model in `dir` and the baselines in `dir/baselines/*`, with labels.
pub fn model_and_baselines(dir: &Path, device: &Device) -> anyhow::Result<Vec<(String, LoadedModel)>> {
    let model = load_model(dir, device)?;
    let mut out = vec![(model.manifest.name.clone(), model)];
    let base = dir.join("baselines");
    if base.is_dir() {
        let mut dirs: Vec<_> = std::fs::read_dir(&base)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("manifest.json").exists())
            .collect();
        dirs.sort();
        for d in dirs {
            let label = d.file_name().unwrap().to_string_lossy().into_owned();
            out.push((label, load_model(&d, device)?));
        }
    }
    Ok(out)
}
