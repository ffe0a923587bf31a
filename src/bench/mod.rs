//! `metasgd bench`: adaptation and prediction latency in-process, and
//! throughput over HTTP at several concurrency levels. A benchmark, not a test.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

mod harness;
pub mod parity;
mod text;

use harness::{start_server, time_it};
pub use harness::{summarize, Summary};

use crate::infer::engine;
use crate::infer::input::{Inputs, ValidLabels, ValidSupport};
use crate::infer::pool::Cancel;
use crate::infer::registry::ServedModel;
use crate::server::{build_state, AppState, ServeConfig};

fn sine_support(rng: &mut ChaCha8Rng, k: usize) -> (Vec<f32>, Vec<f32>) {
    let task = crate::tasks::sinusoid::SineTask::random(rng);
    let xs: Vec<f32> = (0..k).map(|_| rng.random_range(-5.0..5.0)).collect();
    let ys = xs.iter().map(|&x| task.eval(x)).collect();
    (xs, ys)
}

/// In-process, image models: PNG conversion, N-way K-shot adaptation, prediction.
fn image_in_process(model: &ServedModel, iters: usize) -> anyhow::Result<Vec<(String, Summary)>> {
    use crate::images::{png_to_ink, PIXELS};
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let img = image::GrayImage::from_fn(105, 105, |x, y| {
        image::Luma([if (x / 7 + y / 11) % 3 == 0 { 0 } else { 255 }])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(img).write_to(&mut png, image::ImageFormat::Png)?;
    let png = png.into_inner();
    let mut out = vec![(
        "convert one 105x105 PNG to 28x28".to_string(),
        time_it(iters, || {
            png_to_ink(&png, 1024).unwrap();
        }),
    )];
    let mut ink = |n: usize| -> Vec<f32> { (0..n * PIXELS).map(|_| rng.random_range(0.0..1.0f32)).collect() };
    let mut adapted = None;
    for (ways, shots) in [(5usize, 1usize), (5, 5), (20, 1), (20, 5)] {
        let n = ways * shots;
        let support = ValidSupport {
            inputs: Inputs::Values(ink(n)),
            n,
            labels: ValidLabels::Classes {
                index: (0..n).map(|i| (i / shots) as u32).collect(),
                classes: (0..ways).map(|c| json!(c)).collect(),
            },
        };
        let s = time_it(iters, || {
            engine::adapt_support(model, &support, 1, usize::MAX, &Cancel::default()).unwrap();
        });
        out.push((format!("adapt {ways}-way {shots}-shot, 1 step"), s));
        adapted = Some((
            engine::adapt_support(model, &support, 1, usize::MAX, &Cancel::default())?,
            support,
        ));
    }
    let (a, support) = adapted.expect("adapted");
    let classes = match &support.labels {
        ValidLabels::Classes { classes, .. } => classes.clone(),
        _ => unreachable!(),
    };
    let q = Inputs::Values(ink(100));
    out.push((
        "predict 100 images (20 classes)".into(),
        time_it(iters, || {
            engine::predict(
                model,
                &a.params,
                Some(&classes),
                &q,
                100,
                usize::MAX,
                &Cancel::default(),
            )
            .unwrap();
        }),
    ));
    Ok(out)
}

/// In-process: adapt with K=10 for 1 and 5 steps, predict 100 inputs
/// (image models: see [`image_in_process`]).
pub fn in_process(state: &AppState, model: &str, iters: usize) -> anyhow::Result<Vec<(String, Summary)>> {
    let served = state.core.registry.get(model).map_err(|e| anyhow::anyhow!("{e}"))?;
    match served.model.manifest.input.kind {
        crate::model::InputKind::Image => return image_in_process(&served, iters),
        crate::model::InputKind::Text => return text::in_process(&served, iters),
        crate::model::InputKind::Vector => {}
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (xs, ys) = sine_support(&mut rng, 10);
    let support = ValidSupport {
        inputs: Inputs::Values(xs),
        n: 10,
        labels: ValidLabels::Values(ys),
    };
    let mut out = vec![];
    for steps in [1usize, 5] {
        let s = time_it(iters, || {
            engine::adapt_support(&served, &support, steps, usize::MAX, &Cancel::default()).unwrap();
        });
        out.push((format!("adapt K=10, {steps} step(s)"), s));
    }
    let adapted = engine::adapt_support(&served, &support, 1, usize::MAX, &Cancel::default())?;
    let q = Inputs::Values((0..100).map(|i| -5.0 + i as f32 * 0.1).collect());
    out.push((
        "predict 100 inputs".into(),
        time_it(iters, || {
            engine::predict(&served, &adapted.params, None, &q, 100, usize::MAX, &Cancel::default()).unwrap();
        }),
    ));
    Ok(out)
}

/// One HTTP load run: `concurrency` clients, each creating a K=10 session and
/// then predicting 100 inputs, for `duration`.
pub struct HttpRun {
    pub concurrency: usize,
    pub create: Summary,
    pub predict: Summary,
    pub requests_per_s: f64,
    pub errors: usize,
}

pub async fn over_http(
    state: AppState,
    max_body_bytes: usize,
    model: &str,
    concurrency: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<HttpRun>> {
    let (base, tx, server) = start_server(state, max_body_bytes).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let queries: Vec<[f32; 1]> = (0..100).map(|i| [-5.0 + i as f32 * 0.1]).collect();
    let mut runs = vec![];
    for &c in concurrency {
        let start = Instant::now();
        let mut tasks = vec![];
        for w in 0..c {
            let (client, base, model, queries) = (client.clone(), base.clone(), model.to_string(), queries.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
                let (mut create, mut predict, mut errors) = (vec![], vec![], 0usize);
                while start.elapsed() < duration {
                    let (xs, ys) = sine_support(&mut rng, 10);
                    let body =
                        json!({"support": {"inputs": xs.iter().map(|x| [*x]).collect::<Vec<_>>(), "labels": ys}});
                    let t = Instant::now();
                    let r = client
                        .post(format!("{base}/v1/models/{model}/sessions"))
                        .json(&body)
                        .send()
                        .await;
                    let id = match r {
                        Ok(r) if r.status() == 201 => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["session_id"].as_str().map(String::from)),
                        _ => None,
                    };
                    create.push(t.elapsed().as_secs_f64() * 1e3);
                    let Some(id) = id else {
                        errors += 1;
                        continue;
                    };
                    let t = Instant::now();
                    let ok = client
                        .post(format!("{base}/v1/sessions/{id}/predict"))
                        .json(&json!({"inputs": queries}))
                        .send()
                        .await
                        .map(|r| r.status() == 200)
                        .unwrap_or(false);
                    predict.push(t.elapsed().as_secs_f64() * 1e3);
                    errors += usize::from(!ok);
                }
                (create, predict, errors)
            }));
        }
        let (mut create, mut predict, mut errors) = (vec![], vec![], 0);
        for t in tasks {
            let (c1, p1, e1) = t.await?;
            create.extend(c1);
            predict.extend(p1);
            errors += e1;
        }
        let secs = start.elapsed().as_secs_f64();
        runs.push(HttpRun {
            concurrency: c,
            requests_per_s: (create.len() + predict.len()) as f64 / secs,
            create: summarize(create),
            predict: summarize(predict),
            errors,
        });
    }
    let _ = tx.send(());
    server.await??;
    Ok(runs)
}

/// Prints both parts as Markdown tables.
pub fn run(cfg: ServeConfig, model: &str, iters: usize, seconds: u64) -> anyhow::Result<()> {
    println!(
        "in-process, {iters} iterations each, device {}, {} thread(s)",
        cfg.device, cfg.threads
    );
    println!("| operation | mean ms | p50 ms | p99 ms |\n|---|---|---|---|");
    let state = build_state(&cfg)?;
    for (name, s) in in_process(&state, model, iters)? {
        println!("| {name} | {:.3} | {:.3} | {:.3} |", s.mean, s.p50, s.p99);
    }
    let manifest = &state
        .core
        .registry
        .get(model)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .model
        .manifest;
    let (text, regression) = (
        manifest.input.kind == crate::model::InputKind::Text,
        manifest.task == crate::model::TaskKind::Regression,
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if text {
        return rt.block_on(text::over_http(state, cfg.max_body_bytes, model, iters.min(200)));
    }
    if !regression {
        println!("\n(the HTTP load test drives the sinusoid regression model only)");
        return Ok(());
    }
    let runs = rt.block_on(over_http(
        state,
        cfg.max_body_bytes,
        model,
        &[1, 8, 32],
        Duration::from_secs(seconds),
    ))?;
    println!("\nover HTTP (loopback), {seconds} s per level; each client loops: create session (K=10, 1 step), predict 100 inputs");
    println!("| concurrency | requests/s | create p50 ms | create p99 ms | predict p50 ms | predict p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in runs {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.concurrency, r.requests_per_s, r.create.p50, r.create.p99, r.predict.p50, r.predict.p99, r.errors
        );
    }
    Ok(())
}
