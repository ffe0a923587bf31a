//! The HTTP server: configuration, router, middleware stack, and lifecycle
//! (model loading, warm-up, readiness, session sweeping, graceful shutdown).

pub mod api;
pub mod auth;
pub mod cache;
pub mod engine;
pub mod error;
pub mod json;
pub mod metrics;
pub mod replay;
pub mod routes;
pub mod sessions;
pub mod state;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use self::auth::ApiKeys;
use self::cache::AdaptedCache;
use self::replay::{ModelChange, Sessions};
use self::sessions::StoreLimits;
use self::state::{load_models, AppState, Inner};
use self::validate::Limits;

/// `metasgd serve` options; each can also be set from its `METASGD_*` variable.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeConfig {
    #[arg(long, env = "METASGD_HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "METASGD_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Folder whose subfolders are model folders.
    #[arg(long, env = "METASGD_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "METASGD_DEVICE", default_value = "auto")]
    pub device: String,
    /// Compute threads (candle's CPU kernels; also the number of adaptations run at once).
    #[arg(long, env = "METASGD_THREADS", default_value_t = default_threads())]
    pub threads: usize,
    /// Compute requests admitted at once, running or queued; more get 429.
    #[arg(long, env = "METASGD_MAX_CONCURRENCY", default_value_t = 64)]
    pub max_concurrency: usize,
    /// Where sessions live: memory, redb:PATH (survives restarts) or
    /// redis://HOST:PORT[/DB] (shared by replicas).
    #[arg(long, env = "METASGD_SESSIONS", default_value = "memory")]
    pub sessions: String,
    /// Most sessions held in all; beyond it the least recently used
    /// (memory) or the soonest to expire (redb, redis) is dropped.
    #[arg(long, env = "METASGD_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Most live sessions per API key; beyond it creation gets 429.
    #[arg(long, env = "METASGD_MAX_SESSIONS_PER_KEY", default_value_t = 1_000)]
    pub max_sessions_per_key: usize,
    /// Memory for this replica's cache of adapted models, in MiB; a miss
    /// replays the session's adaptation.
    #[arg(long, env = "METASGD_MODEL_CACHE_MB", default_value_t = 256)]
    pub model_cache_mb: usize,
    /// When a session's model changed since it was adapted: reject (409)
    /// or readapt (replay its support set on the new model).
    #[arg(long, env = "METASGD_ON_MODEL_CHANGE", value_enum, default_value_t = ModelChange::Reject)]
    pub on_model_change: ModelChange,
    /// File of API keys, one per line (# comments). With keys set, /v1
    /// needs `Authorization: Bearer <key>`.
    #[arg(long, env = "METASGD_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// API keys, comma-separated (prefer the file or the variable to the flag).
    #[arg(long, env = "METASGD_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Require an API key for /metrics too.
    #[arg(long, env = "METASGD_PROTECT_METRICS")]
    pub protect_metrics: bool,
    /// Session lifetime when the request gives no `ttl_seconds`.
    #[arg(long, env = "METASGD_SESSION_TTL", default_value_t = 3600)]
    pub session_ttl: u64,
    /// Longest `ttl_seconds` a client may ask for.
    #[arg(long, env = "METASGD_MAX_TTL", default_value_t = 86_400)]
    pub max_ttl: u64,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "METASGD_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Most examples in a support set.
    #[arg(long, env = "METASGD_MAX_SUPPORT", default_value_t = 10_000)]
    pub max_support: usize,
    /// Most inputs in one predict request.
    #[arg(long, env = "METASGD_MAX_INPUTS", default_value_t = 10_000)]
    pub max_inputs: usize,
    /// Largest width or height of an uploaded PNG, in pixels (422 beyond).
    #[arg(long, env = "METASGD_MAX_IMAGE_SIDE", default_value_t = 1024)]
    pub max_image_side: u32,
    /// Longest text input, in bytes (422 beyond). Within it, the encoder
    /// reads a text's first tokens (256 for MiniLM).
    #[arg(long, env = "METASGD_MAX_TEXT_BYTES", default_value_t = 16 << 10)]
    pub max_text_bytes: usize,
    /// The ONNX Runtime library (onnxruntime 1.31); by default fetched from
    /// PyPI's onnxruntime wheel into the cache.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Where fetched files (encoders, ONNX Runtime) are kept
    /// [default: $XDG_CACHE_HOME/metasgd or ~/.cache/metasgd].
    #[arg(long, env = "METASGD_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// ONNX Runtime sessions per text model (requests encode in parallel up to this).
    #[arg(long, env = "METASGD_ENCODER_SESSIONS", default_value_t = 1)]
    pub encoder_sessions: usize,
    /// Threads of each ONNX Runtime session [default: --threads].
    #[arg(long, env = "METASGD_ENCODER_THREADS")]
    pub encoder_threads: Option<usize>,
    /// Texts per encoder call.
    #[arg(long, env = "METASGD_ENCODER_BATCH", default_value_t = 32)]
    pub encoder_batch: usize,
    /// Per-request compute timeout, in seconds.
    #[arg(long, env = "METASGD_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    /// On SIGTERM, how long requests in flight may finish before exit, in seconds.
    #[arg(long, env = "METASGD_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "METASGD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl ServeConfig {
    /// Defaults, for tests and embedding.
    pub fn with_models(models: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            c: ServeConfig,
        }
        let mut c = P::parse_from(["metasgd"]).c;
        c.models = models.into();
        c
    }
}

