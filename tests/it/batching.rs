//! Cross-request batching: requests that ran in one batch get the bits they
//! get alone, sessions made under load predict like the same support set
//! sent alone, and batching on or off gives the same mathematics.

use crate::common;

use common::{shipped_models, TestServer};
use metasgd::server::ServeConfig;
use serde_json::{json, Value};
use std::sync::Arc;

fn sinusoid_request(c: usize) -> Value {
    // 9 to 12 support points: one row bucket, so they may share a batch.
    let k = 9 + c % 4;
    let amplitude = 0.5 + 0.3 * c as f64;
    let xs: Vec<f64> = (0..k)
        .map(|i| -4.0 + 7.5 * i as f64 / (k - 1) as f64 + 0.01 * c as f64)
        .collect();
    json!({"support": {"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
                       "labels": xs.iter().map(|x| amplitude * x.sin()).collect::<Vec<_>>()},
           "steps": 1 + c % 2,
           "inputs": [[-3.0], [-0.5], [1.25], [4.0]]})
}

fn omniglot_request(c: usize) -> Value {
    // 3 to 5 classes of one random 28×28 image each, queries of the same.
    let classes = 3 + c % 3;
    let mut s = 99 + c as u64;
    let mut image = || {
        (0..28)
            .map(|_| {
                (0..28)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if (s >> 61) == 0 {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f64>>()
            })
            .collect::<Vec<_>>()
    };
    let inputs: Vec<_> = (0..classes).map(|_| image()).collect();
    let queries: Vec<_> = (0..3).map(|_| image()).collect();
    json!({"support": {"inputs": inputs, "labels": (0..classes).map(|i| format!("c{i}")).collect::<Vec<_>>()},
           "inputs": queries})
}

async fn batching_server(max_batch: usize, wait_us: u64) -> Arc<TestServer> {
    let mut cfg = ServeConfig::with_models(shipped_models());
    cfg.max_batch = max_batch;
    cfg.batch_wait_us = wait_us;
    cfg.batch_models = metasgd::server::config::BatchModels::All;
    cfg.threads = 1;
    Arc::new(TestServer::start(cfg).await)
}

/// Sends every request at once and returns the answers in order.
async fn all_at_once(s: &Arc<TestServer>, path: &str, bodies: &[Value]) -> Vec<Value> {
    let to: Vec<(String, Value)> = bodies.iter().map(|b| (path.to_owned(), b.clone())).collect();
    each_at_once(s, &to).await
}

/// Sends every (path, body) at once and returns the answers in order.
async fn each_at_once(s: &Arc<TestServer>, requests: &[(String, Value)]) -> Vec<Value> {
    let tasks: Vec<_> = requests
        .iter()
        .map(|(path, b)| {
            let (s, b, path) = (s.clone(), b.clone(), path.clone());
            tokio::spawn(async move { s.post(&path, b).await })
        })
        .collect();
    let mut out = vec![];
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        out.push(v);
    }
    out
}

/// A models folder holding a copy of the shipped `model` named `name`: the
/// metrics are the test binary's, shared with the other tests' batches.
fn model_copy(model: &str, name: &str) -> std::path::PathBuf {
    let models = common::temp_dir(name);
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(shipped_models().join(model)).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let manifest = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["name"] = json!(name);
    std::fs::write(&manifest, m.to_string()).unwrap();
    models
}

