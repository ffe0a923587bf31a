//! Sessions end to end: the store behind metrics and typed errors, the
//! owner check, the model-change policy, and the adapted-model cache that a
//! miss fills by replaying the stored recipe (once per session at a time on
//! this replica: concurrent misses wait for the same replay).
//!
//! Replay is exact: the same decoded support set, steps, chunk rows and
//! model version run the same float operations in the same order, so a
//! replayed session predicts bit for bit what the creating replica
//! predicted. It goes through the same engine and the same divergence
//! check as creation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::blob::SupportBlob;
use super::cache::{Adapted, AdaptedCache};
use super::store::{Record, SessionStore, StoreError, StoreLimits};
use crate::infer::cost::{self, Counts};
use crate::infer::error::{InferError, Kind, Result};
use crate::infer::pool::Pool;
use crate::infer::registry::{Registry, ServedModel};
use crate::infer::{engine, input, metrics};

/// What happens to a session whose model's θ and α changed since it was
/// adapted (a new deploy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelChange {
    /// Answer `model_changed`; the client creates a new session.
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
    replaying: Mutex<HashMap<String, Arc<OnceCell<Arc<Adapted>>>>>,
    replays: AtomicU64,
}

fn store_error(e: StoreError) -> InferError {
    match e {
        StoreError::OwnerFull(n) => session_limit(n),
        StoreError::TooLarge { bytes, limit } => InferError::too_large(
            "session_too_large",
            format!("this session takes {bytes} bytes, more than the whole session store holds ({limit} bytes, --max-sessions-mb)"),
        ),
        e @ StoreError::Backend { .. } => {
            tracing::error!(error = %e, "session store failed");
            InferError::unavailable("session_store_unavailable", "the session store did not answer; retry shortly")
        }
    }
}

fn session_limit(n: usize) -> InferError {
    InferError::overloaded(
        "session_limit",
        format!("this API key already holds {n} sessions, the most allowed (--max-sessions-per-key); delete some or let them expire"),
    )
}

fn session_not_found(id: &str) -> InferError {
    InferError::not_found(
        "session_not_found",
        format!(
            "session {id:?} does not exist: it expired, was evicted or deleted, or never existed; \
             create one with POST /v1/models/{{model}}/sessions"
        ),
    )
}

