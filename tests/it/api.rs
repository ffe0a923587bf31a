//! The API over real HTTP on an ephemeral port: the whole session flow,
//! stateless predict, classification labels, expiry, and metrics.

use crate::common;

use common::{models_with_classifier, shipped_models, TestServer};
use serde_json::{json, Value};

fn sine_support(a: f64, phase: f64, k: usize) -> Value {
    let xs: Vec<f64> = (0..k).map(|i| -4.5 + 9.0 * i as f64 / (k - 1) as f64).collect();
    json!({"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
           "labels": xs.iter().map(|x| a * (x - phase).sin()).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_flow_create_predict_get_delete() {
    let s = TestServer::with_models(shipped_models()).await;
    let (st, ready) = s.get("/ready").await;
    assert_eq!((st, ready), (200, json!({"status": "ready"})));
    assert_eq!(s.get("/health").await, (200, json!({"status": "ok"})));

    let (st, models) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let info = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "sinusoid")
        .unwrap()
        .clone();
    assert_eq!(info["task"], "regression");
    assert_eq!(info["input"], json!({"kind": "vector", "shape": [1]}));
    assert_eq!(info["n_way"], Value::Null);
    assert_eq!(info["num_params"], 1761);
    assert_eq!(info["version"].as_str().unwrap().len(), 64);
    assert_eq!(s.get("/v1/models/sinusoid").await, (200, info));

    let support = sine_support(2.0, 0.5, 10);
    let resp = s
        .client
        .post(s.url("/v1/models/sinusoid/sessions"))
        .json(&json!({"support": support, "steps": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let created: Value = resp.json().await.unwrap();
    let id = created["session_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/sessions/{id}"));
    assert_eq!(id.len(), 32);
    assert_eq!(created["model"], "sinusoid");
    assert_eq!(created["steps"], 2);
    assert_eq!(created["support_size"], 10);
    assert!(created.get("classes").is_none());
    assert!(created["loss_after"].as_f64().unwrap() < created["loss_before"].as_f64().unwrap());
    chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();

    let queries = json!([[0.0], [1.0], [-2.5]]);
    let (st, post) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": queries}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(post["session_id"], id.as_str());
    assert_eq!(post["predictions"].as_array().unwrap().len(), 3);
    assert!(post.get("probabilities").is_none());

    let q = urlencode(&queries.to_string());
    let (st, get) = s.get(&format!("/v1/sessions/{id}/predict?inputs={q}")).await;
    assert_eq!(st, 200);
    assert_eq!(get, post, "GET and POST predict must agree");

    let (st, stateless) = s
        .post(
            "/v1/models/sinusoid/predict",
            json!({"support": support, "steps": 2, "inputs": queries}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        stateless["predictions"], post["predictions"],
        "stateless predict must equal the session's"
    );

    let (st, got) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(got["support_size"], 10);
    assert_eq!(got["steps"], 2);
    assert_eq!(got["expires_at"], created["expires_at"]);
    assert!(got["created_at"].is_string());

    let del = s
        .client
        .delete(s.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let (st, err) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!((st, err["error"]["code"].as_str()), (404, Some("session_not_found")));
    let del = s
        .client
        .delete(s.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_their_ttl() {
    let s = TestServer::with_models(shipped_models()).await;
    let (st, created) = s
        .post(
            "/v1/models/sinusoid/sessions",
            json!({"support": sine_support(1.0, 0.0, 5), "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(st, 201);
    let id = created["session_id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/sessions/{id}")).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, err) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": [[0.0]]}))
        .await;
    assert_eq!(st, 404);
    assert_eq!(err["error"]["code"], "session_not_found");
    assert!(err["error"]["message"].as_str().unwrap().contains("expired"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_bound_evicts_oldest_session() {
    let mut cfg = metasgd::server::ServeConfig::with_models(shipped_models());
    cfg.max_sessions = 2;
    let s = TestServer::start(cfg).await;
    let mut ids = vec![];
    for _ in 0..3 {
        let (st, c) = s
            .post(
                "/v1/models/sinusoid/sessions",
                json!({"support": sine_support(1.0, 0.0, 5)}),
            )
            .await;
        assert_eq!(st, 201);
        ids.push(c["session_id"].as_str().unwrap().to_string());
    }
    assert_eq!(s.get(&format!("/v1/sessions/{}", ids[0])).await.0, 404);
    assert_eq!(s.get(&format!("/v1/sessions/{}", ids[2])).await.0, 200);
    let metrics = s.text("/metrics").await;
    assert!(
        metrics.contains("metasgd_session_evictions_total{backend=\"memory\",reason=\"evicted\"}"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_labels_classes_and_probabilities() {
    let s = TestServer::with_models(models_with_classifier()).await;
    let (st, info) = s.get("/v1/models/toy-classifier").await;
    assert_eq!(st, 200);
    assert_eq!(
        (info["task"].as_str(), info["n_way"].as_u64()),
        (Some("classification"), Some(5))
    );
    // Three well separated clusters, labelled with strings.
    let centers = [("cat", [2.0, 0.0]), ("dog", [-2.0, 0.0]), ("owl", [0.0, 2.5])];
    let mut inputs = vec![];
    let mut labels = vec![];
    for (name, c) in centers {
        for d in [[0.1, 0.0], [-0.1, 0.1], [0.0, -0.1]] {
            inputs.push(json!([c[0] + d[0], c[1] + d[1]]));
            labels.push(json!(name));
        }
    }
    let support = json!({"inputs": inputs, "labels": labels});
    let (st, created) = s
        .post(
            "/v1/models/toy-classifier/sessions",
            json!({"support": support, "steps": 50}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(
        created["classes"],
        json!(["cat", "dog", "owl"]),
        "classes in order of first appearance"
    );
    let id = created["session_id"].as_str().unwrap();
    let (st, p) = s
        .post(
            &format!("/v1/sessions/{id}/predict"),
            json!({"inputs": [[2.0, 0.1], [-2.1, 0.0], [0.1, 2.4]]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(p["predictions"], json!(["cat", "dog", "owl"]));
    for row in p["probabilities"].as_array().unwrap() {
        let row: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(row.len(), 3);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(
        s.get(&format!("/v1/sessions/{id}")).await.1["classes"],
        json!(["cat", "dog", "owl"])
    );

    // Integer labels work too, and stateless predict returns probabilities.
    let (st, p) = s
        .post(
            "/v1/models/toy-classifier/predict",
            json!({"support": {"inputs": [[2.0, 0.0], [-2.0, 0.0]], "labels": [7, 3]}, "steps": 30, "inputs": [[1.9, 0.0], [-1.9, 0.0]]}),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["predictions"], json!([7, 3]));
    assert_eq!(p["probabilities"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_requests_adaptations_and_sessions() {
    let s = TestServer::with_models(shipped_models()).await;
    let (st, _) = s
        .post(
            "/v1/models/sinusoid/sessions",
            json!({"support": sine_support(1.0, 0.0, 5)}),
        )
        .await;
    assert_eq!(st, 201);
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for name in [
        "metasgd_http_requests_total{route=\"/v1/models/{model}/sessions\",method=\"POST\",status=\"201\"}",
        "metasgd_http_request_duration_seconds_bucket",
        "metasgd_adaptations_total{model=\"sinusoid\"}",
        "metasgd_adaptation_duration_seconds_bucket",
        "metasgd_sessions_live",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let spec = s.text("/openapi.yaml").await;
    assert!(spec.starts_with("openapi: 3"));
    s.stop().await;
}