/// Jobs and batches of `kind` (`adapt` or `predict`) for `model` so far.
fn batches(metrics: &str, model: &str, kind: &str) -> (f64, f64) {
    let read = |suffix: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("metasgd_batch_size_{suffix}{{"))
                    && l.contains(&format!("model=\"{model}\""))
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    (read("sum"), read("count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_requests_get_the_bits_they_get_alone() {
    // A 50 ms window on one thread: concurrent requests surely share batches.
    let s = batching_server(32, 50_000).await;
    for (model, bodies) in [
        ("sinusoid", (0..24).map(sinusoid_request).collect::<Vec<_>>()),
        ("omniglot", (0..9).map(omniglot_request).collect::<Vec<_>>()),
    ] {
        let path = format!("/v1/models/{model}/predict");
        let together = all_at_once(&s, &path, &bodies).await;
        let (sum, count) = batches(&s.text("/metrics").await, model, "adapt");
        assert!(
            sum > count,
            "{model}: no batch held more than one request ({sum} in {count} batches)"
        );
        for (i, (b, t)) in bodies.iter().zip(&together).enumerate() {
            let (st, alone) = s.post(&path, b.clone()).await;
            assert_eq!(st, 200, "{alone}");
            assert_eq!(alone, *t, "{model} request {i}: batched and alone differ");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_created_under_load_predict_like_the_support_set_sent_alone() {
    let s = batching_server(32, 20_000).await;
    let bodies: Vec<Value> = (0..16).map(sinusoid_request).collect();
    let creates: Vec<Value> = bodies
        .iter()
        .map(|b| json!({"support": b["support"], "steps": b["steps"]}))
        .collect();
    let created = {
        let tasks: Vec<_> = creates
            .iter()
            .map(|b| {
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move { s.post("/v1/models/sinusoid/sessions", b).await })
            })
            .collect();
        let mut ids = vec![];
        for t in tasks {
            let (st, v) = t.await.unwrap();
            assert_eq!(st, 201, "{v}");
            ids.push(v["session_id"].as_str().unwrap().to_owned());
        }
        ids
    };
    for (id, b) in created.iter().zip(&bodies) {
        let (st, session) = s
            .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": b["inputs"]}))
            .await;
        assert_eq!(st, 200, "{session}");
        let (st, alone) = s.post("/v1/models/sinusoid/predict", b.clone()).await;
        assert_eq!(st, 200, "{alone}");
        assert_eq!(session["predictions"], alone["predictions"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_predicting_together_get_the_bits_they_get_alone() {
    // Sinusoid sessions, and Omniglot ones of 3 to 5 classes (two class
    // buckets, so two parameter shapes that must not share a batch).
    let s = batching_server(32, 50_000).await;
    let mut sessions = vec![];
    for (c, (model, body)) in (0..12)
        .map(|c| ("sinusoid", sinusoid_request(c)))
        .chain((0..6).map(|c| ("omniglot", omniglot_request(c))))
        .enumerate()
    {
        let mut create = json!({"support": body["support"]});
        if let Some(steps) = body.get("steps") {
            create["steps"] = steps.clone();
        }
        let (st, v) = s.post(&format!("/v1/models/{model}/sessions"), create).await;
        assert_eq!(st, 201, "{v}");
        let id = v["session_id"].as_str().unwrap().to_owned();
        // 5 to 7 sinusoid queries: padded to a bucket of 8 rows.
        let mut queries = body["inputs"].as_array().unwrap().clone();
        if model == "sinusoid" {
            queries.extend((0..1 + c % 3).map(|i| json!([0.3 * i as f64 - 2.0])));
        }
        sessions.push((
            model,
            format!("/v1/sessions/{id}/predict"),
            json!({ "inputs": queries }),
        ));
    }
    let requests: Vec<(String, Value)> = sessions.iter().map(|(_, p, b)| (p.clone(), b.clone())).collect();
    let together = each_at_once(&s, &requests).await;
    let metrics = s.text("/metrics").await;
    for model in ["sinusoid", "omniglot"] {
        let (sum, count) = batches(&metrics, model, "predict");
        assert!(
            sum > count,
            "{model}: no prediction batch held more than one ({sum} in {count})"
        );
    }
    for ((model, path, b), t) in sessions.iter().zip(&together) {
        let (st, alone) = s.post(path, b.clone()).await;
        assert_eq!(st, 200, "{alone}");
        assert_eq!(alone["predictions"], t["predictions"], "{model} {path}");
        assert_eq!(alone["probabilities"], t["probabilities"], "{model} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batching_off_gives_the_same_predictions_to_rounding() {
    let on = batching_server(32, 0).await;
    let off = batching_server(1, 0).await;
    for (model, body) in [("sinusoid", sinusoid_request(3)), ("omniglot", omniglot_request(2))] {
        let path = format!("/v1/models/{model}/predict");
        let (a, b) = (on.post(&path, body.clone()).await.1, off.post(&path, body).await.1);
        let flat = |v: &Value, key: &str| -> Vec<f64> {
            let x = &v[key];
            let rows = x.as_array().unwrap_or_else(|| panic!("{v}"));
            rows.iter()
                .flat_map(|r| r.as_array().cloned().unwrap_or_else(|| vec![r.clone()]))
                .map(|n| n.as_f64().unwrap())
                .collect()
        };
        let key = if model == "sinusoid" {
            "predictions"
        } else {
            "probabilities"
        };
        for (x, y) in flat(&a, key).iter().zip(flat(&b, key)) {
            assert!((x - y).abs() < 1e-4, "{model}: {x} vs {y}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_holds_no_more_memory_than_the_activation_limit() {
    // The smallest --max-activation-mb whose chunk takes a 5-image support
    // set whole (images are not padded): two such jobs (10 images'
    // activations) are over it, so no two share a batch, however many queue.
    let m = metasgd::model::load_model(&shipped_models().join("omniglot"), &candle_core::Device::Cpu).unwrap();
    let mb = (1..1024u64)
        .find(|mb| metasgd::infer::cost::chunk_rows(m.architecture(), 5, mb << 20) >= 5)
        .unwrap();
    let models = model_copy("omniglot", "omniglot-cap");
    let mut cfg = ServeConfig::with_models(models);
    cfg.batch_wait_us = 50_000;
    cfg.threads = 1;
    cfg.max_activation_mb = mb;
    cfg.batch_models = metasgd::server::config::BatchModels::All;
    let s = Arc::new(TestServer::start(cfg).await);
    let bodies: Vec<Value> = (0..6).map(|_| omniglot_request(2)).collect();
    all_at_once(&s, "/v1/models/omniglot-cap/predict", &bodies).await;
    let (sum, count) = batches(&s.text("/metrics").await, "omniglot-cap", "adapt");
    assert!(
        count >= 6.0,
        "{sum} jobs in {count} batches at --max-activation-mb {mb}"
    );
    assert_eq!(sum, count, "{sum} jobs in {count} batches at --max-activation-mb {mb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn texts_of_concurrent_requests_share_encoder_calls_and_get_the_bits_they_get_alone() {
    // No embedding cache: every text is encoded, alone or beside others'.
    let mut cfg = ServeConfig::with_models(shipped_models());
    cfg.embedding_cache_mb = 0;
    cfg.encoder_share_calls = true;
    cfg.threads = 1;
    let s = Arc::new(TestServer::start(cfg).await);
    let topics = ["flight", "weather", "music", "alarm", "recipe", "taxi"];
    let bodies: Vec<Value> = (0..12)
        .map(|c| {
            let inputs: Vec<String> = (0..6)
                .map(|i| format!("request {c}: something about the {} please, case {i}", topics[i]))
                .collect();
            json!({"support": {"inputs": inputs, "labels": topics},
                   "inputs": [format!("and what about {} number {c}", topics[c % 6])]})
        })
        .collect();
    let together = all_at_once(&s, "/v1/models/intents/predict", &bodies).await;
    let metrics = s.text("/metrics").await;
    let read = |suffix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("metasgd_encoder_shared_requests_{suffix}")))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    assert!(
        read("sum") > read("count"),
        "no encoder call was shared ({} requests in {} calls)",
        read("sum"),
        read("count")
    );
    for (i, (b, t)) in bodies.iter().zip(&together).enumerate() {
        let (st, alone) = s.post("/v1/models/intents/predict", b.clone()).await;
        assert_eq!(st, 200, "{alone}");
        assert_eq!(alone, *t, "text request {i}: shared and alone differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_request_waits_the_window_for_company() {
    // One batching thread, a 300 ms window: the first request is alone in
    // the queue when it is taken, the others come 30 ms later; all four
    // must still run as one batch.
    let mut cfg = ServeConfig::with_models(model_copy("sinusoid", "sinusoid-window"));
    cfg.batch_wait_us = 300_000;
    cfg.threads = 1;
    let s = Arc::new(TestServer::start(cfg).await);
    let path = "/v1/models/sinusoid-window/predict";
    let (before, _) = batches(&s.text("/metrics").await, "sinusoid-window", "adapt");
    let first = {
        let (s, b) = (s.clone(), sinusoid_request(0));
        tokio::spawn(async move { s.post(path, b).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let rest: Vec<Value> = [4, 8, 12].map(sinusoid_request).to_vec();
    all_at_once(&s, path, &rest).await;
    assert_eq!(first.await.unwrap().0, 200);
    let (sum, count) = batches(&s.text("/metrics").await, "sinusoid-window", "adapt");
    assert_eq!(sum - before, 4.0);
    assert_eq!(
        count, 2.0,
        "the warm-up's batch and one batch of four, not {count} batches"
    );
}
