//! `metasgd train`'s settings: what is learned and every flag of a run,
//! saved as the model's `train_config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::run::RunArgs;
use super::Order;
use crate::model::rule::UpdateRule;
use crate::model::InnerLoss;

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
    /// With a value, each iteration's class count is drawn uniformly from
    /// `n_way..=n_way_max` (one N for the whole meta-batch); validation
    /// uses `n_way`.
    #[arg(long)]
    #[serde(default)]
    pub n_way_max: Option<usize>,
    /// How the support loss is normalized (saved as the manifest's
    /// `inner_loss`, so serving does the same).
    #[arg(long, value_enum, default_value = "mean")]
    #[serde(default)]
    pub inner_loss: InnerLoss,
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
    /// For feature-vector models: the `--hidden` layers are linear (no ReLU)
    /// and start at the identity, so the run starts from the model without a
    /// body; each hidden size must equal the input's.
    #[arg(long)]
    #[serde(default)]
    pub linear_body: bool,
    /// For feature-vector models with `--center`: each task's center starts
    /// at θ's (which starts at zero) plus its support set's mean input.
    #[arg(long)]
    #[serde(default)]
    pub task_center: bool,
    /// Start each task's head at its class prototypes (`model::proto`,
    /// Proto-MAML's start) with the shared head row, the prototypes'
    /// per-dimension metric, starting at this constant (it replaces the row
    /// `--init` loads). Conv4 and feature-vector models.
    #[arg(long)]
    #[serde(default)]
    pub proto_start: Option<f64>,
    /// For conv4 models: the head sees a shift ensemble of each image, the
    /// mean feature of its translations by up to this many pixels
    /// (`model::conv::features`; (2r+1)² body passes an image). 0: none.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub shift_radius: usize,
    /// For text models: append this many token buckets to each embedding
    /// (`encoder::lexical`), with one head weight per bucket. 0: none.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub lexical: usize,
    /// Meta-SGD: the constant α of the head's token-bucket weights (with
    /// `--lexical`; default: as the rest of the head's).
    #[arg(long)]
    #[serde(default)]
    pub alpha_lexical: Option<f64>,
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
    /// α of the hidden layers (`l1.*`, ...) starts at this constant instead.
    #[arg(long)]
    #[serde(default)]
    pub alpha_body: Option<f64>,
    /// The factor on `--meta-lr` for the hidden layers' θ and α: a
    /// 384 × 384 body moved at the head's rate leaves the identity within a
    /// few hundred iterations.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub body_lr: f64,
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
