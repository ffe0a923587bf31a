//! The compute pool: admission (a bounded number of compute requests in
//! flight, in all and per API key), a fixed number of workers on the
//! blocking pool, the per-request deadline, and cancellation.
//!
//! Every compute request gets a [`Cancel`]. Its work checks it between
//! adaptation steps, chunks and decoded inputs. The flag is raised when the
//! deadline passes or when the request's future is dropped (its client
//! disconnected), so abandoned work stops at the next check and frees its
//! worker and its memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{InferError, Result, CANCELLED};
use super::metrics;

/// Raised when a request's work should stop.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn raise(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    /// `Err(cancelled)` once raised.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(InferError::cancelled())
        } else {
            Ok(())
        }
    }
    /// The same check as a candle error, for tensor loops (see `model::adapt`).
    pub fn check_tensor(&self) -> candle_core::Result<()> {
        if self.is_cancelled() {
            Err(candle_core::Error::Msg(CANCELLED.into()))
        } else {
            Ok(())
        }
    }
}

/// Raises the flag when the request's future goes away before its work
/// finished (a timeout or a disconnect), and counts it.
struct CancelOnDrop {
    cancel: Cancel,
    finished: bool,
    timed_out: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.raise();
            metrics::cancelled(if self.timed_out { "timeout" } else { "disconnect" });
        }
    }
}

/// Compute requests in flight per owner (API key id).
#[derive(Default)]
struct PerOwner(Mutex<HashMap<String, usize>>);

struct OwnerSlot<'a> {
    table: &'a PerOwner,
    owner: String,
}

impl Drop for OwnerSlot<'_> {
    fn drop(&mut self) {
        let mut t = self.table.0.lock();
        if let Some(n) = t.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.owner);
            }
        }
    }
}

pub struct Pool {
    admission: Arc<Semaphore>,
    max_in_flight: usize,
    workers: Arc<Semaphore>,
    per_owner: PerOwner,
    max_per_owner: usize,
    timeout: Duration,
}

impl Pool {
    /// `max_in_flight` compute requests admitted (running or queued), at
    /// most `max_per_owner` of them for one key (none for the empty owner,
    /// auth off), `workers` running at once, each within `timeout`.
    pub fn new(max_in_flight: usize, max_per_owner: usize, workers: usize, timeout: Duration) -> Self {
        Self {
            admission: Arc::new(Semaphore::new(max_in_flight.max(1))),
            max_in_flight: max_in_flight.max(1),
            workers: Arc::new(Semaphore::new(workers.max(1))),
            per_owner: PerOwner::default(),
            max_per_owner: max_per_owner.max(1),
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Compute requests admitted now (running or queued).
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.admission.available_permits()
    }

    fn admit(&self, owner: &str) -> Result<(OwnedSemaphorePermit, Option<OwnerSlot<'_>>)> {
        let slot = if owner.is_empty() {
            None
        } else {
            let mut t = self.per_owner.0.lock();
            let n = t.entry(owner.to_owned()).or_default();
            if *n >= self.max_per_owner {
                metrics::overloaded("key");
                return Err(InferError::overloaded(
                    "key_overloaded",
                    format!(
                        "this API key already has {} compute requests in flight, the most one key may have \
                         (--max-in-flight-per-key {}); retry after the time in Retry-After",
                        *n, self.max_per_owner
                    ),
                ));
            }
            *n += 1;
            Some(OwnerSlot {
                table: &self.per_owner,
                owner: owner.to_owned(),
            })
        };
        let permit = self.admission.clone().try_acquire_owned().map_err(|_| {
            metrics::overloaded("server");
            InferError::overloaded(
                "overloaded",
                format!(
                    "{} compute requests are in flight, the most this server admits (--max-concurrency); \
                     retry after the time in Retry-After",
                    self.max_in_flight
                ),
            )
        })?;
        Ok((permit, slot))
    }

    /// Runs `f` on a worker of the blocking pool, for `owner`, within the
    /// deadline. A full queue answers at once; `f` gets the request's
    /// [`Cancel`] and must check it between units of work. `peak_bytes` is
    /// the request's estimated peak memory: after a large one the worker
    /// returns the freed pages to the OS.
    pub async fn run<T, F>(&self, owner: &str, peak_bytes: u64, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
    {
        self.run_on(owner, peak_bytes, true, f).await
    }

    /// [`Pool::run`], on a worker when `pinned`; unpinned work takes none:
    /// for work that is mostly a wait on a resource bounded by its own lanes
    /// (a text encoder that shares its calls across requests,
    /// `encoder::shared`, can only share among requests waiting on it at
    /// once). Admission, the deadline and cancellation are the same.
    pub async fn run_on<T, F>(&self, owner: &str, peak_bytes: u64, pinned: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
    {
        let workers = self.workers.clone();
        self.admitted(owner, move |cancel| async move {
            let permit = match pinned {
                true => Some(
                    workers
                        .acquire_owned()
                        .await
                        .map_err(|e| InferError::internal("internal_error", e))?,
                ),
                false => None,
            };
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                cancel.check()?;
                let out = f(&cancel);
                if peak_bytes >= crate::alloc::RELEASE_AFTER_BYTES {
                    crate::alloc::release_free_memory();
                }
                out
            });
            job.await.map_err(|e| InferError::internal("internal_error", e))?
        })
        .await
    }

    /// Admits a request for `owner` and awaits the work `start` begins (for
    /// example a job handed to the batcher), within the deadline, raising
    /// the request's [`Cancel`] if it times out or is dropped.
    pub async fn admitted<T, S, Fut>(&self, owner: &str, start: S) -> Result<T>
    where
        S: FnOnce(Cancel) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (_admitted, _slot) = self.admit(owner)?;
        let _in_flight = metrics::InFlight::start();
        let mut guard = CancelOnDrop {
            cancel: Cancel::default(),
            finished: false,
            timed_out: false,
        };
        let work = start(guard.cancel.clone());
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => {
                guard.finished = true;
                r
            }
            Err(_) => {
                guard.timed_out = true;
                Err(InferError::unavailable(
                    "timeout",
                    format!(
                        "the request took longer than {} s (--request-timeout); its work was stopped",
                        self.timeout.as_secs_f64()
                    ),
                ))
            }
        }
    }
}