fn model_changed(message: String) -> InferError {
    InferError::new(Kind::Conflict, "model_changed", message)
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        cache: AdaptedCache,
        limits: StoreLimits,
        on_model_change: ModelChange,
    ) -> Self {
        Self {
            store,
            cache,
            limits,
            on_model_change,
            replaying: Mutex::new(HashMap::new()),
            replays: AtomicU64::new(0),
        }
    }

    fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Replays this replica has run (each session's concurrent misses share one).
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T> {
        let start = Instant::now();
        let r = fut.await;
        metrics::store_op(self.backend(), op, r.is_ok(), start.elapsed().as_secs_f64());
        r.map_err(store_error)
    }

    /// Refuses, before any adaptation, an owner already at its session limit.
    pub async fn check_room(&self, owner: &str) -> Result<()> {
        if self.limits.max_per_owner == usize::MAX {
            return Ok(());
        }
        let mut n = self.timed("owned", self.store.owned(owner)).await?;
        if n >= self.limits.max_per_owner {
            self.sweep().await;
            n = self.timed("owned", self.store.owned(owner)).await?;
        }
        if n >= self.limits.max_per_owner {
            return Err(session_limit(n));
        }
        Ok(())
    }

    /// Stores a new session and caches its adapted parameters.
    pub async fn insert(&self, rec: &Record, support: &[u8], params: Vec<candle_core::Tensor>) -> Result<()> {
        let removed = self
            .timed("insert", self.store.insert(rec, support, self.limits))
            .await?;
        metrics::sessions_removed(self.backend(), removed.evicted, removed.expired);
        self.cache_put(&rec.id, Arc::new(Adapted::new(params)));
        Ok(())
    }

    fn cache_put(&self, id: &str, a: Arc<Adapted>) {
        let evicted = self.cache.insert(id, a);
        let (entries, bytes) = self.cache.usage();
        metrics::cache_usage(entries, bytes, evicted);
    }

    /// The live record `id` if `owner` owns it; not found otherwise, whoever owns it.
    pub async fn find(&self, owner: &str, id: &str) -> Result<Record> {
        match self.timed("get", self.store.get(id)).await? {
            Some(rec) if rec.owner == owner => Ok(rec),
            _ => Err(session_not_found(id)),
        }
    }

    pub async fn delete(&self, owner: &str, id: &str) -> Result<()> {
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
            metrics::sessions_removed(self.backend(), removed.evicted, removed.expired);
        }
        if let (Ok(n), Ok(b)) = (
            self.timed("count", self.store.count()).await,
            self.timed("bytes", self.store.bytes()).await,
        ) {
            metrics::sessions_live(self.backend(), n, b);
        }
    }

    /// The model a session predicts with: not found when it is no longer
    /// served, `model_changed` when its version changed and the policy is to reject.
    pub fn served(&self, registry: &Registry, rec: &Record) -> Result<Arc<ServedModel>> {
        let served = registry.get(&rec.model)?;
        if rec.model_version != served.model.version && self.on_model_change == ModelChange::Reject {
            metrics::model_changed(&rec.model);
            return Err(model_changed(format!(
                "model {:?} changed since this session was adapted (version {} now, {} then); \
                 create a new session with the same support set",
                rec.model, served.model.version, rec.model_version
            )));
        }
        Ok(served)
    }

    /// The adapted parameters of a session on this replica: cached, or
    /// replayed from the store (re-adapted if the model changed and the
    /// policy allows it; `served` comes from [`Sessions::served`]).
    pub async fn adapted(&self, pool: &Pool, rec: &Record, served: &Arc<ServedModel>) -> Result<Arc<Adapted>> {
        if let Some(a) = self.cache.get(&rec.id) {
            metrics::cache_lookup(&rec.model, true);
            return Ok(a);
        }
        metrics::cache_lookup(&rec.model, false);
        let cell = self.replaying.lock().entry(rec.id.clone()).or_default().clone();
        let r = cell.get_or_try_init(|| self.replay(pool, rec, served)).await.cloned();
        let mut m = self.replaying.lock();
        if m.get(&rec.id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(&rec.id);
        }
        r
    }

    async fn replay(&self, pool: &Pool, rec: &Record, served: &Arc<ServedModel>) -> Result<Arc<Adapted>> {
        // Another request may have replayed it while this one waited.
        if let Some(a) = self.cache.get(&rec.id) {
            return Ok(a);
        }
        let changed = rec.model_version != served.model.version;
        let blob = self
            .timed("support", self.store.support(&rec.id))
            .await?
            .ok_or_else(|| session_not_found(&rec.id))?;
        let unfit = move |e: InferError| match e.kind {
            Kind::Invalid | Kind::TooLarge => model_changed(format!(
                "this session's support set no longer fits its model: {}",
                e.message
            )),
            _ => e,
        };
        // Priced as at creation: a changed model's limits may refuse it.
        let m = &served.model.manifest;
        let counts = Counts {
            support: rec.support_size,
            classes: rec.classes.as_ref().map_or(1, Vec::len),
            steps: rec.steps,
            ..Counts::default()
        };
        let estimate = cost::estimate(m, &counts, rec.rows);
        cost::admit(&rec.model, &served.limits, &counts, &estimate).map_err(unfit)?;
        let (sv, r) = (served.clone(), rec.clone());
        let start = Instant::now();
        let out = pool
            .run_on(&rec.owner, estimate.peak_bytes, served.pinned(), move |cancel| {
                let m = &sv.model.manifest;
                let valid = SupportBlob::decode(&blob, r.classes.as_deref())
                    .map_err(|e| InferError::invalid("unreadable_session", e))?;
                input::fits(m, &valid, r.steps)?;
                let a = if r.padded {
                    engine::adapt_padded_one(&sv, &valid, r.steps, cancel)?
                } else {
                    engine::adapt_support(&sv, &valid, r.steps, r.rows, cancel)?
                };
                engine::check_converged(&a, r.steps, m.default_steps)?;
                Ok(a)
            })
            .await
            .map_err(unfit)?;
        metrics::replay(&rec.model, start.elapsed().as_secs_f64());
        self.replays.fetch_add(1, Ordering::Relaxed);
        let a = Arc::new(Adapted::new(out.params));
        if changed {
            let mut updated = rec.clone();
            updated.model_version = served.model.version.clone();
            self.timed("replace", self.store.replace(&updated)).await?;
            metrics::readapted(&rec.model);
        }
        self.cache_put(&rec.id, a.clone());
        Ok(a)
    }
}
