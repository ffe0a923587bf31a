//! The OpenAPI document and the router list exactly the same routes, and
//! every documented operation is answered by its handler (not a fallback).

use crate::common;

use std::collections::BTreeSet;

use common::{shipped_models, TestServer};
use metasgd::server::routes::{routes, OPENAPI};

fn spec_routes() -> BTreeSet<(String, String)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI).expect("openapi.yaml parses");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        for (method, _) in item.as_mapping().unwrap() {
            let m = method.as_str().unwrap();
            if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&m) {
                out.insert((m.to_uppercase(), path.as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn router_and_openapi_list_the_same_routes() {
    let router: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let spec = spec_routes();
    let missing_in_spec: Vec<_> = router.difference(&spec).collect();
    let missing_in_router: Vec<_> = spec.difference(&router).collect();
    assert!(missing_in_spec.is_empty(), "routes the spec lacks: {missing_in_spec:?}");
    assert!(
        missing_in_router.is_empty(),
        "spec routes the router lacks: {missing_in_router:?}"
    );
}

#[test]
fn every_schema_reference_resolves() {
    let doc: serde_yaml::Value = serde_yaml::from_str(OPENAPI).unwrap();
    let text = OPENAPI;
    for cap in text.split("$ref: \"#/components/").skip(1) {
        let target = cap.split('"').next().unwrap();
        let mut node = &doc["components"];
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref #/components/{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_reaches_its_handler() {
    let s = TestServer::with_models(shipped_models()).await;
    for (method, path) in spec_routes() {
        let concrete = path
            .replace("{model}", "sinusoid")
            .replace("{id}", "00000000000000000000000000000000");
        let r = s
            .client
            .request(method.parse().unwrap(), s.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        assert!(
            !matches!(code.as_deref(), Some("route_not_found" | "method_not_allowed")),
            "{method} {path} fell through to a fallback ({status}): {body}"
        );
    }
    s.stop().await;
}
