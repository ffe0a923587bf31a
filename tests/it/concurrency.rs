//! Concurrency: 32 clients at once get correct answers; a full compute queue
//! answers 429 with Retry-After; shutdown drains requests in flight.

use crate::common;

use candle_core::{Device, Tensor};
use common::{shipped_models, TestServer};
use metasgd::metasgd::{adapt, Support};
use metasgd::model::{load_model, Target};
use serde_json::json;

/// What the engine computes in-process for the same request.
fn expected(amplitude: f32, k: usize, queries: &[f32]) -> Vec<f32> {
    let m = load_model(&shipped_models().join("sinusoid"), &Device::Cpu).unwrap();
    let xs: Vec<f32> = (0..k).map(|i| -4.0 + 8.0 * i as f32 / (k - 1) as f32).collect();
    let ys: Vec<f32> = xs.iter().map(|x| amplitude * x.sin()).collect();
    let support = Support {
        x: Tensor::from_vec(xs, (1, k, 1), &Device::Cpu).unwrap(),
        target: Target::Values(Tensor::from_vec(ys, (1, k, 1), &Device::Cpu).unwrap()),
    };
    let a = adapt(
        m.architecture(),
        m.manifest.task,
        &m.theta,
        &m.rule,
        &support,
        m.manifest.default_steps,
    )
    .unwrap();
    let q = Tensor::from_slice(queries, (1, queries.len(), 1), &Device::Cpu).unwrap();
    m.architecture()
        .forward(&a.params, &q)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_clients_get_correct_answers() {
    let s = std::sync::Arc::new(TestServer::with_models(shipped_models()).await);
    let queries = [-3.0f32, -1.0, 0.0, 2.0, 4.5];
    let mut tasks = vec![];
    for c in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let amplitude = 0.5 + 0.125 * c as f32;
            let k = 10;
            let xs: Vec<f32> = (0..k).map(|i| -4.0 + 8.0 * i as f32 / (k - 1) as f32).collect();
            let support = json!({"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
                                 "labels": xs.iter().map(|x| amplitude * x.sin()).collect::<Vec<_>>()});
            let (st, created) = s
                .post("/v1/models/sinusoid/sessions", json!({"support": support}))
                .await;
            assert_eq!(st, 201, "{created}");
            let id = created["session_id"].as_str().unwrap().to_string();
            let mut out = vec![];
            for _ in 0..3 {
                let (st, p) = s
                    .post(
                        &format!("/v1/sessions/{id}/predict"),
                        json!({"inputs": queries.map(|q| [q])}),
                    )
                    .await;
                assert_eq!(st, 200, "{p}");
                out.push(
                    p["predictions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                        .collect::<Vec<_>>(),
                );
            }
            (amplitude, out)
        }));
    }
    for t in tasks {
        let (amplitude, outs) = t.await.unwrap();
        let want = expected(amplitude, 10, &queries);
        for got in outs {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "amplitude {amplitude}: got {got:?}, want {want:?}"
                );
            }
        }
    }
}

/// A support set big enough that 10 steps keep a worker busy for a while.
fn heavy_request() -> serde_json::Value {
    let xs: Vec<f64> = (0..10_000).map(|i| -5.0 + 10.0 * i as f64 / 9999.0).collect();
    json!({"support": {"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
                       "labels": xs.iter().map(|x| x.sin()).collect::<Vec<_>>()},
           "steps": 10})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_429_with_retry_after() {
    let mut cfg = metasgd::server::ServeConfig::with_models(shipped_models());
    cfg.max_concurrency = 1;
    cfg.threads = 1;
    let s = std::sync::Arc::new(TestServer::start(cfg).await);
    let body = heavy_request();
    let mut tasks = vec![];
    for _ in 0..6 {
        let (s, body) = (s.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = s
                .client
                .post(s.url("/v1/models/sinusoid/sessions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let v: serde_json::Value = r.json().await.unwrap();
            (status, retry, v)
        }));
    }
    let mut created = 0;
    let mut rejected = 0;
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            201 => created += 1,
            429 => {
                rejected += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(v["error"]["code"], "overloaded");
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert!(created >= 1 && rejected >= 1, "created {created}, rejected {rejected}");
    assert_eq!(s.get("/health").await.0, 200);
}

async fn wait_for(cond: impl Fn() -> bool, what: &str) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_turns_ready_off_and_drains_in_flight_requests() {
    let mut s = TestServer::with_models(shipped_models()).await;
    assert!(s.state.is_ready());
    let (client, url, body) = (s.client.clone(), s.url("/v1/models/sinusoid/sessions"), heavy_request());
    assert_eq!(s.state.core.pool.in_flight(), 0);
    let in_flight = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() });
    // Stop only once the request is being computed (it holds an admission permit).
    wait_for(|| s.state.core.pool.in_flight() > 0, "the request to be admitted").await;
    s.trigger_stop();
    wait_for(|| !s.state.is_ready(), "readiness to turn off at shutdown").await;
    assert_eq!(in_flight.await.unwrap(), 201, "the request in flight must finish");
    s.handle.take().unwrap().await.unwrap().unwrap();
}