/// Loads the models and builds the shared state (not yet ready).
pub fn build_state(cfg: &ServeConfig) -> anyhow::Result<AppState> {
    let device = crate::device::select(&cfg.device)?;
    let encoder = crate::encoder::EncoderOptions {
        ort_lib: cfg.ort_lib.clone(),
        cache: cfg.cache_dir.clone().unwrap_or_else(crate::fetch::cache_dir),
        sessions: cfg.encoder_sessions.max(1),
        threads: cfg.encoder_threads.unwrap_or(cfg.threads).max(1),
        batch: cfg.encoder_batch.max(1),
    };
    let models = load_models(&cfg.models, &device, &encoder)?;
    let api_keys = ApiKeys::load(cfg.api_keys_file.as_deref(), &cfg.api_keys, cfg.protect_metrics)?;
    let sessions = Sessions {
        store: sessions::open(&cfg.sessions)?,
        cache: AdaptedCache::new(cfg.model_cache_mb << 20),
        limits: StoreLimits {
            max_sessions: cfg.max_sessions.max(1),
            // Without keys every session has the same (empty) owner.
            max_per_owner: if api_keys.is_some() {
                cfg.max_sessions_per_key
            } else {
                usize::MAX
            },
        },
        on_model_change: cfg.on_model_change,
    };
    Ok(AppState(Arc::new(Inner {
        models,
        sessions,
        api_keys,
        admission: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
        workers: Arc::new(Semaphore::new(cfg.threads.max(1))),
        ready: false.into(),
        device,
        limits: Limits {
            max_support: cfg.max_support,
            max_inputs: cfg.max_inputs,
            max_image_side: cfg.max_image_side,
            max_text_bytes: cfg.max_text_bytes,
            max_ttl_seconds: cfg.max_ttl,
        },
        default_ttl_seconds: cfg.session_ttl,
        request_timeout: Duration::from_secs(cfg.request_timeout.max(1)),
        drain_timeout: Duration::from_secs(cfg.drain_timeout),
    })))
}

/// The router with its middleware stack. From the outside in: request id
/// (kept from `x-request-id` or made), tracing, the id echoed back, the
/// timeout, the body limit, auth, then per-route metrics.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let _ = metrics::handle();
    let timeout = state.request_timeout + Duration::from_secs(5);
    let mut router = Router::new();
    for r in routes::routes() {
        router = router.route(r.path, r.handler);
    }
    router
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route_layer(axum::middleware::from_fn(metrics::track))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .with_state(state)
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

/// Runs one adaptation and one prediction per model, then marks the state ready.
pub async fn warm_up(state: &AppState) -> anyhow::Result<()> {
    for (name, served) in &state.models {
        let m = &served.model.manifest;
        let dim: usize = m.input.shape.iter().product();
        let labels = match m.task {
            crate::model::TaskKind::Regression => validate::ValidLabels::Values(vec![0.0]),
            crate::model::TaskKind::Classification => validate::ValidLabels::Classes {
                index: vec![0],
                classes: vec![serde_json::json!("warm-up")],
            },
        };
        let inputs = match m.input.kind {
            crate::model::InputKind::Text => validate::Inputs::Texts(vec!["warm-up".into()]),
            _ => validate::Inputs::Values(vec![0.0; dim]),
        };
        let support = validate::ValidSupport { inputs, n: 1, labels };
        let served = served.clone();
        state
            .compute(move |dev| {
                let a = engine::adapt_support(&served, &support, 1, dev)?;
                let classes = match &support.labels {
                    validate::ValidLabels::Classes { classes, .. } => Some(classes.clone()),
                    _ => None,
                };
                engine::predict(&served, &a.params, classes.as_deref(), &support.inputs, 1, dev)
            })
            .await
            .map_err(|e| anyhow::anyhow!("warm-up of model {name} failed: {e}"))?;
    }
    state.set_ready(true);
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves. Then readiness turns
/// false, new connections are refused, and requests in flight get up to
/// the drain timeout to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let warm = state.clone();
    tokio::spawn(async move {
        match warm_up(&warm).await {
            Ok(()) => tracing::info!("models warmed up; ready"),
            Err(e) => tracing::error!(error = %e, "warm-up failed; staying not ready"),
        }
    });
    let sweep = state.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweep.sessions.sweep().await;
            metrics::handle().run_upkeep();
        }
    });
    let on_stop = state.clone();
    let drain = state.drain_timeout;
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let app = app(state, max_body_bytes);
    let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        on_stop.set_ready(false);
        tracing::info!(
            deadline_s = drain.as_secs(),
            "shutting down: not ready, draining requests in flight"
        );
        let _ = stopping_tx.send(true);
    });
    let deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    let result = tokio::select! {
        r = std::future::IntoFuture::into_future(graceful) => r.map_err(anyhow::Error::from),
        _ = deadline => {
            tracing::warn!("drain deadline passed with requests still in flight; exiting");
            Ok(())
        }
    };
    sweeper.abort();
    result
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `metasgd serve`: load, bind, serve until SIGTERM.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let state = build_state(&cfg)?;
    for (name, m) in &state.models {
        tracing::info!(model = %name, version = %m.info.version, params = m.info.num_params, "loaded");
    }
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&(cfg.host.as_str(), cfg.port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| anyhow::anyhow!("invalid --host/--port: cannot resolve {}:{}", cfg.host, cfg.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, device = %crate::device::name(&state.device), threads = cfg.threads, "listening");
    serve(listener, state, cfg.max_body_bytes, shutdown_signal()).await
}
