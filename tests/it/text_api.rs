//! The shipped intents model over real HTTP: a session from a handful of
//! example utterances per intent (intent names as labels; CLINC150's
//! travel intents, whose test utterances the model's training also drew
//! from: the quality test measures held-out scenarios), batching, and bad texts answered with 4xx while the
//! session keeps answering the same.

use crate::common;

use common::{shipped_models, TestServer};
use metasgd::tasks::clinc::{utterances, Domains};
use serde_json::{json, Value};

/// Five travel intents and, per intent, its first 10 test utterances.
fn examples(dir: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let utt = utterances(dir, &[(Domains::HeldOut, &["test"])]).unwrap().remove(0);
    [
        "book_flight",
        "book_hotel",
        "car_rental",
        "exchange_rate",
        "lost_luggage",
    ]
    .iter()
    .map(|intent| {
        let texts: Vec<String> = utt
            .iter()
            .filter(|(_, i)| i == intent)
            .map(|(t, _)| t.clone())
            .take(10)
            .collect();
        assert_eq!(texts.len(), 10);
        (intent.to_string(), texts)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_session_from_five_examples_each_classifies_new_utterances() {
    let Some(dir) = common::shared_dir("data/clinc150") else {
        return;
    };
    let ex = examples(&dir);
    let s = TestServer::with_models(shipped_models()).await;
    let (st, info) = s.get("/v1/models/intents").await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["input"], json!({"kind": "text", "shape": [384 + 1024]}));

    let (mut inputs, mut labels) = (vec![], vec![]);
    for (intent, texts) in &ex {
        for t in &texts[..5] {
            inputs.push(json!(t));
            labels.push(json!(intent));
        }
    }
    let (st, created) = s
        .post(
            "/v1/models/intents/sessions",
            json!({"support": {"inputs": inputs, "labels": labels}}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let names: Vec<Value> = ex.iter().map(|(i, _)| json!(i)).collect();
    assert_eq!(created["classes"], json!(names));
    let id = created["session_id"].as_str().unwrap().to_string();

    let queries: Vec<Value> = ex.iter().flat_map(|(_, t)| t[5..].iter().map(|q| json!(q))).collect();
    let (st, out) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": queries}))
        .await;
    assert_eq!(st, 200, "{out}");
    let preds = out["predictions"].as_array().unwrap();
    let correct = preds.iter().enumerate().filter(|(i, p)| **p == names[i / 5]).count();
    assert!(
        correct >= 23,
        "only {correct}/25 utterances classified right: {preds:?}"
    );
    for row in out["probabilities"].as_array().unwrap() {
        let sum: f64 = row.as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4);
    }

    // One query alone gets the same answer as inside the padded batch.
    let (st, alone) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": [queries[7]]}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(alone["predictions"][0], preds[7]);
    let (a, b) = (&alone["probabilities"][0], &out["probabilities"][7]);
    for k in 0..5 {
        assert!(
            (a[k].as_f64().unwrap() - b[k].as_f64().unwrap()).abs() < 1e-4,
            "{a} vs {b}"
        );
    }

    // A text far over the encoder's 256 tokens but within --max-text-bytes is
    // read up to its first 256 tokens: a flight request padded with filler.
    let long = format!(
        "i need to book a flight to boston {}",
        "and then some more words ".repeat(300)
    );
    assert!(long.len() < 16 << 10);
    let (st, out) = s
        .post(
            &format!("/v1/sessions/{id}/predict"),
            json!({"inputs": [long, "¿puedo alquilar un coche? 🚗"]}),
        )
        .await;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["predictions"][0], json!("book_flight"));

    // The stateless route gives the session's answers.
    let (st, stateless) = s
        .post(
            "/v1/models/intents/predict",
            json!({"support": {"inputs": inputs, "labels": labels}, "inputs": queries}),
        )
        .await;
    assert_eq!(st, 200, "{stateless}");
    assert_eq!(stateless["predictions"].as_array().unwrap(), preds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_texts_get_422_and_the_session_is_unchanged() {
    let s = TestServer::with_models(shipped_models()).await;
    let support = json!({"support": {
        "inputs": ["book me a flight", "what's the weather like", "fly me to rome", "is it raining"],
        "labels": ["flight", "weather", "flight", "weather"]}});
    let (st, created) = s.post("/v1/models/intents/sessions", support.clone()).await;
    assert_eq!(st, 201, "{created}");
    let id = created["session_id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{id}/predict");
    let probe = json!({"inputs": ["will it snow tomorrow", "a plane ticket to oslo"]});
    let (st, before) = s.post(&path, probe.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(before["predictions"], json!(["weather", "flight"]));

    let huge = "x".repeat((16 << 10) + 1);
    let cases: Vec<(Value, &str)> = vec![
        (json!([""]), "empty_text"),
        (json!(["   \n\t"]), "empty_text"),
        (json!([huge]), "text_too_long"),
        (json!([42]), "invalid_input"),
        (json!([["a", "b"]]), "invalid_input"),
        (json!([{"text": "hi"}]), "invalid_input"),
        (json!([null]), "invalid_input"),
        (json!([]), "empty_inputs"),
    ];
    for (inputs, code) in cases {
        let (st, err) = s.post(&path, json!({ "inputs": inputs })).await;
        assert_eq!(st, 422, "{inputs}: {err}");
        assert_eq!(err["error"]["code"], code, "{inputs}: {err}");
        // The same bad text in a support set is refused the same way.
        if code != "empty_inputs" {
            let (st, err) = s
                .post(
                    "/v1/models/intents/sessions",
                    json!({"support": {"inputs": [inputs[0], "ok"], "labels": ["a", "b"]}}),
                )
                .await;
            assert_eq!(st, 422, "{err}");
            assert_eq!(err["error"]["code"], code);
        }
    }
    let (st, after) = s.post(&path, probe).await;
    assert_eq!(st, 200);
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_text_requests_share_the_encoder_and_agree() {
    let mut cfg = metasgd::server::ServeConfig::with_models(shipped_models());
    cfg.encoder_sessions = 2;
    cfg.threads = 2;
    let s = std::sync::Arc::new(TestServer::start(cfg).await);
    let support = json!({"support": {
        "inputs": ["book me a flight", "what's the weather like", "fly me to rome", "is it raining"],
        "labels": ["flight", "weather", "flight", "weather"]}});
    let (st, created) = s.post("/v1/models/intents/sessions", support).await;
    assert_eq!(st, 201, "{created}");
    let path = format!("/v1/sessions/{}/predict", created["session_id"].as_str().unwrap());
    let body = json!({"inputs": ["will it snow tomorrow", "a plane ticket to oslo", "sunny or cloudy?"]});
    let (_, want) = s.post(&path, body.clone()).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (s, path, body) = (s.clone(), path.clone(), body.clone());
            tokio::spawn(async move { s.post(&path, body).await })
        })
        .collect();
    for t in tasks {
        let (st, got) = t.await.unwrap();
        assert!(st == 200 || st == 429, "{st}: {got}");
        if st == 200 {
            assert_eq!(got, want);
        }
    }
}
