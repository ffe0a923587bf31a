//! API keys: Bearer tokens, sessions owned per key, public probes, the
//! per-key session limit, protected metrics, and keys kept out of logs.

use crate::common;

use common::procs::{sinusoid_models, Replica};
use common::{shipped_models, TestServer};
use metasgd::server::ServeConfig;
use serde_json::{json, Value};

const K1: &str = "key-one-0123456789abcdef";
const K2: &str = "key-two-0123456789abcdef";

fn support() -> Value {
    json!({"inputs": [[-2.0], [-1.0], [0.0], [1.0], [2.0]], "labels": [0.1, 0.2, 0.3, 0.4, 0.5]})
}

async fn call(s: &TestServer, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut r = s.client.request(method.parse().unwrap(), s.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    if st == 401 {
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    (st, resp.json().await.unwrap_or(Value::Null))
}

fn keyed(protect_metrics: bool, per_key: usize) -> ServeConfig {
    let mut cfg = ServeConfig::with_models(shipped_models());
    cfg.api_keys = vec![K1.into(), K2.into()];
    cfg.protect_metrics = protect_metrics;
    cfg.max_sessions_per_key = per_key;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_the_key_that_created_them() {
    let s = TestServer::start(keyed(false, 100)).await;
    for public in ["/health", "/ready", "/metrics", "/openapi.yaml"] {
        let r = s.client.get(s.url(public)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{public} is public");
    }
    for (key, why) in [
        (None, "no key"),
        (Some("key-three-0123456789abcdef"), "unknown key"),
        (Some(""), "empty key"),
    ] {
        let (st, err) = call(&s, "GET", "/v1/models", key, None).await;
        assert_eq!(
            (st, err["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{why}"
        );
    }
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("authorization", format!("Basic {K1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "only Bearer");

    let (st, created) = call(
        &s,
        "POST",
        "/v1/models/sinusoid/sessions",
        Some(K1),
        Some(json!({"support": support()})),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    let id = created["session_id"].as_str().unwrap();
    let predict = json!({"inputs": [[0.5]]});
    for (method, path, body) in [
        ("GET", format!("/v1/sessions/{id}"), None),
        ("POST", format!("/v1/sessions/{id}/predict"), Some(predict.clone())),
        ("DELETE", format!("/v1/sessions/{id}"), None),
    ] {
        let (st, err) = call(&s, method, &path, Some(K2), body.clone()).await;
        assert_eq!(
            (st, err["error"]["code"].as_str()),
            (404, Some("session_not_found")),
            "{method} {path} by K2"
        );
        assert_eq!(call(&s, method, &path, None, body).await.0, 401);
    }
    let (st, got) = call(
        &s,
        "POST",
        &format!("/v1/sessions/{id}/predict"),
        Some(K1),
        Some(predict),
    )
    .await;
    assert_eq!(st, 200, "K2's attempts left K1's session intact: {got}");
    assert_eq!(
        call(&s, "DELETE", &format!("/v1/sessions/{id}"), Some(K1), None)
            .await
            .0,
        204
    );
    let (st, _) = call(
        &s,
        "POST",
        "/v1/models/sinusoid/predict",
        Some(K2),
        Some(json!({"support": support(), "inputs": [[1.0]]})),
    )
    .await;
    assert_eq!(st, 200, "stateless predict with a key");
    let metrics = s.text("/metrics").await;
    assert!(metrics.contains("metasgd_auth_failures_total"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_session_limit_gets_429_and_others_do_not() {
    let s = TestServer::start(keyed(false, 2)).await;
    let body = json!({"support": support()});
    let mut ids = vec![];
    for _ in 0..2 {
        let (st, c) = call(&s, "POST", "/v1/models/sinusoid/sessions", Some(K1), Some(body.clone())).await;
        assert_eq!(st, 201);
        ids.push(c["session_id"].as_str().unwrap().to_owned());
    }
    let (st, err) = call(&s, "POST", "/v1/models/sinusoid/sessions", Some(K1), Some(body.clone())).await;
    assert_eq!(
        (st, err["error"]["code"].as_str()),
        (429, Some("session_limit")),
        "{err}"
    );
    assert_eq!(
        call(&s, "POST", "/v1/models/sinusoid/sessions", Some(K2), Some(body.clone()))
            .await
            .0,
        201
    );
    // Deleting one frees a place; the refused attempt stored nothing.
    assert_eq!(
        call(&s, "DELETE", &format!("/v1/sessions/{}", ids[0]), Some(K1), None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(&s, "POST", "/v1/models/sinusoid/sessions", Some(K1), Some(body))
            .await
            .0,
        201
    );
    assert_eq!(
        call(&s, "GET", &format!("/v1/sessions/{}", ids[1]), Some(K1), None)
            .await
            .0,
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_metrics_puts_metrics_behind_a_key() {
    let s = TestServer::start(keyed(true, 100)).await;
    assert_eq!(call(&s, "GET", "/metrics", None, None).await.0, 401);
    let r = s.client.get(s.url("/metrics")).bearer_auth(K2).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(&s, "GET", "/ready", None, None).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_never_a_key() {
    let keys = format!("{K1},{K2}");
    let mut server = Replica::start(
        &sinusoid_models(None),
        &["--log-format", "json"],
        &[("METASGD_API_KEYS", keys.as_str()), ("METASGD_LOG", "debug")],
    )
    .await;
    let c = reqwest::Client::new();
    let wrong = "wrong-key-0123456789abcdef";
    let mut ids = vec![];
    for key in [K1, K2, wrong] {
        let r = c
            .post(server.url("/v1/models/sinusoid/sessions"))
            .bearer_auth(key)
            .json(&json!({"support": support()}))
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        ids.push(id);
    }
    // A request id the client (or a proxy) sends is kept.
    let r = c
        .get(server.url("/v1/models"))
        .bearer_auth(K1)
        .header("x-request-id", "client-chosen-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id-42");
    assert_eq!(server.terminate(), Some(0));
    let log = server.log_text();
    for secret in [K1, K2, wrong] {
        assert!(!log.contains(secret), "a key appears in the log");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for id in ids.iter().map(String::as_str).chain(["client-chosen-id-42"]) {
        assert!(
            lines.iter().any(|l| l["span"]["request_id"] == id),
            "no log line for request {id}"
        );
    }
}
