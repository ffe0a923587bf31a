//! What the core records: adaptations, predictions, encodings, sessions,
//! the adapted-model cache, admission and cancellations. Through the
//! `metrics` facade, so the core needs no exporter; the server installs the
//! Prometheus recorder and serves `/metrics`.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub fn describe() {
    describe_counter!(
        "metasgd_embedding_cache_requests_total",
        "Texts looked up in an encoder's embedding cache, by encoder and result (hit or miss)"
    );
    describe_gauge!(
        "metasgd_embedding_cache_bytes",
        "Bytes of embeddings cached, by encoder"
    );
    describe_gauge!("metasgd_embedding_cache_entries", "Embeddings cached, by encoder");
    describe_counter!("metasgd_adaptations_total", "Adaptations run, by model");
    describe_histogram!("metasgd_adaptation_duration_seconds", "Time spent adapting, by model");
    describe_counter!("metasgd_predictions_total", "Inputs predicted, by model");
    describe_gauge!(
        "metasgd_sessions_live",
        "Sessions held by the session store, by backend"
    );
    describe_gauge!(
        "metasgd_sessions_bytes",
        "Bytes held by the session store (records and support blobs), by backend"
    );
    describe_counter!(
        "metasgd_session_evictions_total",
        "Sessions removed by the store, by backend: reason evicted (store full) or expired"
    );
    describe_counter!(
        "metasgd_session_store_ops_total",
        "Session store operations, by backend, op and outcome (ok or error)"
    );
    describe_histogram!(
        "metasgd_session_store_duration_seconds",
        "Session store latency, by backend and op"
    );
    describe_counter!(
        "metasgd_model_cache_requests_total",
        "Adapted-model cache lookups, by model and result (hit or miss)"
    );
    describe_gauge!(
        "metasgd_model_cache_bytes",
        "Bytes of adapted parameters cached by this replica"
    );
    describe_gauge!("metasgd_model_cache_entries", "Adapted models cached by this replica");
    describe_counter!(
        "metasgd_model_cache_evictions_total",
        "Adapted models dropped from the cache to stay within --model-cache-mb"
    );
    describe_counter!(
        "metasgd_replays_total",
        "Adaptations replayed from a stored session on a cache miss, by model"
    );
    describe_histogram!("metasgd_replay_duration_seconds", "Time spent replaying, by model");
    describe_histogram!(
        "metasgd_encoder_shared_requests",
        "Requests whose texts shared one encoder call (--encoder-share-calls)"
    );
    describe_histogram!(
        "metasgd_batch_size",
        "Jobs run together in one batch, by model and kind (adapt, or predict: predictions of sessions or of a batch's stateless requests)"
    );
    describe_counter!(
        "metasgd_readaptations_total",
        "Sessions re-adapted because their model's version changed, by model"
    );
    describe_counter!(
        "metasgd_model_changed_rejections_total",
        "Session requests answered 409 because their model's version changed, by model"
    );
    describe_counter!(
        "metasgd_overload_rejections_total",
        "Compute requests answered 429 at admission, by scope: server (queue full) or key (its cap in flight)"
    );
    describe_counter!(
        "metasgd_cost_rejections_total",
        "Requests refused before any work because their estimated cost passed a limit, by model and limit"
    );
    describe_counter!(
        "metasgd_cancellations_total",
        "Compute work stopped before it finished, by reason: timeout or disconnect"
    );
}

pub fn adaptation(model: &str, seconds: f64) {
    counter!("metasgd_adaptations_total", "model" => model.to_owned()).increment(1);
    histogram!("metasgd_adaptation_duration_seconds", "model" => model.to_owned()).record(seconds);
}

/// Jobs of one kind (`adapt` or `predict`) run together in one batch.
pub fn batch(model: &str, kind: &'static str, size: usize) {
    histogram!("metasgd_batch_size", "model" => model.to_owned(), "kind" => kind).record(size as f64);
}

/// Texts run through a model's encoder, and the time the batch took.
pub fn encoded(model: &str, texts: usize, seconds: f64) {
    counter!("metasgd_encoded_texts_total", "model" => model.to_owned()).increment(texts as u64);
    histogram!("metasgd_encode_duration_seconds", "model" => model.to_owned()).record(seconds);
}

pub fn predictions(model: &str, n: usize) {
    counter!("metasgd_predictions_total", "model" => model.to_owned()).increment(n as u64);
}

/// The store's session count, when known.
pub fn sessions_live(backend: &'static str, live: usize, bytes: usize) {
    gauge!("metasgd_sessions_live", "backend" => backend).set(live as f64);
    gauge!("metasgd_sessions_bytes", "backend" => backend).set(bytes as f64);
}

/// Sessions that left a store: `evicted` to make room, `expired` by age.
pub fn sessions_removed(backend: &'static str, evicted: usize, expired: usize) {
    if evicted > 0 {
        counter!("metasgd_session_evictions_total", "backend" => backend, "reason" => "evicted")
            .increment(evicted as u64);
    }
    if expired > 0 {
        counter!("metasgd_session_evictions_total", "backend" => backend, "reason" => "expired")
            .increment(expired as u64);
    }
}

pub fn store_op(backend: &'static str, op: &'static str, ok: bool, seconds: f64) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("metasgd_session_store_ops_total", "backend" => backend, "op" => op, "outcome" => outcome).increment(1);
    histogram!("metasgd_session_store_duration_seconds", "backend" => backend, "op" => op).record(seconds);
}

pub fn cache_lookup(model: &str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!("metasgd_model_cache_requests_total", "model" => model.to_owned(), "result" => result).increment(1);
}

pub fn cache_usage(entries: usize, bytes: usize, evicted: usize) {
    gauge!("metasgd_model_cache_entries").set(entries as f64);
    gauge!("metasgd_model_cache_bytes").set(bytes as f64);
    if evicted > 0 {
        counter!("metasgd_model_cache_evictions_total").increment(evicted as u64);
    }
}

pub fn replay(model: &str, seconds: f64) {
    counter!("metasgd_replays_total", "model" => model.to_owned()).increment(1);
    histogram!("metasgd_replay_duration_seconds", "model" => model.to_owned()).record(seconds);
}

pub fn readapted(model: &str) {
    counter!("metasgd_readaptations_total", "model" => model.to_owned()).increment(1);
}

pub fn model_changed(model: &str) {
    counter!("metasgd_model_changed_rejections_total", "model" => model.to_owned()).increment(1);
}

/// A compute request refused at admission: the server's queue was full
/// (`scope` server) or its key had its most in flight (`scope` key).
pub fn overloaded(scope: &'static str) {
    counter!("metasgd_overload_rejections_total", "scope" => scope).increment(1);
}

/// A request refused by cost admission, by model and the limit it passed.
pub fn too_costly(model: &str, limit: &'static str) {
    counter!("metasgd_cost_rejections_total", "model" => model.to_owned(), "limit" => limit).increment(1);
}

/// Work stopped before it finished, because its request timed out or its client left.
pub fn cancelled(reason: &'static str) {
    counter!("metasgd_cancellations_total", "reason" => reason).increment(1);
}

/// Counts one admitted compute request in `metasgd_compute_in_flight` while it lives.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        gauge!("metasgd_compute_in_flight").increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("metasgd_compute_in_flight").decrement(1.0);
    }
}
