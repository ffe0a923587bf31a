//! Prometheus metrics: the process-wide recorder, the request middleware,
//! and the names of everything the server records.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::sessions::Removed;

const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide Prometheus handle; installs the recorder on first use.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &BUCKETS)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "metasgd_http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "metasgd_http_request_duration_seconds",
        "HTTP request latency by route and method"
    );
    describe_counter!("metasgd_adaptations_total", "Adaptations run, by model");
    describe_histogram!("metasgd_adaptation_duration_seconds", "Time spent adapting, by model");
    describe_counter!("metasgd_predictions_total", "Inputs predicted, by model");
    describe_gauge!(
        "metasgd_sessions_live",
        "Sessions held by the session store, by backend"
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
    describe_counter!(
        "metasgd_readaptations_total",
        "Sessions re-adapted because their model's version changed, by model"
    );
    describe_counter!(
        "metasgd_model_changed_rejections_total",
        "Session requests answered 409 because their model's version changed, by model"
    );
    describe_counter!("metasgd_auth_failures_total", "Requests answered 401");
    describe_counter!(
        "metasgd_overload_rejections_total",
        "Requests answered 429 because the compute queue was full"
    );
}

/// Records requests by route and status, and their latency.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    histogram!("metasgd_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(start.elapsed().as_secs_f64());
    counter!("metasgd_http_requests_total", "route" => route, "method" => method, "status" => status).increment(1);
    resp
}

pub fn adaptation(model: &str, seconds: f64) {
    counter!("metasgd_adaptations_total", "model" => model.to_owned()).increment(1);
    histogram!("metasgd_adaptation_duration_seconds", "model" => model.to_owned()).record(seconds);
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
pub fn sessions_live(backend: &'static str, live: usize) {
    gauge!("metasgd_sessions_live", "backend" => backend).set(live as f64);
}

pub fn sessions_removed(backend: &'static str, removed: Removed) {
    if removed.evicted > 0 {
        counter!("metasgd_session_evictions_total", "backend" => backend, "reason" => "evicted")
            .increment(removed.evicted as u64);
    }
    if removed.expired > 0 {
        counter!("metasgd_session_evictions_total", "backend" => backend, "reason" => "expired")
            .increment(removed.expired as u64);
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

pub fn auth_failure() {
    counter!("metasgd_auth_failures_total").increment(1);
}

pub fn overloaded() {
    counter!("metasgd_overload_rejections_total").increment(1);
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
