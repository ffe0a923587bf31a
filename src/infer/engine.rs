//! The engine between decoded inputs and tensors: adapt a model on a
//! decoded support set, and predict with adapted parameters. Blocking; the
//! core runs it on the compute pool. Forward and backward run in chunks of
//! rows (`model::adapt`), checking the request's [`Cancel`] before each.

use std::borrow::Cow;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use serde_json::Value;

use super::error::{InferError, Result};
use super::input::{Inputs, ValidLabels, ValidSupport};
use super::pool::Cancel;
use super::registry::ServedModel;
use crate::model::adapt::{adapt_chunked, forward_chunked, Support};
use crate::model::batch::{pad_inputs, row_bucket, task_params};
use crate::model::{LoadedModel, Target, TaskKind};

/// An adapted model for one task: parameters with a leading task dim of 1.
pub struct AdaptedModel {
    pub params: Vec<Tensor>,
    pub loss_before: f32,
    pub loss_after: f32,
}

fn input_tensor(model: &LoadedModel, flat: &[f32], n: usize, device: &Device) -> Result<Tensor> {
    let dim = model.architecture().input_dim();
    Ok(Tensor::from_slice(flat, (1, n, dim), device)?)
}

/// The architecture's input vectors: numbers as they are, texts through
/// the model's encoder (in batches).
pub fn features<'a>(served: &ServedModel, inputs: &'a Inputs) -> Result<Cow<'a, [f32]>> {
    match inputs {
        Inputs::Values(v) => Ok(Cow::Borrowed(v)),
        Inputs::Texts(texts) => {
            let enc = served.encoder.as_ref().ok_or_else(|| {
                InferError::internal("encoder_failed", format!("model {} has no encoder", served.info.name))
            })?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let start = Instant::now();
            let v = enc
                .embed(&refs)
                .map_err(|e| InferError::internal("encoder_failed", format!("encoder: {e:#}")))?;
            super::metrics::encoded(&served.info.name, texts.len(), start.elapsed().as_secs_f64());
            Ok(Cow::Owned(v))
        }
    }
}

/// Runs `steps` adaptation steps on the support set, `rows` examples at a
/// time, on the model's device.
pub fn adapt_support(
    served: &ServedModel,
    s: &ValidSupport,
    steps: usize,
    rows: usize,
    cancel: &Cancel,
) -> Result<AdaptedModel> {
    let (model, device) = (&served.model, &served.device);
    let x = input_tensor(model, &features(served, &s.inputs)?, s.n, device)?;
    cancel.check()?;
    let target = match &s.labels {
        ValidLabels::Values(v) => Target::Values(Tensor::from_slice(v, (1, s.n, 1), device)?),
        ValidLabels::Classes { index, classes } => {
            let c = classes.len();
            let mut onehot = vec![0f32; s.n * c];
            for (i, &k) in index.iter().enumerate() {
                onehot[i * c + k as usize] = 1.0;
            }
            Target::OneHot(Tensor::from_vec(onehot, (1, s.n, c), device)?)
        }
    };
    let a = adapt_chunked(
        model.architecture(),
        model.manifest.task,
        &model.theta,
        &model.rule,
        model.manifest.inner_loss,
        &Support { x, target },
        steps,
        rows,
        &mut || cancel.check_tensor(),
    )?;
    Ok(AdaptedModel {
        params: a.params,
        loss_before: a.loss_before[0],
        loss_after: a.loss_after[0],
    })
}

/// The one divergence check, for creation and replay alike: an adaptation
/// whose support loss is not finite is refused, never stored or served.
pub fn check_converged(a: &AdaptedModel, steps: usize, default_steps: usize) -> Result<()> {
    let finite = a.loss_after.is_finite()
        && a.params.iter().all(|p| {
            p.abs()
                .and_then(|t| t.max_all())
                .and_then(|m| m.to_scalar::<f32>())
                .is_ok_and(f32::is_finite)
        });
    if finite {
        return Ok(());
    }
    Err(InferError::invalid(
        "adaptation_diverged",
        format!(
            "adaptation diverged: the support loss or the parameters are not finite after {steps} steps; \
             use fewer steps (this model's default is {default_steps}) or labels of a smaller scale"
        ),
    ))
}

/// Per input: the prediction, and for classification the class probabilities.
pub type Predicted = (Vec<Value>, Option<Vec<Vec<f32>>>);

/// Predictions (and class probabilities for classification) for `n`
/// inputs. Queries that fit one chunk of `rows` are padded to their bucket
/// (`model::batch::row_bucket`) and run as [`predict_batch`] runs them, so
/// a prediction has the same bits alone or batched; more run in chunks of
/// `rows`. A regression output that is not finite (an input far outside
/// what the model was trained on) is an `Invalid` error naming the input,
/// never a `null` in the response.
pub fn predict(
    served: &ServedModel,
    params: &[Tensor],
    classes: Option<&[Value]>,
    inputs: &Inputs,
    n: usize,
    rows: usize,
    cancel: &Cancel,
) -> Result<Predicted> {
    let bucket = row_bucket(served.model.architecture(), n);
    if bucket <= rows {
        cancel.check()?;
        let q = Query { inputs, n, classes };
        return predict_batch(served, params, &[q], bucket)?.remove(0);
    }
    let model = &served.model;
    let x = input_tensor(model, &features(served, inputs)?, n, &served.device)?;
    let out = forward_chunked(model.architecture(), params, &x, rows, &mut || cancel.check_tensor())?.squeeze(0)?;
    outputs(model.manifest.task, &out, classes)
}

