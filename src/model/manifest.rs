//! The model manifest: what a model folder's `manifest.json` declares.

use serde::{Deserialize, Serialize};

use super::encoder_spec::EncoderSpec;
use super::rule::UpdateRule;
use super::{Architecture, InnerLoss};

fn is_mean(l: &InnerLoss) -> bool {
    *l == InnerLoss::Mean
}

/// Regression (MSE) or classification (cross-entropy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Regression,
    Classification,
}

/// The kind of a model's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Vector,
    Image,
    Text,
}

/// What one input looks like.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub kind: InputKind,
    pub shape: Vec<usize>,
}

/// A model folder's `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name; by default the folder name.
    pub name: String,
    pub task: TaskKind,
    pub input: InputSpec,
    pub architecture: Architecture,
    /// For classification: the most classes one session may use.
    #[serde(default)]
    pub n_way: Option<usize>,
    /// How adaptation steps (`model::rule`); its tensors are in the weights
    /// file, named as `model::rule_names` says.
    #[serde(default)]
    pub update_rule: UpdateRule,
    /// With a value, each adaptation step scales the task's support-loss
    /// gradient to at most this L2 norm (over all parameters) before the
    /// rule uses it; training used the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_grad_clip: Option<f64>,
    /// How the support loss is normalized (`mean` or `per_class`, see
    /// `model::loss::InnerLoss`); training used the same.
    #[serde(default, skip_serializing_if = "is_mean")]
    pub inner_loss: InnerLoss,
    pub default_steps: usize,
    pub max_steps: usize,
    /// The safetensors file holding `theta.*` and `alpha.*`, relative to the folder.
    #[serde(default = "default_weights")]
    pub weights: String,
    /// The task family it was meta-trained on (`train --task`), used by `eval`.
    #[serde(default)]
    pub family: Option<String>,
    /// For text inputs: the frozen encoder that maps a text to the
    /// architecture's input vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderSpec>,
    /// Per-request cost limits (each unset one takes the server's default
    /// for the architecture; see `infer::cost`).
    #[serde(default, skip_serializing_if = "ModelLimits::is_unset")]
    pub limits: ModelLimits,
    /// Free-form notes on how the model was made (method, data, results).
    #[serde(default)]
    pub description: String,
}

/// A manifest's `limits` section: what one request to this model may cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// Most examples in one support set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_support: Option<usize>,
    /// Most inputs in one prediction request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inputs: Option<usize>,
    /// Most estimated compute of one request, in GFLOP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gflop: Option<f64>,
    /// Most estimated peak memory of one request, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
}

impl ModelLimits {
    pub fn is_unset(&self) -> bool {
        *self == ModelLimits::default()
    }
}

fn default_weights() -> String {
    "model.safetensors".to_string()
}

impl Manifest {
    /// Checks the manifest is self-consistent.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.inner_grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("inner_grad_clip must be a positive number, got {c}"));
            }
        }
        self.architecture.validate()?;
        let in_dim: usize = self.input.shape.iter().product();
        if in_dim != self.architecture.input_dim() {
            return Err(format!(
                "input shape {:?} has {} values but the architecture takes {}",
                self.input.shape,
                in_dim,
                self.architecture.input_dim()
            ));
        }
        match (self.input.kind, &self.architecture) {
            (InputKind::Vector, Architecture::Mlp { .. } | Architecture::Features { .. }) => {}
            (InputKind::Text, Architecture::Features { .. }) if self.input.shape == [self.architecture.input_dim()] => {}
            (InputKind::Image, Architecture::Conv4 { channels: 1, side, .. })
                if self.input.shape == [1, *side, *side] => {}
            (kind, arch) => {
                return Err(format!(
                    "input kind {kind:?} with shape {:?} does not fit the architecture {arch:?} \
                     (vector inputs need an mlp or features; text inputs need features with shape [dim + lexical]; image inputs need a conv4 with 1 channel and shape [1, side, side])",
                    self.input.shape
                ))
            }
        }
        match (self.input.kind, &self.encoder) {
            (InputKind::Text, None) => return Err("text inputs need an `encoder`".into()),
            (InputKind::Text, Some(e)) if e.width() != self.architecture.input_dim() => {
                return Err(format!(
                    "the encoder gives {} values but the architecture takes {}",
                    e.width(),
                    self.architecture.input_dim()
                ))
            }
            (InputKind::Text, Some(e)) if e.lexical != self.architecture.lexical() => {
                return Err(format!(
                    "the encoder appends {} token buckets but the architecture reads {}",
                    e.lexical,
                    self.architecture.lexical()
                ))
            }
            (InputKind::Text, Some(_)) => {}
            (_, Some(_)) => return Err("only text inputs have an `encoder`".into()),
            (_, None) => {}
        }
        match (self.task, self.n_way) {
            (TaskKind::Classification, None) => return Err("classification needs n_way".into()),
            (TaskKind::Classification, Some(n)) if n < 2 || n > self.architecture.output_dim() => {
                return Err(format!(
                    "n_way {n} must be between 2 and the number of outputs {}",
                    self.architecture.output_dim()
                ))
            }
            (TaskKind::Regression, Some(_)) => return Err("regression models have no n_way".into()),
            (TaskKind::Regression, None) if self.architecture.output_dim() != 1 => {
                return Err("regression models have exactly one output".into())
            }
            _ => {}
        }
        let l = &self.limits;
        if l.max_support == Some(0)
            || l.max_inputs == Some(0)
            || l.max_memory_mb == Some(0)
            || l.max_gflop.is_some_and(|g| !(g.is_finite() && g > 0.0))
        {
            return Err(format!("limits must be positive, got {l:?}"));
        }
        if self.max_steps == 0 || self.default_steps == 0 || self.default_steps > self.max_steps {
            return Err(format!(
                "need 1 <= default_steps ({}) <= max_steps ({})",
                self.default_steps, self.max_steps
            ));
        }
        Ok(())
    }
}
