//! The core between validation and tensors: adapt a model on a validated
//! support set, and predict with adapted parameters. Blocking; the routes
//! run it on the compute pool.

use std::borrow::Cow;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use serde_json::Value;

use super::state::ServedModel;
use super::validate::{Inputs, ValidLabels, ValidSupport};
use crate::metasgd::{adapt, Support};
use crate::model::{LoadedModel, Target, TaskKind};

/// An adapted model for one task: parameters with a leading task dim of 1.
pub struct AdaptedModel {
    pub params: Vec<Tensor>,
    pub loss_before: f32,
    pub loss_after: f32,
}

fn input_tensor(model: &LoadedModel, flat: &[f32], n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let dim = model.architecture().input_dim();
    Tensor::from_slice(flat, (1, n, dim), device)
}

/// The architecture's input vectors: numbers as they are, texts through
/// the model's encoder (in batches).
pub fn features<'a>(served: &ServedModel, inputs: &'a Inputs) -> candle_core::Result<Cow<'a, [f32]>> {
    match inputs {
        Inputs::Values(v) => Ok(Cow::Borrowed(v)),
        Inputs::Texts(texts) => {
            let enc = served
                .encoder
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg(format!("model {} has no encoder", served.info.name)))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let start = Instant::now();
            let v = enc
                .embed(&refs)
                .map_err(|e| candle_core::Error::Msg(format!("encoder: {e:#}")))?;
            super::metrics::encoded(&served.info.name, texts.len(), start.elapsed().as_secs_f64());
            Ok(Cow::Owned(v))
        }
    }
}

/// Runs `steps` adaptation steps on the support set.
pub fn adapt_support(
    served: &ServedModel,
    s: &ValidSupport,
    steps: usize,
    device: &Device,
) -> candle_core::Result<AdaptedModel> {
    let model = &served.model;
    let x = input_tensor(model, &features(served, &s.inputs)?, s.n, device)?;
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
    let a = adapt(
        model.architecture(),
        model.manifest.task,
        &model.theta,
        &model.alpha,
        &Support { x, target },
        steps,
    )?;
    Ok(AdaptedModel {
        params: a.params,
        loss_before: a.loss_before[0],
        loss_after: a.loss_after[0],
    })
}

/// Per input: the prediction, and for classification the class probabilities.
pub type Predicted = (Vec<Value>, Option<Vec<Vec<f32>>>);

/// Predictions (and class probabilities for classification) for `n` inputs.
pub fn predict(
    served: &ServedModel,
    params: &[Tensor],
    classes: Option<&[Value]>,
    inputs: &Inputs,
    n: usize,
    device: &Device,
) -> candle_core::Result<Predicted> {
    let model = &served.model;
    let flat = features(served, inputs)?;
    let out = model
        .architecture()
        .forward(params, &input_tensor(model, &flat, n, device)?)?
        .squeeze(0)?;
    match (model.manifest.task, classes) {
        (TaskKind::Classification, Some(classes)) => {
            let logits = out.narrow(D::Minus1, 0, classes.len())?;
            let m = logits.max_keepdim(D::Minus1)?;
            let e = logits.broadcast_sub(&m)?.exp()?;
            let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_vec2::<f32>()?;
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
            Ok((v.into_iter().map(|y| serde_json::json!(y)).collect(), None))
        }
    }
}
