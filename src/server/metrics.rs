//! Prometheus metrics: the process-wide recorder, the HTTP middleware and
//! the HTTP-level metrics. The core records its own (`infer::metrics`)
//! through the same `metrics` facade.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
    describe_counter!("metasgd_auth_failures_total", "Requests answered 401");
    describe_counter!(
        "metasgd_connections_refused_total",
        "TCP connections closed at once because --max-connections were open"
    );
    describe_gauge!("metasgd_connections_open", "TCP connections open");
    crate::infer::metrics::describe();
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

pub fn auth_failure() {
    counter!("metasgd_auth_failures_total").increment(1);
}

/// A connection refused at the cap, or the open count changed.
pub fn connection_refused() {
    counter!("metasgd_connections_refused_total").increment(1);
}

pub fn connections_open(n: usize) {
    gauge!("metasgd_connections_open").set(n as f64);
}
