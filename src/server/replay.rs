//! Sessions end to end: the store behind metrics and error mapping, the
//! owner check, the model-change policy, and the adapted-model cache that
//! a miss fills by replaying the stored recipe.
//!
//! Replay is exact: the same support set, the same steps and the same model
//! version run the same float operations in the same order, so a replayed
//! session predicts bit for bit what the creating replica predicted.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;

use super::cache::{Adapted, AdaptedCache};
use super::error::AppError;
use super::sessions::{Record, SessionStore, StoreError, StoreLimits};
use super::state::{AppState, ServedModel};
use super::{engine, metrics, validate};

/// What happens to a session whose model's θ and α changed since it was
/// adapted (a new deploy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelChange {
    /// Answer 409 `model_changed`; the client creates a new session.
    Reject,
    /// Replay the support set on the new model and carry on.
    Readapt,
}

/// The session store, this replica's cache, and the policies.
pub struct Sessions {
    pub store: Arc<dyn SessionStore>,
    pub cache: AdaptedCache,
    pub limits: StoreLimits,
    pub on_model_change: ModelChange,
}

fn store_error(e: StoreError) -> AppError {
    match e {
        StoreError::OwnerFull(n) => AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit",
            format!("this API key already holds {n} sessions, the most allowed (--max-sessions-per-key); delete some or let them expire"),
        ),
        e @ StoreError::Backend { .. } => {
            tracing::error!(error = %e, "session store failed");
            AppError::unavailable("session_store_unavailable", "the session store did not answer; retry shortly")
        }
    }
}

fn session_not_found(id: &str) -> AppError {
    AppError::not_found(
        "session_not_found",
        format!(
            "session {id:?} does not exist: it expired, was evicted or deleted, or never existed; \
             create one with POST /v1/models/{{model}}/sessions"
        ),
    )
}

impl Sessions {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, AppError> {
        let start = Instant::now();
        let r = fut.await;
        metrics::store_op(self.backend(), op, r.is_ok(), start.elapsed().as_secs_f64());
        r.map_err(store_error)
    }

    /// Stores a new session and caches its adapted parameters.
    pub async fn insert(&self, rec: &Record, params: Vec<candle_core::Tensor>) -> Result<(), AppError> {
        let removed = self.timed("insert", self.store.insert(rec, self.limits)).await?;
        metrics::sessions_removed(self.backend(), removed);
        self.cache_put(&rec.id, Arc::new(Adapted::new(params)));
        Ok(())
    }

    fn cache_put(&self, id: &str, a: Arc<Adapted>) {
        let evicted = self.cache.insert(id, a);
        let (entries, bytes) = self.cache.usage();
        metrics::cache_usage(entries, bytes, evicted);
    }

    /// The live record `id` if `owner` owns it; 404 otherwise, whoever owns it.
    pub async fn find(&self, owner: &str, id: &str) -> Result<Record, AppError> {
        match self.timed("get", self.store.get(id)).await? {
            Some(rec) if rec.owner == owner => Ok(rec),
            _ => Err(session_not_found(id)),
        }
    }

    pub async fn delete(&self, owner: &str, id: &str) -> Result<(), AppError> {
        let rec = self.find(owner, id).await?;
        let existed = self.timed("remove", self.store.remove(&rec)).await?;
        self.cache.remove(id);
        if existed {
            Ok(())
        } else {
            Err(session_not_found(id))
        }
    }

    /// Drops expired sessions and refreshes the gauges (the periodic sweep).
    pub async fn sweep(&self) {
        if let Ok(removed) = self.timed("purge", self.store.purge_expired()).await {
            metrics::sessions_removed(self.backend(), removed);
        }
        if let Ok(n) = self.timed("count", self.store.count()).await {
            metrics::sessions_live(self.backend(), n);
        }
    }
}

/// The model a session predicts with: 404 when it is no longer served,
/// 409 when its version changed and the policy is to reject.
pub fn served(s: &AppState, rec: &Record) -> Result<Arc<ServedModel>, AppError> {
    let served = s.model(&rec.model)?;
    if rec.model_version != served.model.version && s.sessions.on_model_change == ModelChange::Reject {
        metrics::model_changed(&rec.model);
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "model_changed",
            format!(
                "model {:?} changed since this session was adapted (version {} now, {} then); \
                 create a new session with the same support set",
                rec.model, served.model.version, rec.model_version
            ),
        ));
    }
    Ok(served)
}

/// The adapted parameters of a session on this replica: cached, or
/// replayed from the record (re-adapted if the model changed and the
/// policy allows it; `served` comes from [`served`]).
pub async fn adapted(s: &AppState, rec: &Record, served: &Arc<ServedModel>) -> Result<Arc<Adapted>, AppError> {
    let changed = rec.model_version != served.model.version;
    if let Some(a) = s.sessions.cache.get(&rec.id) {
        metrics::cache_lookup(&rec.model, true);
        return Ok(a);
    }
    metrics::cache_lookup(&rec.model, false);
    let m = &served.model.manifest;
    let unfit = |e: AppError| {
        AppError::new(
            StatusCode::CONFLICT,
            "model_changed",
            format!(
                "this session's support set no longer fits model {:?}: {}",
                rec.model, e.message
            ),
        )
    };
    let valid = validate::support(m, &rec.support, &s.limits).map_err(unfit)?;
    let steps = validate::steps(m, Some(rec.steps as i64)).map_err(unfit)?;
    let sv = served.clone();
    let start = Instant::now();
    let out = s
        .compute(move |dev| engine::adapt_support(&sv, &valid, steps, dev))
        .await?;
    metrics::replay(&rec.model, start.elapsed().as_secs_f64());
    let a = Arc::new(Adapted::new(out.params));
    if changed {
        let mut updated = rec.clone();
        updated.model_version = served.model.version.clone();
        s.sessions.timed("replace", s.sessions.store.replace(&updated)).await?;
        metrics::readapted(&rec.model);
    }
    s.sessions.cache_put(&rec.id, a.clone());
    Ok(a)
}
