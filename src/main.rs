//! The `metasgd` command: `serve`, `train`, `eval`, `bench` and `healthcheck`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use metasgd::metasgd::train::{train, TrainConfig};
use metasgd::metasgd::Order;

/// mimalloc keeps freed pages for reuse: with the system allocator, the
/// large short-lived tensors of conv training spent more time in the kernel
/// (mmap, page faults) than in arithmetic.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "metasgd",
    version,
    about = "Meta-SGD few-shot adaptation: train, evaluate and serve models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models in a folder over HTTP.
    Serve(metasgd::server::ServeConfig),
    /// Benchmark adaptation and prediction, in-process and over HTTP.
    Bench {
        #[command(flatten)]
        serve: metasgd::server::ServeConfig,
        /// The model to benchmark.
        #[arg(long, default_value = "sinusoid")]
        model: String,
        /// In-process iterations per operation.
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// Seconds per HTTP concurrency level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Adapt and predict with every model on the CPU and on --device, and
    /// compare (what scripts/gpu-check.sh runs on a GPU machine).
    Parity {
        #[command(flatten)]
        serve: metasgd::server::ServeConfig,
        /// Step counts to compare at.
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        steps: Vec<usize>,
        /// Largest difference accepted.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
    },
    /// Download what the models need (encoders, the ONNX Runtime library) into the cache, then exit.
    Fetch {
        #[arg(long, env = "METASGD_MODELS", default_value = "models")]
        models: PathBuf,
        /// [default: $XDG_CACHE_HOME/metasgd or ~/.cache/metasgd]
        #[arg(long, env = "METASGD_CACHE")]
        cache_dir: Option<PathBuf>,
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_lib: Option<PathBuf>,
    },
    /// Exit 0 when the server at --url answers /health with 200 (for container health checks).
    Healthcheck {
        #[arg(
            long,
            env = "METASGD_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/health"
        )]
        url: String,
    },
    /// Meta-train a model (Meta-SGD or MAML) and write its folder.
    Train {
        #[command(flatten)]
        cfg: TrainConfig,
        /// Compute threads.
        #[arg(long, env = "METASGD_THREADS", default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Pre-train the Omniglot conv4 body as a supervised classifier (a start for `train --init`).
    Pretrain {
        #[command(flatten)]
        cfg: metasgd::metasgd::pretrain::PretrainConfig,
        #[arg(long, env = "METASGD_THREADS", default_value_t = 2)]
        threads: usize,
    },
    /// Evaluate model folders (and their baselines/) on fresh tasks.
    Eval(metasgd::eval::report::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => {
            metasgd::device::set_serving_threads(cfg.threads);
            let filter = tracing_subscriber::EnvFilter::try_from_env("METASGD_LOG").unwrap_or_else(|_| "info".into());
            let logs = tracing_subscriber::fmt().with_env_filter(filter);
            match cfg.log_format {
                metasgd::server::LogFormat::Json => logs.json().with_current_span(true).init(),
                metasgd::server::LogFormat::Text => logs.init(),
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = rt.block_on(metasgd::server::run(cfg));
            // Past the drain deadline, adaptations still running on the
            // blocking pool are abandoned rather than awaited.
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            result
        }
        Command::Bench {
            serve,
            model,
            iters,
            seconds,
        } => {
            metasgd::device::set_serving_threads(serve.threads);
            metasgd::bench::run(serve, &model, iters, seconds)
        }
        Command::Parity {
            serve,
            steps,
            tolerance,
        } => {
            metasgd::device::set_threads(serve.threads);
            let device = serve.device.clone();
            metasgd::bench::parity::run(&serve, &device, &steps, tolerance)
        }
        Command::Fetch {
            models,
            cache_dir,
            ort_lib,
        } => {
            let cache = cache_dir.unwrap_or_else(metasgd::fetch::cache_dir);
            for p in metasgd::encoder::prefetch::prefetch(&models, &cache, ort_lib.as_deref())? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Healthcheck { url } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(3))
                    .build()?;
                let status = client
                    .get(&url)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?
                    .status();
                anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
                Ok(())
            })
        }
        Command::Train { cfg, threads, device } => {
            metasgd::device::set_threads(threads);
            if cfg.order == Order::Second {
                // Must precede the first backward() of any thread; never set by `serve`.
                std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
            }
            let device = metasgd::device::select(&device)?;
            train(cfg, &device)
        }
        Command::Pretrain { cfg, threads } => {
            metasgd::device::set_threads(threads);
            metasgd::metasgd::pretrain::pretrain(cfg, &candle_core::Device::Cpu)
        }
        Command::Eval(args) => metasgd::eval::report::run(args),
    }
}
