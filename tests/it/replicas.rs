//! Sessions across processes: three replicas on one real Redis behind a
//! real nginx, one of them killed with SIGKILL mid-run; a single replica
//! restarted on its redb file; and a new model deployed under live sessions.
//!
//! Every test here runs the built `metasgd` binary.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{sinusoid_models, Nginx, Replica};
use common::{temp_dir, RedisServer};
use parking_lot::Mutex;
use serde_json::{json, Value};

fn support(a: f64, phase: f64) -> Value {
    let xs: Vec<f64> = (0..10).map(|i| -4.5 + i as f64).collect();
    json!({"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
           "labels": xs.iter().map(|x| a * (x - phase).sin()).collect::<Vec<_>>()})
}

fn queries() -> Value {
    json!([[-3.0], [-1.5], [0.0], [0.7], [2.2], [4.9]])
}

/// Predictions as f32 bit patterns, for exact comparison.
fn bits(v: &Value) -> Vec<u32> {
    v["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| (p.as_f64().unwrap() as f32).to_bits())
        .collect()
}

async fn post(c: &reqwest::Client, url: &str, body: Value) -> Result<(u16, Value), String> {
    let r = c.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
    let st = r.status().as_u16();
    Ok((st, r.json().await.unwrap_or(Value::Null)))
}

/// A session's predictions for [`queries`], through `base`.
async fn predict(c: &reqwest::Client, base: &str, id: &str) -> Result<(u16, Value), String> {
    post(
        c,
        &format!("{base}/v1/sessions/{id}/predict"),
        json!({"inputs": queries()}),
    )
    .await
}

/// The sum of a counter over every line of a /metrics text that starts with `name`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates a session through `base` and returns (id, the stateless prediction bits).
async fn create(c: &reqwest::Client, base: &str, a: f64, phase: f64) -> Result<(String, Vec<u32>), String> {
    let (st, created) = post(
        c,
        &format!("{base}/v1/models/sinusoid/sessions"),
        json!({"support": support(a, phase)}),
    )
    .await?;
    if st != 201 {
        return Err(format!("create: {st} {created}"));
    }
    let id = created["session_id"].as_str().unwrap().to_owned();
    let (st, stateless) = post(
        c,
        &format!("{base}/v1/models/sinusoid/predict"),
        json!({"support": support(a, phase), "inputs": queries()}),
    )
    .await?;
    if st != 200 {
        return Err(format!("stateless: {st} {stateless}"));
    }
    Ok((id, bits(&stateless)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_behind_nginx_lose_no_session_when_one_is_killed() {
    let Some(redis) = RedisServer::start() else { return };
    let models = sinusoid_models(None);
    let url = redis.url();
    let args = ["--sessions", url.as_str(), "--model-cache-mb", "1"];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Replica::start(&models, &args, &[]).await);
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let Some(lb) = Nginx::start(&ports) else { return };
    let base = lb.url("");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Phase 1: sessions created round robin; each predicts through every
    // replica, bit for bit as the stateless path does.
    let expected: Arc<Mutex<HashMap<String, Vec<u32>>>> = Default::default();
    for i in 0..24 {
        let (id, want) = create(&c, &base, 0.5 + 0.2 * i as f64, 0.1 * i as f64).await.unwrap();
        for r in &replicas {
            let (st, got) = predict(&c, &r.url(""), &id).await.unwrap();
            assert_eq!(st, 200, "{got}");
            assert_eq!(bits(&got), want, "replica {} predicts session {id} differently", r.port);
        }
        expected.lock().insert(id, want);
    }
    let mut replays = 0.0;
    for r in &replicas {
        replays += metric_sum(&r.metrics().await, "metasgd_replays_total");
    }
    assert!(
        replays >= 48.0,
        "each session replayed on the two replicas that did not create it: {replays}"
    );

    // Phase 2: 8 clients predict and create through nginx for 4 s; one
    // replica gets SIGKILL after 1.5 s.
    let stop_at = Instant::now() + Duration::from_secs(4);
    let stats: Arc<Mutex<(usize, usize, Vec<String>)>> = Default::default(); // (requests, errors, wrong)
    let mut workers = Vec::new();
    for w in 0..8 {
        let (c, base, expected, stats) = (c.clone(), base.clone(), expected.clone(), stats.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop_at {
                n += 1;
                if n.is_multiple_of(5) {
                    let r = create(&c, &base, 1.0 + w as f64 * 0.3 + n as f64 * 0.01, n as f64 * 0.05).await;
                    let mut s = stats.lock();
                    s.0 += 2;
                    match r {
                        Ok((id, want)) => {
                            expected.lock().insert(id, want);
                        }
                        Err(_) => s.1 += 1,
                    }
                    continue;
                }
                let pick = {
                    let e = expected.lock();
                    let k = (n as usize * 7 + w) % e.len();
                    e.iter().nth(k).map(|(id, b)| (id.clone(), b.clone())).unwrap()
                };
                let r = predict(&c, &base, &pick.0).await;
                let mut s = stats.lock();
                s.0 += 1;
                match r {
                    Ok((200, got)) if bits(&got) == pick.1 => {}
                    Ok((200, got)) => s.2.push(format!("{}: {got}", pick.0)),
                    _ => s.1 += 1,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replicas[1].kill9();
    for w in workers {
        w.await.unwrap();
    }
    let (requests, errors, wrong) = stats.lock().clone();
    let rate = errors as f64 / requests as f64;
    eprintln!(
        "multi-replica run: {requests} requests through nginx, {errors} client-visible errors ({:.2}%), \
         {} wrong predictions, {} sessions",
        100.0 * rate,
        wrong.len(),
        expected.lock().len()
    );
    assert!(wrong.is_empty(), "wrong predictions: {wrong:?}");
    assert!(rate < 0.05, "error rate {rate}");

    // Phase 3: every session created (before or during the kill) is still
    // served, exactly, with no error.
    let all: Vec<(String, Vec<u32>)> = expected.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (id, want) in &all {
        let (st, got) = predict(&c, &base, id).await.unwrap();
        assert_eq!(st, 200, "session {id} lost: {got}");
        assert_eq!(&bits(&got), want, "session {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_on_its_redb_file_keeps_its_sessions() {
    let models = sinusoid_models(None);
    let file = temp_dir("redb-restart").join("sessions.redb");
    let spec = format!("redb:{}", file.display());
    let c = reqwest::Client::new();
    let mut server = Replica::start(&models, &["--sessions", &spec], &[]).await;
    let base = server.url("");
    let mut sessions = Vec::new();
    for i in 0..5 {
        let (id, want) = create(&c, &base, 1.0 + i as f64, 0.3 * i as f64).await.unwrap();
        let (st, got) = predict(&c, &server.url(""), &id).await.unwrap();
        assert_eq!((st, bits(&got)), (200, want.clone()));
        sessions.push((id, want));
    }
    server.kill9(); // a crash, not a clean stop
    let server = Replica::start(&models, &["--sessions", &spec], &[]).await;
    for (id, want) in &sessions {
        let (st, got) = predict(&c, &server.url(""), id).await.unwrap();
        assert_eq!(st, 200, "{got}");
        assert_eq!(&bits(&got), want, "session {id} after restart");
    }
    let metrics = server.metrics().await;
    assert_eq!(metric_sum(&metrics, "metasgd_replays_total"), 5.0);
    assert!(metrics.contains("backend=\"redb\""), "store metrics name the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_under_live_sessions_is_409_or_readapted_as_configured() {
    let (old, new) = (sinusoid_models(None), sinusoid_models(Some(0.05)));
    let file = temp_dir("redb-deploy").join("sessions.redb");
    let spec = format!("redb:{}", file.display());
    let c = reqwest::Client::new();
    let first = Replica::start(&old, &["--sessions", &spec], &[]).await;
    let (id, old_bits) = create(&c, &first.url(""), 1.5, 0.4).await.unwrap();
    let (_, info) = post(
        &c,
        &first.url("/v1/models/sinusoid/predict"),
        json!({"support": support(1.5, 0.4), "inputs": queries()}),
    )
    .await
    .unwrap();
    assert_eq!(bits(&info), old_bits);
    drop(first);

    // Default policy: reject.
    let second = Replica::start(&new, &["--sessions", &spec], &[]).await;
    let (st, err) = predict(&c, &second.url(""), &id).await.unwrap();
    assert_eq!(
        (st, err["error"]["code"].as_str()),
        (409, Some("model_changed")),
        "{err}"
    );
    let (_, new_bits) = create(&c, &second.url(""), 1.5, 0.4).await.unwrap();
    assert_ne!(new_bits, old_bits, "the nudged model predicts differently");
    drop(second);

    // readapt: the session replays on the new model and carries on.
    let third = Replica::start(&new, &["--sessions", &spec, "--on-model-change", "readapt"], &[]).await;
    let (st, got) = predict(&c, &third.url(""), &id).await.unwrap();
    assert_eq!(st, 200, "{got}");
    assert_eq!(
        bits(&got),
        new_bits,
        "re-adapted on the new model, exactly as a new session"
    );
    let info: Value = c
        .get(third.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version: Value = c
        .get(third.url("/v1/models/sinusoid"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["model_version"], version["version"],
        "the record now names the new version"
    );
    let metrics = third.metrics().await;
    assert_eq!(metric_sum(&metrics, "metasgd_readaptations_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_503_with_retry_after_and_the_server_recovers() {
    let Some(redis) = RedisServer::start() else { return };
    let port = redis.port;
    let models = sinusoid_models(None);
    let url = redis.url();
    let server = Replica::start(&models, &["--sessions", url.as_str()], &[]).await;
    let c = reqwest::Client::new();
    let (id, want) = create(&c, &server.url(""), 1.0, 0.0).await.unwrap();
    drop(redis); // the store dies (and, without persistence, its data with it)
    let r = c
        .post(server.url(&format!("/v1/sessions/{id}/predict")))
        .json(&json!({"inputs": queries()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "session_store_unavailable");
    let (st, _) = post(
        &c,
        &server.url("/v1/models/sinusoid/sessions"),
        json!({"support": support(1.0, 0.0)}),
    )
    .await
    .unwrap();
    assert_eq!(st, 503, "no session is created without a store");
    assert_eq!(c.get(server.url("/health")).send().await.unwrap().status(), 200);

    // Redis is back (empty): the server reconnects by itself.
    let _redis = RedisServer::start_on(port);
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok((201, _)) = post(
            &c,
            &server.url("/v1/models/sinusoid/sessions"),
            json!({"support": support(1.0, 0.0)}),
        )
        .await
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the server never reconnected to Redis");
    let (st, err) = predict(&c, &server.url(""), &id).await.unwrap();
    assert_eq!(
        (st, err["error"]["code"].as_str()),
        (404, Some("session_not_found")),
        "the old Redis's data is gone"
    );
    let (id2, want2) = create(&c, &server.url(""), 1.0, 0.0).await.unwrap();
    assert_eq!(want2, want, "same support, same model: same bits");
    let (st, got) = predict(&c, &server.url(""), &id2).await.unwrap();
    assert_eq!((st, bits(&got)), (200, want));
}

/// 28×28 strokes, deterministic per class and shot.
fn glyph(class: usize, shot: usize) -> Value {
    let rows: Vec<Vec<f32>> = (0..28)
        .map(|y| {
            (0..28)
                .map(|x| {
                    let on = (x + y * (class + 1) + shot).is_multiple_of(5 + class) || (x == 4 + 3 * class && y > 3);
                    if on {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    json!(rows)
}

/// Probabilities as f32 bit patterns.
fn prob_bits(v: &Value) -> Vec<u32> {
    v["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|p| (p.as_f64().unwrap() as f32).to_bits())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_bit_exact_for_conv_and_text_models_across_thread_counts() {
    let Some(redis) = RedisServer::start() else { return };
    let url = redis.url();
    let models = common::shipped_models();
    let one = Replica::start(&models, &["--sessions", url.as_str()], &[]).await;
    let two = Replica::start(&models, &["--sessions", url.as_str(), "--threads", "2"], &[]).await;
    let c = reqwest::Client::new();
    let images = json!({
        "support": {"inputs": (0..5).flat_map(|k| (0..2).map(move |s| glyph(k, s))).collect::<Vec<_>>(),
                    "labels": (0..5).flat_map(|k| [k, k]).collect::<Vec<_>>()},
        "steps": 3});
    let texts = json!({
        "support": {"inputs": ["book a flight to paris", "i need a plane ticket", "what's the weather like",
                               "will it rain tomorrow", "play some jazz", "put on my workout playlist"],
                    "labels": ["flight", "flight", "weather", "weather", "music", "music"]}});
    for (model, body, queries) in [
        ("omniglot", images, json!([glyph(0, 7), glyph(3, 9), glyph(4, 1)])),
        (
            "intents",
            texts,
            json!(["fly me to tokyo", "is it sunny outside", "some rock music please"]),
        ),
    ] {
        let (st, created) = post(&c, &one.url(&format!("/v1/models/{model}/sessions")), body)
            .await
            .unwrap();
        assert_eq!(st, 201, "{created}");
        let id = created["session_id"].as_str().unwrap();
        let path = format!("/v1/sessions/{id}/predict");
        let (_, on_one) = post(&c, &one.url(&path), json!({"inputs": queries})).await.unwrap();
        let (st, on_two) = post(&c, &two.url(&path), json!({"inputs": queries})).await.unwrap();
        assert_eq!(st, 200, "{on_two}");
        assert_eq!(on_one["predictions"], on_two["predictions"], "{model}");
        assert_eq!(
            prob_bits(&on_one),
            prob_bits(&on_two),
            "{model}: replayed with 2 threads vs adapted with 1"
        );
    }
}
