//! HTTP handlers and the route table that both the router and the spec test read.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Extension;
use chrono::{SecondsFormat, Utc};

use super::api::*;
use super::auth::Owner;
use super::engine;
use super::error::AppError;
use super::json::{Json, Query};
use super::metrics;
use super::replay;
use super::sessions::{new_id, Record};
use super::state::AppState;
use super::validate;

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
        models: s.models.values().map(|m| m.info.clone()).collect(),
    })
}

async fn model_info(State(s): State<AppState>, Path(model): Path<String>) -> Result<Json<ModelInfo>, AppError> {
    Ok(Json(s.model(&model)?.info.clone()))
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Validates and runs adaptation; shared by sessions and stateless predict.
async fn adapt(
    s: &AppState,
    model: &str,
    support: &SupportSet,
    steps: Option<i64>,
) -> Result<
    (
        std::sync::Arc<super::state::ServedModel>,
        usize,
        validate::ValidSupport,
        engine::AdaptedModel,
    ),
    AppError,
> {
    let served = s.model(model)?;
    let m = &served.model.manifest;
    let steps = validate::steps(m, steps)?;
    let valid = validate::support(m, support, &s.limits)?;
    let (sv, v2) = (served.clone(), valid.clone());
    let start = Instant::now();
    let adapted = s
        .compute(move |dev| engine::adapt_support(&sv, &v2, steps, dev))
        .await?;
    metrics::adaptation(model, start.elapsed().as_secs_f64());
    if !adapted.loss_after.is_finite() {
        return Err(AppError::invalid(
            "adaptation_diverged",
            format!(
                "adaptation diverged: the support loss is not finite after {steps} steps; \
                 use fewer steps (this model's default is {}) or labels of a smaller scale",
                m.default_steps
            ),
        ));
    }
    Ok((served, steps, valid, adapted))
}

fn classes_of(v: &validate::ValidSupport) -> Option<Vec<serde_json::Value>> {
    match &v.labels {
        validate::ValidLabels::Classes { classes, .. } => Some(classes.clone()),
        validate::ValidLabels::Values(_) => None,
    }
}

async fn create_session(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(model): Path<String>,
    Json(req): Json<CreateSession>,
) -> Result<Response, AppError> {
    let ttl = validate::ttl(req.ttl_seconds, s.default_ttl_seconds, s.limits.max_ttl_seconds)?;
    let (served, steps, valid, adapted) = adapt(&s, &model, &req.support, req.steps).await?;
    let now = Utc::now();
    let rec = Record {
        id: new_id(),
        owner: owner.0,
        model: model.clone(),
        model_version: served.model.version.clone(),
        support: req.support,
        steps,
        classes: classes_of(&valid),
        created_at: now,
        expires_at: now + chrono::Duration::seconds(ttl as i64),
    };
    s.sessions.insert(&rec, adapted.params).await?;
    let body = SessionCreated {
        session_id: rec.id.clone(),
        model,
        steps,
        support_size: valid.n,
        classes: rec.classes,
        loss_before: adapted.loss_before,
        loss_after: adapted.loss_after,
        expires_at: rfc3339(rec.expires_at),
    };
    let location = format!("/v1/sessions/{}", body.session_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

async fn session_info(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, AppError> {
    let rec = s.sessions.find(&owner.0, &id).await?;
    Ok(Json(SessionInfo {
        support_size: rec.support.inputs.len(),
        session_id: rec.id,
        model: rec.model,
        model_version: rec.model_version,
        steps: rec.steps,
        classes: rec.classes,
        created_at: rfc3339(rec.created_at),
        expires_at: rfc3339(rec.expires_at),
    }))
}

async fn delete_session(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    s.sessions.delete(&owner.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn predict_with(
    s: &AppState,
    owner: &Owner,
    id: &str,
    inputs: Vec<serde_json::Value>,
) -> Result<Json<SessionPredictions>, AppError> {
    let rec = s.sessions.find(&owner.0, id).await?;
    let served = replay::served(s, &rec)?;
    // Validate the inputs before any replay.
    let flat = validate::inputs(
        &served.model.manifest,
        &inputs,
        "inputs",
        s.limits.max_inputs,
        &s.limits,
    )?;
    let adapted = replay::adapted(s, &rec, &served).await?;
    let n = inputs.len();
    let classes = rec.classes.clone();
    let (predictions, probabilities) = s
        .compute(move |dev| engine::predict(&served, &adapted.params, classes.as_deref(), &flat, n, dev))
        .await?;
    metrics::predictions(&rec.model, n);
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

async fn session_predict_get(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Query(q): Query<PredictQuery>,
) -> Result<Json<SessionPredictions>, AppError> {
    predict_with(&s, &owner, &id, validate::query_inputs(&q.inputs)?).await
}

async fn stateless_predict(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Json(req): Json<StatelessPredict>,
) -> Result<Json<Predictions>, AppError> {
    let served = s.model(&model)?;
    // Validate the query inputs before spending time on adaptation.
    let flat = validate::inputs(
        &served.model.manifest,
        &req.inputs,
        "inputs",
        s.limits.max_inputs,
        &s.limits,
    )?;
    let (served, _steps, valid, adapted) = adapt(&s, &model, &req.support, req.steps).await?;
    let n = req.inputs.len();
    let classes = classes_of(&valid);
    let (predictions, probabilities) = s
        .compute(move |dev| engine::predict(&served, &adapted.params, classes.as_deref(), &flat, n, dev))
        .await?;
    metrics::predictions(&model, n);
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