/// One task's query set in a batched prediction.
pub struct Query<'a> {
    pub inputs: &'a Inputs,
    pub n: usize,
    /// The session's classes (classification), in output order.
    pub classes: Option<&'a [Value]>,
}

/// Predictions for several tasks at once: `params` are `[T, …]` (task `i`'s
/// at index `i`), and every query set is padded to `bucket` rows, which
/// each must fit. One answer per task; an error of the whole batch fails
/// them all.
pub fn predict_batch(
    served: &ServedModel,
    params: &[Tensor],
    queries: &[Query],
    bucket: usize,
) -> Result<Vec<Result<Predicted>>> {
    let model = &served.model;
    let feats = queries
        .iter()
        .map(|q| features(served, q.inputs))
        .collect::<Result<Vec<_>>>()?;
    let tasks: Vec<(&[f32], usize)> = feats.iter().zip(queries).map(|(f, q)| (&f[..], q.n)).collect();
    let x = pad_inputs(&tasks, model.architecture().input_dim(), bucket, &served.device)?;
    let out = model.architecture().forward(params, &x)?;
    Ok(queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let o = out.narrow(0, i, 1)?.narrow(1, 0, q.n)?.squeeze(0)?;
            outputs(model.manifest.task, &o, q.classes)
        })
        .collect())
}

/// One task's outputs `[n, out]` as predictions: a class label and the
/// probabilities per input, or the regression values.
fn outputs(task: TaskKind, out: &Tensor, classes: Option<&[Value]>) -> Result<Predicted> {
    let not_finite = |i: usize| {
        InferError::invalid(
            "prediction_not_finite",
            format!(
                "the model's output for inputs[{i}] is not a finite number: the input is far outside \
                 the range the model was trained on"
            ),
        )
    };
    match (task, classes) {
        (TaskKind::Classification, Some(classes)) => {
            let logits = out.narrow(D::Minus1, 0, classes.len())?;
            let p = crate::model::loss::softmax(&logits)?.to_vec2::<f32>()?;
            if let Some(i) = p.iter().position(|row| !row.iter().all(|v| v.is_finite())) {
                return Err(not_finite(i));
            }
            let labels = p
                .iter()
                .map(|row| {
                    let k = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
                    classes[k].clone()
                })
                .collect();
            Ok((labels, Some(p)))
        }
        _ => {
            let v = out.flatten_all()?.to_vec1::<f32>()?;
            if let Some(i) = v.iter().position(|y| !y.is_finite()) {
                return Err(not_finite(i));
            }
            Ok((v.into_iter().map(|y| serde_json::json!(y)).collect(), None))
        }
    }
}

/// Adapts several decoded support sets of one model at once, each padded
/// to its bucket (`model::batch`): the same bits as each alone through
/// [`adapt_padded_one`]. `cancelled` stops the batch between steps once it
/// is true (when every request in it has gone).
pub fn adapt_batch(
    served: &ServedModel,
    sets: &[&ValidSupport],
    steps: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<AdaptedModel>> {
    use crate::model::batch::{adapt_padded, class_bucket, pad, Labels, TaskSet};

    let (model, device) = (&served.model, &served.device);
    let dim = model.architecture().input_dim();
    let mut tasks = Vec::with_capacity(sets.len());
    for s in sets {
        let Inputs::Values(x) = &s.inputs else {
            return Err(InferError::internal("internal_error", "texts reached the batched path"));
        };
        let labels = match &s.labels {
            ValidLabels::Values(y) => Labels::Values {
                y,
                out: y.len() / s.n.max(1),
            },
            ValidLabels::Classes { index, classes } => Labels::Classes {
                index,
                classes: classes.len(),
            },
        };
        tasks.push(TaskSet { x, n: s.n, labels });
    }
    let rows = tasks
        .iter()
        .map(|t| row_bucket(model.architecture(), t.n))
        .max()
        .unwrap_or(1);
    let classes = sets.iter().map(|s| class_bucket(s.labels.outputs())).max().unwrap_or(1);
    let padded = pad(&tasks, dim, rows, classes, model.manifest.inner_loss, device)?;
    let mut check = || {
        if cancelled() {
            Err(candle_core::Error::Msg(super::error::CANCELLED.into()))
        } else {
            Ok(())
        }
    };
    let a = adapt_padded(
        model.architecture(),
        model.manifest.task,
        &model.theta,
        &model.rule,
        &padded,
        steps,
        &mut check,
    )?;
    (0..sets.len())
        .map(|i| {
            Ok(AdaptedModel {
                params: task_params(&a.params, i)?,
                loss_before: a.loss_before[i],
                loss_after: a.loss_after[i],
            })
        })
        .collect()
}

/// One support set adapted the batched way, alone: what a replay of a
/// session created by the batcher runs.
pub fn adapt_padded_one(served: &ServedModel, s: &ValidSupport, steps: usize, cancel: &Cancel) -> Result<AdaptedModel> {
    let mut out = adapt_batch(served, &[s], steps, &|| cancel.is_cancelled())?;
    Ok(out.remove(0))
}
