//! `metasgd bench` for text models: encoder throughput, and the latency of
//! creating a 10-intent 5-shot session and of predicting, in-process and
//! over HTTP.

use std::time::Instant;

use serde_json::json;

use super::harness::{start_server, summarize, time_it, Summary};
use crate::infer::engine;
use crate::infer::input::{Inputs, ValidLabels, ValidSupport};
use crate::infer::pool::Cancel;
use crate::infer::registry::ServedModel;
use crate::server::AppState;

const TOPICS: [&str; 10] = [
    "book a flight to",
    "what is the weather in",
    "transfer money to my account in",
    "set an alarm before my trip to",
    "how do i say thank you in the language of",
    "find a restaurant near",
    "what time is it now in",
    "cancel my hotel reservation in",
    "play some music from",
    "tell me a fun fact about",
];
const PLACES: [&str; 8] = ["paris", "tokyo", "new york", "lima", "cairo", "oslo", "delhi", "sydney"];

/// `ways × shots` utterances ("<topic> <place>"), labelled by topic.
fn support(ways: usize, shots: usize) -> (Vec<String>, Vec<String>) {
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for (c, topic) in TOPICS.iter().take(ways).enumerate() {
        for s in 0..shots {
            texts.push(format!("{topic} {} please", PLACES[(c + s) % PLACES.len()]));
            labels.push(format!("intent_{c}"));
        }
    }
    (texts, labels)
}

fn queries(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("could you {} {} tomorrow", TOPICS[i % 10], PLACES[(i * 3 + 1) % 8]))
        .collect()
}

/// In-process: encoder throughput at batch 1 and 32, session creation
/// (encode 50 texts + adapt) for 10 intents × 5 shots, and prediction.
pub fn in_process(served: &ServedModel, iters: usize) -> anyhow::Result<Vec<(String, Summary)>> {
    let enc = served
        .encoder
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("a text model has an encoder"))?;
    let iters = iters.min(500);
    let one = queries(1);
    let q32 = queries(32);
    let r1: Vec<&str> = one.iter().map(String::as_str).collect();
    let r32: Vec<&str> = q32.iter().map(String::as_str).collect();
    let mut out = vec![];
    let s = time_it(iters, || {
        enc.embed(&r1).unwrap();
    });
    out.push((format!("encode batch 1 ({:.0} texts/s)", 1e3 / s.mean), s));
    let s = time_it(iters / 4 + 1, || {
        enc.embed(&r32).unwrap();
    });
    out.push((format!("encode batch 32 ({:.0} texts/s)", 32e3 / s.mean), s));
    let (texts, labels) = support(10, 5);
    let classes: Vec<serde_json::Value> = (0..10).map(|c| json!(format!("intent_{c}"))).collect();
    let sup = ValidSupport {
        n: texts.len(),
        inputs: Inputs::Texts(texts),
        labels: ValidLabels::Classes {
            index: labels.iter().map(|l| l[7..].parse::<u32>().unwrap()).collect(),
            classes: classes.clone(),
        },
    };
    let steps = served.model.manifest.default_steps;
    let s = time_it(iters / 4 + 1, || {
        engine::adapt_support(served, &sup, steps, usize::MAX, &Cancel::default()).unwrap();
    });
    out.push((format!("create session: encode 10x5 texts + adapt {steps} step(s)"), s));
    let a = engine::adapt_support(served, &sup, steps, usize::MAX, &Cancel::default())?;
    for n in [1usize, 32] {
        let q = Inputs::Texts(queries(n));
        let s = time_it(iters / 4 + 1, || {
            engine::predict(served, &a.params, Some(&classes), &q, n, usize::MAX, &Cancel::default()).unwrap();
        });
        out.push((format!("predict {n} text(s)"), s));
    }
    Ok(out)
}

/// Over HTTP (loopback), one client: create a 10-intent 5-shot session, then
/// predict 1 and 32 texts, `iters` times; prints a Markdown table.
pub async fn over_http(state: AppState, max_body_bytes: usize, model: &str, iters: usize) -> anyhow::Result<()> {
    let (base, tx, server) = start_server(state, max_body_bytes).await?;
    let client = reqwest::Client::new();
    let (texts, labels) = support(10, 5);
    let body = json!({"support": {"inputs": texts, "labels": labels}});
    let (mut create, mut p1, mut p32, mut errors) = (vec![], vec![], vec![], 0usize);
    for i in 0..iters + 5 {
        let t = Instant::now();
        let r = client
            .post(format!("{base}/v1/models/{model}/sessions"))
            .json(&body)
            .send()
            .await?;
        let ok = r.status() == 201;
        let v: serde_json::Value = r.json().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let Some(id) = v["session_id"].as_str().filter(|_| ok) else {
            errors += 1;
            continue;
        };
        for (n, out) in [(1usize, &mut p1), (32, &mut p32)] {
            let t = Instant::now();
            let r = client
                .post(format!("{base}/v1/sessions/{id}/predict"))
                .json(&json!({"inputs": queries(n)}))
                .send()
                .await?;
            errors += usize::from(r.status() != 200);
            r.bytes().await?;
            if i >= 5 {
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        if i >= 5 {
            create.push(ms);
        }
    }
    let _ = tx.send(());
    server.await??;
    println!("\nover HTTP (loopback), one client, {iters} rounds after 5 warm-up rounds");
    println!("| request | mean ms | p50 ms | p99 ms |\n|---|---|---|---|");
    for (name, v) in [
        ("POST sessions, 10 intents x 5 texts", create),
        ("POST predict, 1 text", p1),
        ("POST predict, 32 texts", p32),
    ] {
        let s = summarize(v);
        println!("| {name} | {:.2} | {:.2} | {:.2} |", s.mean, s.p50, s.p99);
    }
    println!("errors: {errors}");
    Ok(())
}
