//! The API's request and response bodies, exactly as `openapi.yaml` describes them.
//!
//! Inputs arrive as raw JSON ([`RawInputs`]): the body is only scanned on
//! the async runtime, and each input is parsed on the compute pool after
//! the request has been priced and admitted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::infer::input::{RawInputs, SupportSet};
pub use crate::infer::registry::ModelInfo;

#[derive(Serialize)]
pub struct Status {
    pub status: &'static str,
}

#[derive(Serialize)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub support: SupportSet,
    #[serde(default)]
    pub steps: Option<i64>,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

#[derive(Serialize)]
pub struct SessionCreated {
    pub session_id: String,
    pub model: String,
    pub steps: usize,
    pub support_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<Value>>,
    pub loss_before: f32,
    pub loss_after: f32,
    pub expires_at: String,
}

#[derive(Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub model: String,
    /// The model version the session was adapted with.
    pub model_version: String,
    pub steps: usize,
    pub support_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<Value>>,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub inputs: RawInputs,
}

/// `GET /v1/sessions/{id}/predict?inputs=<JSON array>`.
#[derive(Deserialize)]
pub struct PredictQuery {
    pub inputs: String,
}

#[derive(Serialize)]
pub struct SessionPredictions {
    pub session_id: String,
    pub predictions: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<Vec<f32>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatelessPredict {
    pub support: SupportSet,
    #[serde(default)]
    pub steps: Option<i64>,
    pub inputs: RawInputs,
}

#[derive(Serialize)]
pub struct Predictions {
    pub predictions: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<Vec<f32>>>,
}
