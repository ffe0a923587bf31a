//! A batch job: an admitted adaptation (and what follows it) or a
//! session's prediction, with the request's limits, cancel flag and reply.

use std::any::Any;
use std::sync::Arc;

use candle_core::Tensor;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::infer::engine::AdaptedModel;
use crate::infer::error::Result;
use crate::infer::input::{InputLimits, RawInputs, SupportSet, ValidLabels, ValidSupport};
use crate::infer::pool::Cancel;
use crate::infer::registry::ServedModel;

/// What a job does with its adapted model, on the batching thread.
pub type After =
    Box<dyn FnOnce(&Arc<ServedModel>, ValidSupport, AdaptedModel, &Cancel) -> Result<Box<dyn Any + Send>> + Send>;

/// Where a job's answer goes: its continuation's value, boxed.
pub type Reply = oneshot::Sender<Result<Box<dyn Any + Send>>>;

/// One admitted job.
pub struct Job {
    pub served: Arc<ServedModel>,
    /// The request's rows per chunk (`cost::chunk_rows`).
    pub rows: usize,
    /// The job's estimated peak memory (`cost::estimate`).
    pub peak_bytes: u64,
    pub limits: InputLimits,
    pub cancel: Cancel,
    pub work: Work,
    pub reply: Reply,
}

pub enum Work {
    /// Adapt on a support set, then go on with `then`.
    Adapt {
        support: SupportSet,
        labels: ValidLabels,
        steps: usize,
        then: Then,
    },
    /// Predict with a session's adapted parameters (each `[1, …]`); the
    /// reply is a `Predicted`.
    Predict {
        params: Vec<Tensor>,
        queries: RawInputs,
        classes: Option<Vec<Value>>,
    },
}

/// What an adaptation job does next.
pub enum Then {
    /// Predict these inputs (a stateless request), batched with the batch's
    /// other predictions; the reply is a `Predicted`.
    Predict(RawInputs),
    /// Anything else, run on the batching thread after the adaptation.
    After(After),
}
