//! What the benchmarks share: latency summaries (mean, p50, p99 of timed
//! runs) and a server on an ephemeral loopback port.

use std::time::{Duration, Instant};

use crate::server::{serve, AppState, ConnLimits};

/// Latency summary in milliseconds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

pub fn summarize(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Summary {
        n: ms.len(),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        p50: q(0.5),
        p99: q(0.99),
    }
}

pub(crate) fn time_it(iters: usize, mut f: impl FnMut()) -> Summary {
    for _ in 0..iters.min(20) {
        f();
    }
    summarize(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// A server on an ephemeral loopback port, once ready: its base URL, the
/// sender that stops it, and its task.
pub(crate) async fn start_server(
    state: AppState,
    max_body_bytes: usize,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        state.clone(),
        ConnLimits {
            max_body_bytes,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        },
        async move {
            let _ = rx.await;
        },
    ));
    while !state.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((base, tx, server))
}
