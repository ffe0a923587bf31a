//! Cross-request batching: the queue, its keys and its threads.
//!
//! Admitted jobs of models with numeric inputs wait in one queue: an
//! adaptation (a stateless predict, a session's creation) or a session's
//! prediction. Each batching thread takes the oldest job and every queued
//! job with the same key, up to `--max-batch` and `--max-activation-mb`,
//! waiting up to `--batch-wait-us` for more, and runs them as one batch
//! ([`run`]). Batches form from what queued while the threads were busy,
//! so a lone request waits only the window.
//!
//! A job's result does not depend on its company: it is padded to its own
//! bucket alone or batched (`model::batch`), and its session record says so
//! (`Record::padded`), so a replay pads the same way.

mod job;
mod run;

pub use job::{After, Job, Reply, Then, Work};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::error::InferError;
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
    /// Batch every numeric-input model, not only those that gain from it
    /// (see [`Batcher::takes`]).
    pub all_models: bool,
    /// Most estimated peak memory of one batch, summed over its jobs
    /// (`--max-activation-mb`): a batch never holds more than that many
    /// bytes of work, whatever `max_batch` allows. Its first job always runs.
    pub max_bytes: u64,
}

/// Jobs batch together when their keys are equal.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Key {
    model: String,
    version: String,
    shape: Shape,
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Shape {
    /// Steps, and the support set's row and class buckets.
    Adapt { steps: usize, rows: usize, classes: usize },
    /// The queries' row bucket, and the parameters' shapes, which must stack.
    Predict { rows: usize, params: Vec<usize> },
}

impl Key {
    fn of(job: &Job) -> Key {
        let arch = job.served.model.architecture();
        let shape = match &job.work {
            Work::Adapt {
                support, labels, steps, ..
            } => Shape::Adapt {
                steps: *steps,
                rows: row_bucket(arch, support.inputs.len()),
                classes: class_bucket(labels.outputs()),
            },
            Work::Predict { params, queries, .. } => Shape::Predict {
                rows: row_bucket(arch, queries.len()),
                params: params
                    .iter()
                    .flat_map(|p| p.dims().iter().copied().chain([0]))
                    .collect(),
            },
        };
        Key {
            model: job.served.info.name.clone(),
            version: job.served.model.version.clone(),
            shape,
        }
    }
}

/// A queued job with its key, computed once when it is submitted.
struct Queued {
    key: Key,
    job: Job,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    cfg: BatchConfig,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Batching threads between batches, free to take one.
    idle: usize,
}

/// The queue and its threads. Dropping it lets the threads finish.
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    pub fn start(cfg: BatchConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            cfg,
        });
        for i in 0..shared.cfg.threads.max(1) {
            let s = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name(format!("metasgd-batch-{i}"))
                .spawn(move || serve_batches(s))
                .expect("spawning a batching thread");
        }
        Batcher { shared }
    }

    pub fn enabled(&self) -> bool {
        self.shared.cfg.max_batch > 1
    }

    /// Whether a request of `n` support examples (or queries, for a
    /// session's prediction) on this model may batch: numeric inputs, the
    /// whole set in one chunk of `rows`, and a model that gains from it.
    /// On the CPU only small models gain (below
    /// `device::GPU_MIN_FLOPS_PER_EXAMPLE` a forward, as for `--device
    /// auto`): their cost is per-op overhead, which a batch shares. A conv4
    /// request is compute: batched, Omniglot 5-way 1-shot at concurrency 16
    /// ran at the unbatched rate with twice its p99 (docs/benchmarks.md).
    pub fn takes(&self, served: &ServedModel, n: usize, rows: usize) -> bool {
        let arch = served.model.architecture();
        let gains = self.shared.cfg.all_models
            || !served.device.is_cpu()
            || super::cost::forward_flops(arch) < crate::device::GPU_MIN_FLOPS_PER_EXAMPLE;
        self.enabled() && gains && served.encoder.is_none() && row_bucket(arch, n) <= rows
    }

    pub fn submit(&self, job: Job) {
        let key = Key::of(&job);
        self.shared.state.lock().queue.push_back(Queued { key, job });
        self.shared.ready.notify_one();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.ready.notify_all();
    }
}

fn serve_batches(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let Some(batch) = next_batch(&s) else { continue };
        drop(s);
        // A panic fails this batch's requests (their replies are dropped), not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run::run_batch(batch)));
    }
}

/// The oldest job and the queued jobs of its key, waiting up to the window
/// for more. `None` after an idle second (so a dropped batcher is noticed).
fn next_batch(s: &Shared) -> Option<Vec<Job>> {
    let mut st = s.state.lock();
    st.idle += 1;
    let taken = take_batch(s, &mut st);
    st.idle -= 1;
    if !st.queue.is_empty() {
        s.ready.notify_one();
    }
    taken
}

fn take_batch(s: &Shared, st: &mut parking_lot::MutexGuard<'_, State>) -> Option<Vec<Job>> {
    if st.queue.is_empty() && s.ready.wait_for(st, Duration::from_secs(1)).timed_out() {
        return None;
    }
    let Queued { key, job: first } = st.queue.pop_front()?;
    let mut bytes = first.peak_bytes;
    let mut batch = vec![first];
    let deadline = Instant::now() + s.cfg.wait;
    loop {
        // At most a fair share of the work among the threads free to take
        // it, so one thread does not take a whole queue of heavy jobs while
        // another idles; a thread alone (the others busy) takes it all.
        let share = (st.queue.len() + batch.len()).div_ceil(st.idle.max(1));
        let most = s.cfg.max_batch.min(share.max(1));
        let mut i = 0;
        let mut full = false;
        while i < st.queue.len() && batch.len() < most {
            if st.queue[i].key != key {
                i += 1;
            } else if bytes.saturating_add(st.queue[i].job.peak_bytes) > s.cfg.max_bytes {
                full = true;
                break;
            } else {
                bytes += st.queue[i].job.peak_bytes;
                batch.extend(st.queue.remove(i).map(|e| e.job));
            }
        }
        let now = Instant::now();
        if full || batch.len() >= s.cfg.max_batch || now >= deadline {
            break;
        }
        if !st.queue.is_empty() {
            s.ready.notify_one();
        }
        s.ready.wait_for(st, deadline - now);
    }
    Some(batch)
}

/// The error for a batch job whose reply never came (its batch panicked).
pub fn lost() -> InferError {
    InferError::internal("internal_error", "the batch running this request failed")
}
