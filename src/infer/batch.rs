//! Cross-request batching of adaptations.
//!
//! Admitted adaptation jobs (a stateless predict, a session's creation) of
//! models with numeric inputs wait in one queue. Each batching thread takes
//! the oldest job and every queued job with the same key (model, steps, row
//! and class bucket, see `model::batch`), up to `--max-batch`, waiting up to
//! `--batch-wait-us` for more, then decodes them, adapts them as one padded
//! `[T, N, …]` batch and runs each job's own continuation (its predictions,
//! or its session blob). Batches form from what queued while the threads
//! were busy, so a lone request waits only the window.
//!
//! A job's result does not depend on its company: it is padded to its own
//! bucket alone or batched (`model::batch`), and its session record says so
//! (`Record::padded`), so a replay pads the same way.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::engine::{self, AdaptedModel};
use super::error::{InferError, Result};
use super::input::{self, InputLimits, SupportSet, ValidLabels, ValidSupport};
use super::metrics;
use super::pool::Cancel;
use super::registry::ServedModel;
use crate::model::batch::{class_bucket, row_bucket};

/// Batching settings (`--max-batch`, `--batch-wait-us`, `--batch-threads`).
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Most jobs in one batch; 1 turns batching off.
    pub max_batch: usize,
    /// How long the oldest job waits for company.
    pub wait: Duration,
    /// Threads that run batches.
    pub threads: usize,
    /// Most estimated peak memory of one batch, summed over its jobs
    /// (`--max-activation-mb`): a batch never holds more than that many
    /// bytes of work, whatever `max_batch` allows. Its first job always runs.
    pub max_bytes: u64,
}

/// What a job does with its adapted model, on the batching thread.
pub type After =
    Box<dyn FnOnce(&Arc<ServedModel>, ValidSupport, AdaptedModel, &Cancel) -> Result<Box<dyn Any + Send>> + Send>;

/// One admitted adaptation.
pub struct Job {
    pub served: Arc<ServedModel>,
    pub support: SupportSet,
    pub labels: ValidLabels,
    pub steps: usize,
    /// The job's estimated peak memory (`cost::estimate`).
    pub peak_bytes: u64,
    pub limits: InputLimits,
    pub cancel: Cancel,
    pub after: After,
    pub reply: oneshot::Sender<Result<Box<dyn Any + Send>>>,
}

/// Jobs batch together when their keys are equal.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Key {
    model: String,
    version: String,
    steps: usize,
    rows: usize,
    classes: usize,
}

impl Job {
    fn key(&self) -> Key {
        Key {
            model: self.served.info.name.clone(),
            version: self.served.model.version.clone(),
            steps: self.steps,
            rows: row_bucket(self.support.inputs.len()),
            classes: class_bucket(self.labels.outputs()),
        }
    }
}

/// A queued job with its key, computed once when it is submitted.
struct Queued {
    key: Key,
    job: Job,
}

struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    cfg: BatchConfig,
}

/// The queue and its threads. Dropping it lets the threads finish.
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    pub fn start(cfg: BatchConfig) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            cfg,
        });
        for i in 0..shared.cfg.threads.max(1) {
            let s = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name(format!("metasgd-batch-{i}"))
                .spawn(move || run(s))
                .expect("spawning a batching thread");
        }
        Batcher { shared }
    }

    pub fn enabled(&self) -> bool {
        self.shared.cfg.max_batch > 1
    }

    /// Whether a request of `n` support examples on this model may batch:
    /// numeric inputs, and the whole set in one chunk of `rows`.
    pub fn takes(&self, served: &ServedModel, n: usize, rows: usize) -> bool {
        self.enabled() && served.encoder.is_none() && row_bucket(n) <= rows
    }

    pub fn submit(&self, job: Job) {
        let key = job.key();
        self.shared.queue.lock().push_back(Queued { key, job });
        self.shared.ready.notify_one();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.ready.notify_all();
    }
}

fn run(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let Some(batch) = next_batch(&s) else { continue };
        drop(s);
        // A panic fails this batch's requests (their replies are dropped), not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(batch)));
    }
}

/// The oldest job and the queued jobs of its key, waiting up to the window
/// for more. `None` after an idle second (so a dropped batcher is noticed).
fn next_batch(s: &Shared) -> Option<Vec<Job>> {
    let mut q = s.queue.lock();
    if q.is_empty() && s.ready.wait_for(&mut q, Duration::from_secs(1)).timed_out() {
        return None;
    }
    let Queued { key, job: first } = q.pop_front()?;
    let mut bytes = first.peak_bytes;
    let mut batch = vec![first];
    let deadline = Instant::now() + s.cfg.wait;
    loop {
        let mut i = 0;
        let mut full = false;
        while i < q.len() && batch.len() < s.cfg.max_batch {
            if q[i].key != key {
                i += 1;
            } else if bytes.saturating_add(q[i].job.peak_bytes) > s.cfg.max_bytes {
                full = true;
                break;
            } else {
                bytes += q[i].job.peak_bytes;
                batch.extend(q.remove(i).map(|e| e.job));
            }
        }
        let now = Instant::now();
        if full || batch.len() >= s.cfg.max_batch || now >= deadline {
            break;
        }
        s.ready.wait_for(&mut q, deadline - now);
    }
    if !q.is_empty() {
        s.ready.notify_one();
    }
    Some(batch)
}

/// A job decoded and still wanted.
struct Ready {
    valid: ValidSupport,
    cancel: Cancel,
    after: After,
    reply: oneshot::Sender<Result<Box<dyn Any + Send>>>,
}

fn run_batch(batch: Vec<Job>) {
    let served = batch[0].served.clone();
    let steps = batch[0].steps;
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        let decoded = job.cancel.check().and_then(|_| {
            let m = &job.served.model.manifest;
            input::decode_inputs(m, &job.support.inputs, "support.inputs", &job.limits, &job.cancel)
        });
        match decoded {
            Ok(inputs) => ready.push(Ready {
                valid: ValidSupport {
                    inputs,
                    n: job.support.inputs.len(),
                    labels: job.labels,
                },
                cancel: job.cancel,
                after: job.after,
                reply: job.reply,
            }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    metrics::batch(&served.info.name, ready.len());
    let start = Instant::now();
    let cancels: Vec<Cancel> = ready.iter().map(|r| r.cancel.clone()).collect();
    let all_cancelled = move || cancels.iter().all(Cancel::is_cancelled);
    let sets: Vec<&ValidSupport> = ready.iter().map(|r| &r.valid).collect();
    let adapted = engine::adapt_batch(&served, &sets, steps, &all_cancelled);
    metrics::adaptation(&served.info.name, start.elapsed().as_secs_f64());
    match adapted {
        Err(e) => {
            for r in ready {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
        Ok(models) => {
            let m = &served.model.manifest;
            for (r, a) in ready.into_iter().zip(models) {
                let out = r
                    .cancel
                    .check()
                    .and_then(|_| engine::check_converged(&a, steps, m.default_steps))
                    .and_then(|_| (r.after)(&served, r.valid, a, &r.cancel));
                let _ = r.reply.send(out);
            }
        }
    }
}

/// The error for a batch job whose reply never came (its batch panicked).
pub fn lost() -> InferError {
    InferError::internal("internal_error", "the batch running this request failed")
}
