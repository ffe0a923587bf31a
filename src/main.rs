//! The `metasgd` command: `serve`, `train`, `eval`, `bench` and `healthcheck`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use metasgd::eval::{evaluate, model_and_baselines, EvalSpec};
use metasgd::metasgd::train::{train, TrainConfig};
use metasgd::metasgd::Order;
use metasgd::tasks::held_out;

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
    /// Evaluate a model folder (and its baselines/) on fresh tasks.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// Shot counts K, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
        shots: Vec<usize>,
        #[arg(long, default_value_t = 1)]
        steps: usize,
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        #[arg(long, default_value_t = 100)]
        queries: usize,
        /// Seed of the evaluation tasks (training uses other streams).
        #[arg(long, default_value_t = 20_171_002)]
        seed: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Dataset folder, for families that read one (omniglot).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Classification: classes per task, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "5")]
        ways: Vec<usize>,
        /// Also evaluate each model without adaptation (0 steps).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        zero_steps: bool,
        /// Classification: also evaluate nearest-centroid on the model's input vectors.
        #[arg(long)]
        centroid: bool,
        #[arg(long, env = "METASGD_THREADS", default_value_t = 2)]
        threads: usize,
    },
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
        Command::Eval {
            model,
            shots,
            steps,
            tasks,
            queries,
            seed,
            json,
            data,
            ways,
            zero_steps,
            centroid,
            threads,
        } => {
            metasgd::device::set_threads(threads);
            let device = candle_core::Device::Cpu;
            let models = model_and_baselines(&model, &device)?;
            let fam_name = models[0]
                .1
                .manifest
                .family
                .clone()
                .context("the manifest names no task family")?;
            let mut all = Vec::new();
            let classification = models[0].1.manifest.task == metasgd::model::TaskKind::Classification;
            let ways = if classification { ways } else { vec![0] };
            let spec = EvalSpec {
                shots: 0,
                steps,
                tasks,
                queries,
                seed,
            };
            for fam in held_out(&fam_name, data.as_deref(), &ways)? {
                let centroid_rows = if centroid && classification {
                    metasgd::eval::evaluate_centroid(fam.as_ref(), &shots, spec, &device)?
                } else {
                    Vec::new()
                };
                all.extend(centroid_rows.iter().map(|(r, _)| r.clone()));
                for (i, (label, m)) in models.iter().enumerate() {
                    let rows = evaluate(m, label, fam.as_ref(), &shots, spec, &device)?;
                    if i == 0 {
                        // The model's own accuracies against the centroid's, same episodes.
                        for ((r, accs), (_, c)) in rows.iter().zip(&centroid_rows) {
                            let at = EvalSpec { shots: r.shots, ..spec };
                            let accs = accs.as_deref().context("a classification model has accuracies")?;
                            all.push(metasgd::eval::paired_row(label, fam.as_ref(), at, accs, c));
                        }
                    }
                    all.extend(rows.into_iter().map(|(r, _)| r));
                    if zero_steps {
                        let unadapted = EvalSpec { steps: 0, ..spec };
                        let rows = evaluate(
                            m,
                            &format!("{label} (0 steps)"),
                            fam.as_ref(),
                            &shots,
                            unadapted,
                            &device,
                        )?;
                        all.extend(rows.into_iter().map(|(r, _)| r));
                    }
                }
            }
            if classification {
                print_accuracy_table(&all, tasks, queries, steps);
                if let Some(p) = json {
                    std::fs::write(&p, serde_json::to_string_pretty(&all)? + "\n")?;
                }
                return Ok(());
            }
            println!(
                "{} tasks, {} query points, {} step(s); mean query loss ± 95% CI",
                tasks, queries, steps
            );
            println!(
                "| model | {} |",
                shots.iter().map(|k| format!("K={k}")).collect::<Vec<_>>().join(" | ")
            );
            println!("|---|{}", "---|".repeat(shots.len()));
            let mut labels: Vec<&str> = all.iter().map(|r| r.model.as_str()).collect();
            labels.dedup();
            for l in labels {
                let cells: Vec<String> = all
                    .iter()
                    .filter(|r| r.model == l)
                    .map(|r| format!("{:.3} ± {:.3}", r.mean, r.ci95))
                    .collect();
                println!("| {l} | {} |", cells.join(" | "));
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&all)? + "\n")?;
            }
            Ok(())
        }
    }
}

/// Accuracy ± 95% CI, one row per model, one column per (ways, shots).
fn print_accuracy_table(all: &[metasgd::eval::EvalResult], tasks: usize, queries: usize, steps: usize) {
    println!("{tasks} episodes, {queries} queries per class, {steps} step(s); query accuracy % ± 95% CI");
    let mut cols: Vec<(Option<usize>, usize)> = all.iter().map(|r| (r.ways, r.shots)).collect();
    cols.sort();
    cols.dedup();
    let head: Vec<String> = cols
        .iter()
        .map(|(w, k)| format!("{}-way {k}-shot", w.unwrap_or(0)))
        .collect();
    println!("| model | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    let mut labels: Vec<&str> = Vec::new();
    for r in all {
        if !labels.contains(&r.model.as_str()) {
            labels.push(&r.model);
        }
    }
    for l in labels {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| {
                all.iter()
                    .find(|r| r.model == l && (r.ways, r.shots) == *c)
                    .map(|r| {
                        format!(
                            "{:.2} ± {:.2}",
                            100.0 * r.accuracy.unwrap_or(f64::NAN),
                            100.0 * r.accuracy_ci95.unwrap_or(f64::NAN)
                        )
                    })
                    .unwrap_or_default()
            })
            .collect();
        println!("| {l} | {} |", cells.join(" | "));
    }
}
