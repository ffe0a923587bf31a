//! The registry of served models: each model folder loaded with its
//! encoder, its effective cost limits and its public description.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use serde::Serialize;

use super::cost::{self, CostLimits, ServerCaps};
use super::error::{InferError, Result};
use crate::encoder::{Encoder, EncoderOptions};
use crate::model::rule::UpdateRule;
use crate::model::{load_model, InputSpec, LoadedModel, TaskKind};

/// What `GET /v1/models` says of a model.
#[derive(Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub task: TaskKind,
    pub input: InputSpec,
    pub n_way: Option<usize>,
    /// How adaptation steps (`metasgd`, `per_step`, `momentum`, `lstm`).
    pub update_rule: UpdateRule,
    /// `per_step`: the steps trained with rates of their own; a later step
    /// uses the last trained step's rates. Null for the other rules.
    pub trained_steps: Option<usize>,
    /// The per-task gradient-norm bound of each step, if the model has one.
    pub inner_grad_clip: Option<f64>,
    /// How the support loss is normalized: `mean` over rows, or
    /// `per_class` (the mean times the class count).
    pub inner_loss: crate::model::InnerLoss,
    pub default_steps: usize,
    pub max_steps: usize,
    pub num_params: usize,
    pub version: String,
    /// What one request to this model may cost.
    pub limits: CostLimits,
    /// Where it computes: `cpu` or `cuda`.
    pub device: String,
}

/// A model as served: its weights, its encoder (text models), its limits and its public description.
pub struct ServedModel {
    pub model: LoadedModel,
    pub encoder: Option<Arc<Encoder>>,
    pub limits: CostLimits,
    /// Where its tensors live (see `device::for_model`).
    pub device: Device,
    pub info: ModelInfo,
}

impl ServedModel {
    /// Whether its compute requests hold a pool worker (`Pool::run_on`):
    /// all but those of a text model whose encoder shares its calls across
    /// requests (their cost is the encoder, bounded by its own lanes).
    pub fn pinned(&self) -> bool {
        self.encoder.as_ref().is_none_or(|e| !e.shares_calls())
    }
}

/// The served models by name.
pub struct Registry(BTreeMap<String, Arc<ServedModel>>);

impl Registry {
    /// Loads every model folder under `dir` (see [`load_models`]).
    /// `device` is the `--device` value; each model's device follows
    /// `device::for_model`.
    pub fn load(dir: &Path, device: &str, encoder: &EncoderOptions, caps: &ServerCaps) -> anyhow::Result<Self> {
        load_models(dir, device, encoder, caps).map(Registry)
    }

    pub fn get(&self, name: &str) -> Result<Arc<ServedModel>> {
        self.0.get(name).cloned().ok_or_else(|| {
            InferError::not_found(
                "model_not_found",
                format!(
                    "no model named {name:?}; GET /v1/models lists the {} available",
                    self.0.len()
                ),
            )
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<ServedModel>)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Loads every model folder under `dir`, with the encoders of text models
/// (fetched into the cache when their manifest pins a wheel). Any folder
/// that is not a valid model is an error that names the offending file.
pub fn load_models(
    dir: &Path,
    device: &str,
    encoder: &EncoderOptions,
    caps: &ServerCaps,
) -> anyhow::Result<BTreeMap<String, Arc<ServedModel>>> {
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .map(|n| n.to_string_lossy().starts_with('.'))
                    .unwrap_or(true)
        })
        .collect();
    dirs.sort();
    let mut models = BTreeMap::new();
    for d in dirs {
        let mut model = load_model(&d, &Device::Cpu)?;
        let dev = crate::device::for_model(device, cost::forward_flops(&model.manifest.architecture))?;
        if !dev.is_cpu() {
            let to = |ts: &[candle_core::Tensor]| -> candle_core::Result<Vec<_>> {
                ts.iter().map(|t| t.to_device(&dev)).collect()
            };
            model.theta = to(&model.theta)?;
            model.rule = model.rule.map_all(&|t| t.to_device(&dev))?;
        }
        let m = &model.manifest;
        let enc = match &m.encoder {
            Some(spec) => Some(Arc::new(Encoder::load(spec, &d, encoder).with_context(|| {
                format!("{}: loading the encoder", d.join("manifest.json").display())
            })?)),
            None => None,
        };
        let limits = cost::limits(m, caps);
        let info = ModelInfo {
            name: m.name.clone(),
            task: m.task,
            input: m.input.clone(),
            n_way: m.n_way,
            update_rule: m.update_rule,
            trained_steps: model.rule.trained_steps(),
            inner_grad_clip: m.inner_grad_clip,
            inner_loss: m.inner_loss,
            default_steps: m.default_steps,
            max_steps: m.max_steps,
            num_params: m.architecture.num_params(),
            version: model.version.clone(),
            limits,
            device: crate::device::name(&dev),
        };
        let name = m.name.clone();
        if models
            .insert(
                name.clone(),
                Arc::new(ServedModel {
                    model,
                    encoder: enc,
                    limits,
                    device: dev,
                    info,
                }),
            )
            .is_some()
        {
            anyhow::bail!(
                "{}: model name {name:?} is used by two folders",
                d.join("manifest.json").display()
            );
        }
    }
    anyhow::ensure!(!models.is_empty(), "no model folders found in {}", dir.display());
    Ok(models)
}
