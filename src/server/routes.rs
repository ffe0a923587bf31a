//! HTTP handlers and the route table that both the router and the spec test read.

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Extension;
use chrono::{SecondsFormat, Utc};

use super::api::*;
use super::auth::Owner;
use super::error::AppError;
use super::json::{Json, Query};
use super::metrics;
use super::state::AppState;
use crate::infer::sessions::Record;

/// One route: its path, its method, and its handler.
pub struct Route {
    pub path: &'static str,
    pub method: Method,
    pub handler: MethodRouter<AppState>,
}

fn route(path: &'static str, method: Method, handler: MethodRouter<AppState>) -> Route {
    Route { path, method, handler }
}

/// Every route the server answers. `openapi.yaml` must list exactly these.
pub fn routes() -> Vec<Route> {
    vec![
        route("/health", Method::GET, get(health)),
        route("/ready", Method::GET, get(ready)),
        route("/metrics", Method::GET, get(metrics_text)),
        route("/openapi.yaml", Method::GET, get(openapi)),
        route("/v1/models", Method::GET, get(list_models)),
        route("/v1/models/{model}", Method::GET, get(model_info)),
        route("/v1/models/{model}/sessions", Method::POST, post(create_session)),
        route("/v1/models/{model}/predict", Method::POST, post(stateless_predict)),
        route("/v1/sessions/{id}", Method::GET, get(session_info)),
        route("/v1/sessions/{id}", Method::DELETE, delete(delete_session)),
        route("/v1/sessions/{id}/predict", Method::POST, post(session_predict)),
        route("/v1/sessions/{id}/predict", Method::GET, get(session_predict_get)),
    ]
}

pub const OPENAPI: &str = include_str!("../../openapi.yaml");

async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

async fn ready(State(s): State<AppState>) -> Response {
    if s.is_ready() {
        Json(Status { status: "ready" }).into_response()
    } else {
        AppError::unavailable(
            "not_ready",
            "models are loading or warming up, or the server is shutting down",
        )
        .into_response()
    }
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

async fn list_models(State(s): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        models: s.core.registry.iter().map(|(_, m)| m.info.clone()).collect(),
    })
}

async fn model_info(State(s): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelInfo>, AppError> {
    Ok(Json(s.core.registry.get(&model)?.info.clone()))
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn create_session(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(model): Path<String>,
    Json(req): Json<CreateSession>,
) -> Result<Response, AppError> {
    let c = s
        .core
        .create_session(&owner.0, &model, req.support, req.steps, req.ttl_seconds)
        .await?;
    let body = SessionCreated {
        session_id: c.record.id.clone(),
        model,
        steps: c.record.steps,
        support_size: c.record.support_size,
        classes: c.record.classes,
        loss_before: c.loss_before,
        loss_after: c.loss_after,
        expires_at: rfc3339(c.record.expires_at),
    };
    let location = format!("/v1/sessions/{}", body.session_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

fn session_info_of(rec: Record) -> SessionInfo {
    SessionInfo {
        support_size: rec.support_size,
        session_id: rec.id,
        model: rec.model,
        model_version: rec.model_version,
        steps: rec.steps,
        classes: rec.classes,
        created_at: rfc3339(rec.created_at),
        expires_at: rfc3339(rec.expires_at),
    }
}

async fn session_info(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, AppError> {
    Ok(Json(session_info_of(s.core.session(&owner.0, &id).await?)))
}

async fn delete_session(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    s.core.delete_session(&owner.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn predict_with(
    s: &AppState,
    owner: &Owner,
    id: &str,
    inputs: RawInputs,
) -> Result<Json<SessionPredictions>, AppError> {
    let (rec, (predictions, probabilities)) = s.core.predict_session(&owner.0, id, inputs).await?;
    Ok(Json(SessionPredictions {
        session_id: rec.id,
        predictions,
        probabilities,
    }))
}

async fn session_predict(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Json(req): Json<PredictRequest>,
) -> Result<Json<SessionPredictions>, AppError> {
    predict_with(&s, &owner, &id, req.inputs).await
}

/// Parses `?inputs=` of the GET predict route: a JSON array.
fn query_inputs(raw: &str) -> Result<RawInputs, AppError> {
    serde_json::from_str::<RawInputs>(raw).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`inputs` must be a URL-encoded JSON array of inputs: {e}"),
        )
    })
}

async fn session_predict_get(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Query(q): Query<PredictQuery>,
) -> Result<Json<SessionPredictions>, AppError> {
    predict_with(&s, &owner, &id, query_inputs(&q.inputs)?).await
}

async fn stateless_predict(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(model): Path<String>,
    Json(req): Json<StatelessPredict>,
) -> Result<Json<Predictions>, AppError> {
    let (predictions, probabilities) = s
        .core
        .stateless(&owner.0, &model, req.support, req.steps, req.inputs)
        .await?;
    Ok(Json(Predictions {
        predictions,
        probabilities,
    }))
}

pub async fn not_found() -> AppError {
    AppError::not_found("route_not_found", "no such route; GET /openapi.yaml lists the API")
}

pub async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.yaml",
    )
}
