//! Bad input: every case gets a 4xx JSON error, the server stays up, and a
//! session stored before the bad requests still answers.

use crate::common;

use common::{models_with_classifier, TestServer};
use serde_json::{json, Value};

/// Sends a raw body and returns (status, JSON body).
async fn raw(s: &TestServer, method: &str, path: &str, body: &str, content_type: Option<&str>) -> (u16, Value) {
    let mut req = s
        .client
        .request(method.parse().unwrap(), s.url(path))
        .body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {text:?}"));
    (status, v)
}

fn expect(case: &str, got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{case}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{case}: {}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.len() > 10, "{case}: the message should say what is wrong: {msg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_4xx_json_error() {
    let mut cfg = metasgd::server::ServeConfig::with_models(models_with_classifier());
    cfg.max_body_bytes = 64 * 1024;
    let s = TestServer::start(cfg).await;
    let ok_support = json!({"inputs": [[0.5], [1.0], [-1.0]], "labels": [0.1, 0.2, 0.3]});
    let (st, created) = s
        .post("/v1/models/sinusoid/sessions", json!({"support": ok_support}))
        .await;
    assert_eq!(st, 201);
    let id = created["session_id"].as_str().unwrap().to_string();
    let (_, before) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": [[0.3]]}))
        .await;

    let create = "/v1/models/sinusoid/sessions";
    let j = Some("application/json");
    let sup = |inputs: Value, labels: Value| json!({"support": {"inputs": inputs, "labels": labels}}).to_string();

    expect(
        "wrong dimensions",
        raw(&s, "POST", create, &sup(json!([[0.5, 1.0]]), json!([1.0])), j).await,
        422,
        "wrong_dimensions",
    );
    expect(
        "scalar instead of vector",
        raw(&s, "POST", create, &sup(json!([0.5]), json!([1.0])), j).await,
        422,
        "invalid_input",
    );
    expect(
        "string input",
        raw(&s, "POST", create, &sup(json!(["abc"]), json!([1.0])), j).await,
        422,
        "invalid_input",
    );
    expect(
        "string in vector",
        raw(&s, "POST", create, &sup(json!([["abc"]]), json!([1.0])), j).await,
        422,
        "invalid_input",
    );
    expect(
        "NaN literal",
        raw(&s, "POST", create, r#"{"support":{"inputs":[[NaN]],"labels":[1]}}"#, j).await,
        400,
        "malformed_json",
    );
    expect(
        "Infinity literal",
        raw(
            &s,
            "POST",
            create,
            r#"{"support":{"inputs":[[Infinity]],"labels":[1]}}"#,
            j,
        )
        .await,
        400,
        "malformed_json",
    );
    expect(
        "overflows f32",
        raw(&s, "POST", create, &sup(json!([[1e39]]), json!([1.0])), j).await,
        422,
        "non_finite_input",
    );
    expect(
        "overflows f64",
        raw(
            &s,
            "POST",
            create,
            r#"{"support":{"inputs":[[1e999]],"labels":[1]}}"#,
            j,
        )
        .await,
        422,
        "non_finite_input",
    );
    expect(
        "non-finite label",
        raw(&s, "POST", create, &sup(json!([[1.0]]), json!([-1e39])), j).await,
        422,
        "non_finite_input",
    );
    expect(
        "string label for regression",
        raw(&s, "POST", create, &sup(json!([[1.0]]), json!(["a"])), j).await,
        422,
        "invalid_input",
    );
    expect(
        "empty support",
        raw(&s, "POST", create, &sup(json!([]), json!([])), j).await,
        422,
        "empty_support",
    );
    expect(
        "labels mismatch",
        raw(&s, "POST", create, &sup(json!([[1.0], [2.0]]), json!([1.0])), j).await,
        422,
        "label_mismatch",
    );
    let with = |extra: Value| {
        let mut b = json!({"support": ok_support});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    expect(
        "steps 0",
        raw(&s, "POST", create, &with(json!({"steps": 0})), j).await,
        422,
        "invalid_steps",
    );
    expect(
        "steps > max",
        raw(&s, "POST", create, &with(json!({"steps": 11})), j).await,
        422,
        "invalid_steps",
    );
    expect(
        "steps negative",
        raw(&s, "POST", create, &with(json!({"steps": -3})), j).await,
        422,
        "invalid_steps",
    );
    expect(
        "steps not a number",
        raw(&s, "POST", create, &with(json!({"steps": "two"})), j).await,
        422,
        "invalid_request",
    );
    expect(
        "ttl 0",
        raw(&s, "POST", create, &with(json!({"ttl_seconds": 0})), j).await,
        422,
        "invalid_ttl",
    );
    expect(
        "unknown field",
        raw(&s, "POST", create, &with(json!({"stpes": 2})), j).await,
        422,
        "invalid_request",
    );
    expect(
        "missing support",
        raw(&s, "POST", create, "{}", j).await,
        422,
        "invalid_request",
    );
    expect(
        "unknown model",
        raw(&s, "POST", "/v1/models/nope/sessions", &with(json!({})), j).await,
        404,
        "model_not_found",
    );
    expect(
        "unknown model info",
        raw(&s, "GET", "/v1/models/nope", "", None).await,
        404,
        "model_not_found",
    );
    expect(
        "malformed JSON",
        raw(&s, "POST", create, "{\"support\": [", j).await,
        400,
        "malformed_json",
    );
    expect(
        "not JSON at all",
        raw(&s, "POST", create, "hello", j).await,
        400,
        "malformed_json",
    );
    expect(
        "no content type",
        raw(&s, "POST", create, &with(json!({})), None).await,
        415,
        "unsupported_media_type",
    );
    let big = format!(
        "{{\"support\":{{\"inputs\":[{}],\"labels\":[]}}}}",
        vec!["[0.123456789]"; 10_000].join(",")
    );
    expect(
        "oversized body",
        raw(&s, "POST", create, &big, j).await,
        413,
        "payload_too_large",
    );

    let diverging = json!({"support": {"inputs": [[1.0], [2.0], [3.0]], "labels": [1e5, -2e5, 3e5]}, "steps": 10});
    expect(
        "adaptation diverges",
        raw(
            &s,
            "POST",
            "/v1/models/sinusoid-1step/sessions",
            &diverging.to_string(),
            j,
        )
        .await,
        422,
        "adaptation_diverged",
    );

    // Classification.
    let cls = "/v1/models/toy-classifier/sessions";
    let six: Vec<Value> = (0..6).map(|i| json!([i as f64, 0.0])).collect();
    expect(
        "more labels than n_way",
        raw(
            &s,
            "POST",
            cls,
            &sup(json!(six), json!(["a", "b", "c", "d", "e", "f"])),
            j,
        )
        .await,
        422,
        "too_many_classes",
    );
    expect(
        "float class label",
        raw(&s, "POST", cls, &sup(json!([[0.0, 1.0]]), json!([1.5])), j).await,
        422,
        "invalid_label",
    );
    expect(
        "null class label",
        raw(&s, "POST", cls, &sup(json!([[0.0, 1.0]]), json!([null])), j).await,
        422,
        "invalid_label",
    );

    // Sessions and predict.
    expect(
        "unknown session",
        raw(&s, "GET", "/v1/sessions/0123456789abcdef0123456789abcdef", "", None).await,
        404,
        "session_not_found",
    );
    expect(
        "unknown session predict",
        raw(&s, "POST", "/v1/sessions/x/predict", r#"{"inputs":[[1]]}"#, j).await,
        404,
        "session_not_found",
    );
    expect(
        "unknown session delete",
        raw(&s, "DELETE", "/v1/sessions/x", "", None).await,
        404,
        "session_not_found",
    );
    let p = format!("/v1/sessions/{id}/predict");
    expect(
        "predict wrong dims",
        raw(&s, "POST", &p, r#"{"inputs":[[1,2]]}"#, j).await,
        422,
        "wrong_dimensions",
    );
    expect(
        "predict empty",
        raw(&s, "POST", &p, r#"{"inputs":[]}"#, j).await,
        422,
        "empty_inputs",
    );
    expect(
        "predict malformed",
        raw(&s, "POST", &p, r#"{"inputs":"#, j).await,
        400,
        "malformed_json",
    );
    expect(
        "GET predict no inputs",
        raw(&s, "GET", &p, "", None).await,
        400,
        "invalid_query",
    );
    expect(
        "GET predict bad JSON",
        raw(&s, "GET", &format!("{p}?inputs=%5B%5B1"), "", None).await,
        400,
        "invalid_query",
    );
    expect(
        "GET predict wrong dims",
        raw(&s, "GET", &format!("{p}?inputs=%5B%5B1,2%5D%5D"), "", None).await,
        422,
        "wrong_dimensions",
    );
    expect(
        "stateless bad inputs",
        raw(
            &s,
            "POST",
            "/v1/models/sinusoid/predict",
            &json!({"support": ok_support, "inputs": [["x"]]}).to_string(),
            j,
        )
        .await,
        422,
        "invalid_input",
    );
    expect(
        "unknown route",
        raw(&s, "GET", "/v2/nothing", "", None).await,
        404,
        "route_not_found",
    );
    expect(
        "wrong method",
        raw(&s, "PUT", "/v1/models", "", None).await,
        405,
        "method_not_allowed",
    );

    // Still up, and the stored session is intact.
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/ready").await.0, 200);
    let (st, after) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": [[0.3]]}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(after, before);
    s.stop().await;
}
