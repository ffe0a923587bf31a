//! HTTP hardening: half-open connections are closed after the header-read
//! timeout, connections past the cap are refused at once, and a real
//! client is still served; idle keep-alive connections are closed too.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{shipped_models, TestServer};
use metasgd::server::ServeConfig;

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes).
fn closed_within(mut c: TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return start.elapsed() < limit,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_lock_out_a_real_client() {
    let mut cfg = ServeConfig::with_models(shipped_models());
    cfg.max_connections = 16;
    cfg.header_read_timeout = 1;
    let s = TestServer::start(cfg).await;
    let a = addr(&s);
    let stalled: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut c = TcpStream::connect(&a).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
            c
        })
        .collect();
    // A real client, retrying as a load balancer would, is served within a
    // few header timeouts even though 48 connections stalled mid-header.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut served = false;
    while start.elapsed() < Duration::from_secs(6) {
        if let Ok(r) = client.get(s.url("/health")).send().await {
            if r.status() == 200 {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a real client was not served within 6 s");
    let closed = tokio::task::spawn_blocking(move || {
        stalled
            .into_iter()
            .filter(|c| closed_within(c.try_clone().unwrap(), Duration::from_secs(4)))
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 48, "every stalled connection was closed by the server");
    assert!(s.text("/metrics").await.contains("metasgd_connections_refused_total"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let mut cfg = ServeConfig::with_models(shipped_models());
    cfg.header_read_timeout = 1;
    let s = TestServer::start(cfg).await;
    let a = addr(&s);
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(&a).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let start = Instant::now();
        (closed_within(c, Duration::from_secs(5)), start.elapsed())
    })
    .await
    .unwrap();
    assert!(closed.0, "the idle connection stayed open");
    assert!(closed.1 < Duration::from_secs(4), "closed after {:?}", closed.1);
    s.stop().await;
}
