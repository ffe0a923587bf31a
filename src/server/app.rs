//! The router and its middleware stack, built from the route table.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use super::state::AppState;
use super::{auth, metrics, routes};

/// The router with its middleware stack. From the outside in: request id
/// (kept from `x-request-id` or made), tracing, the id echoed back, the
/// timeout, the body limit, auth, then per-route metrics.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let _ = metrics::handle();
    let timeout = state.core.pool.timeout() + Duration::from_secs(5);
    let mut router = Router::new();
    for r in routes::routes() {
        router = router.route(r.path, r.handler);
    }
    router
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                        .on_failure(on_failure),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .with_state(state)
}

/// A failed response is logged as an error only when it is a 500 (or the
/// connection failed); the 503s the server answers on purpose (not ready
/// yet, overloaded, timed out, store unavailable) are warnings.
fn on_failure(class: ServerErrorsFailureClass, latency: std::time::Duration, _span: &tracing::Span) {
    let ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(s) if s != StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::warn!(status = s.as_u16(), latency_ms = ms, "response failed")
        }
        other => tracing::error!(classification = %other, latency_ms = ms, "response failed"),
    }
}

/// The span of one request: method, path (never the query or the headers,
/// which carry inputs and keys) and request id.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
}
