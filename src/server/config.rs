//! `metasgd serve`'s options (each also a `METASGD_*` variable) and the
//! state they build: the core, the API keys and the server's own settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{ApiKeys, Auth};
use super::state::AppState;
use crate::infer::batch::{BatchConfig, Batcher};
use crate::infer::cost::ServerCaps;
use crate::infer::input::InputLimits;
use crate::infer::pool::Pool;
use crate::infer::registry::Registry;
use crate::infer::sessions::cache::AdaptedCache;
use crate::infer::sessions::service::{ModelChange, Sessions};
use crate::infer::sessions::StoreLimits;
use crate::infer::Core;

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
    /// auto, cpu, cuda or cuda:N. With auto, a model goes to the GPU when
    /// one is there and its forward pass costs at least 1 MFLOP an example
    /// (conv4); smaller models (the MLP, text heads) stay on the CPU.
    #[arg(long, env = "METASGD_DEVICE", default_value = "auto")]
    pub device: String,
    /// Compute threads (candle's CPU kernels; also the number of adaptations run at once).
    #[arg(long, env = "METASGD_THREADS", default_value_t = default_threads())]
    pub threads: usize,
    /// Compute requests admitted at once, running or queued; more get 429.
    #[arg(long, env = "METASGD_MAX_CONCURRENCY", default_value_t = 64)]
    pub max_concurrency: usize,
    /// Compute requests one API key may have admitted at once; more get 429.
    #[arg(long, env = "METASGD_MAX_IN_FLIGHT_PER_KEY", default_value_t = 16)]
    pub max_in_flight_per_key: usize,
    /// Most estimated compute of one request, in GFLOP (caps every model's
    /// `limits.max_gflop`; 413 beyond).
    #[arg(long, env = "METASGD_MAX_REQUEST_GFLOP", default_value_t = 500.0)]
    pub max_request_gflop: f64,
    /// Most estimated peak memory of one request, in MiB (caps every
    /// model's `limits.max_memory_mb`; 413 beyond).
    #[arg(long, env = "METASGD_MAX_REQUEST_MEMORY_MB", default_value_t = 2048)]
    pub max_request_memory_mb: u64,
    /// Activation memory of one forward/backward chunk, in MiB: support and
    /// query sets run in chunks of as many examples as fit.
    #[arg(long, env = "METASGD_MAX_ACTIVATION_MB", default_value_t = 256)]
    pub max_activation_mb: u64,
    /// Most adaptations run together in one batch (numeric-input models);
    /// 1 turns cross-request batching off.
    #[arg(long, env = "METASGD_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// How long, in µs, the oldest queued adaptation waits for others to
    /// batch with. 0: a batch is what queued while the threads were busy.
    #[arg(long, env = "METASGD_BATCH_WAIT_US", default_value_t = 0)]
    pub batch_wait_us: u64,
    /// Which models batch: `small` (on the CPU only models under
    /// `device::GPU_MIN_FLOPS_PER_EXAMPLE`, whose cost is per-op overhead;
    /// every model on a GPU) or `all`.
    #[arg(long, env = "METASGD_BATCH_MODELS", value_enum, default_value_t = BatchModels::Small)]
    pub batch_models: BatchModels,
    /// Where sessions live: memory, redb:PATH (survives restarts) or
    /// redis://HOST:PORT[/DB] (shared by replicas).
    #[arg(long, env = "METASGD_SESSIONS", default_value = "memory")]
    pub sessions: String,
    /// Most sessions held in all; beyond it the least recently used
    /// (memory) or the soonest to expire (redb, redis) is dropped.
    #[arg(long, env = "METASGD_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Most bytes the session store holds (records and decoded support
    /// sets), in MiB; beyond it sessions are dropped as for --max-sessions.
    #[arg(long, env = "METASGD_MAX_SESSIONS_MB", default_value_t = 1024)]
    pub max_sessions_mb: usize,
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
    /// Memory for each text model's cache of embeddings, in MiB (0: off);
    /// a text seen before (a replay, a repeated support sentence) is not
    /// encoded again.
    #[arg(long, env = "METASGD_EMBEDDING_CACHE_MB", default_value_t = 64)]
    pub embedding_cache_mb: usize,
    /// Let the texts of concurrent requests share ONNX Runtime calls (for
    /// encoders whose vectors do not depend on the batch). Such requests
    /// then wait for the encoder without holding a compute worker. Off by
    /// default: on 2 CPU cores int8 MiniLM encodes 32 texts at 1.28× the
    /// rate of one, and sharing measured no gain (docs/benchmarks.md).
    #[arg(long, env = "METASGD_ENCODER_SHARE_CALLS")]
    pub encoder_share_calls: bool,
    /// Per-request compute timeout, in seconds.
    #[arg(long, env = "METASGD_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    /// How long a connection may take to send a request's headers, in
    /// seconds; also how long an idle keep-alive connection stays open.
    #[arg(long, env = "METASGD_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Most TCP connections open at once; more are closed as they arrive.
    #[arg(long, env = "METASGD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// On SIGTERM, how long requests in flight may finish before exit, in seconds.
    #[arg(long, env = "METASGD_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "METASGD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchModels {
    Small,
    All,
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
    // Fails early on a bad --device, whatever the models.
    crate::device::select(&cfg.device)?;
    let encoder = crate::encoder::EncoderOptions {
        ort_lib: cfg.ort_lib.clone(),
        cache: cfg.cache_dir.clone().unwrap_or_else(crate::fetch::cache_dir),
        sessions: cfg.encoder_sessions.max(1),
        threads: cfg.encoder_threads.unwrap_or(cfg.threads).max(1),
        batch: cfg.encoder_batch.max(1),
        cache_bytes: cfg.embedding_cache_mb << 20,
        share_calls: cfg.encoder_share_calls,
    };
    anyhow::ensure!(
        cfg.max_request_gflop.is_finite() && cfg.max_request_gflop > 0.0,
        "--max-request-gflop must be a positive number, got {}",
        cfg.max_request_gflop
    );
    let caps = ServerCaps {
        max_support: cfg.max_support,
        max_inputs: cfg.max_inputs,
        max_gflop: cfg.max_request_gflop,
        max_memory_mb: cfg.max_request_memory_mb.max(1),
        max_activation_bytes: cfg.max_activation_mb.max(1) << 20,
    };
    let registry = Registry::load(&cfg.models, &cfg.device, &encoder, &caps)?;
    let api_keys = ApiKeys::load(cfg.api_keys_file.as_deref(), &cfg.api_keys, cfg.protect_metrics)?;
    let sessions = Sessions::new(
        crate::infer::sessions::open(&cfg.sessions)?,
        AdaptedCache::new(cfg.model_cache_mb << 20),
        StoreLimits {
            max_sessions: cfg.max_sessions.max(1),
            max_bytes: cfg.max_sessions_mb.max(1) << 20,
            // Without keys every session has the same (empty) owner.
            max_per_owner: if api_keys.is_some() {
                cfg.max_sessions_per_key
            } else {
                usize::MAX
            },
        },
        cfg.on_model_change,
    );
    let core = Core {
        registry,
        batcher: Batcher::start(BatchConfig {
            max_batch: cfg.max_batch.max(1),
            wait: Duration::from_micros(cfg.batch_wait_us),
            all_models: cfg.batch_models == BatchModels::All,
            threads: cfg.threads.max(1),
            max_bytes: caps.max_activation_bytes,
        }),
        pool: Pool::new(
            cfg.max_concurrency,
            cfg.max_in_flight_per_key,
            cfg.threads,
            Duration::from_secs(cfg.request_timeout.max(1)),
        ),
        sessions,
        inputs: InputLimits {
            max_support: cfg.max_support,
            max_inputs: cfg.max_inputs,
            max_image_side: cfg.max_image_side,
            max_text_bytes: cfg.max_text_bytes,
            max_ttl_seconds: cfg.max_ttl,
        },
        caps,
        default_ttl_seconds: cfg.session_ttl,
    };
    Ok(AppState::new(
        core,
        Auth(api_keys.map(Arc::new)),
        Duration::from_secs(cfg.drain_timeout),
    ))
}
