//! The HTTP server: routes, request and response types, auth, metrics, and
//! the connection loop (limits on connections and header time, graceful
//! shutdown). Everything else is the core's (`crate::infer`); this module
//! only speaks HTTP to it.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod json;
pub mod metrics;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub use app::app;
pub use config::{build_state, default_threads, LogFormat, ServeConfig};
pub use state::AppState;

/// How connections are held: header time and how many at once.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_body_bytes: usize,
    /// Time to send a request's headers, and the longest idle keep-alive wait.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn of(cfg: &ServeConfig) -> Self {
        Self {
            max_body_bytes: cfg.max_body_bytes,
            header_read_timeout: Duration::from_secs(cfg.header_read_timeout.max(1)),
            max_connections: cfg.max_connections.max(1),
        }
    }
}

/// Warms the models up, then marks the state ready.
pub async fn warm_up(state: &AppState) -> anyhow::Result<()> {
    state.core.warm_up().await?;
    state.set_ready(true);
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves. Then readiness turns
/// false, new connections are refused, and requests in flight get up to
/// the drain timeout to finish.
///
/// Each connection is HTTP/1.1 with hyper's header-read timeout (which also
/// closes keep-alive connections idle that long); past `max_connections`
/// open, a new connection is closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let warm = state.clone();
    tokio::spawn(async move {
        match warm_up(&warm).await {
            Ok(()) => tracing::info!("models warmed up; ready"),
            Err(e) => tracing::error!(error = %e, "warm-up failed; staying not ready"),
        }
    });
    let sweep = state.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweep.core.sessions.sweep().await;
            metrics::handle().run_upkeep();
        }
    });
    let drain = state.drain_timeout;
    let router = app(state.clone(), limits.max_body_bytes);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or the peer left: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| router.clone().oneshot(req));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        metrics::connections_open(limits.max_connections - open.available_permits());
        let open = open.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
            metrics::connections_open(limits.max_connections - open.available_permits());
        });
    }
    drop(listener);
    state.set_ready(false);
    tracing::info!(
        deadline_s = drain.as_secs(),
        "shutting down: not ready, draining requests in flight"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("drain deadline passed with requests still in flight; exiting");
        }
    }
    sweeper.abort();
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `metasgd serve`: load, bind, serve until SIGTERM.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let state = build_state(&cfg)?;
    for (name, m) in state.core.registry.iter() {
        tracing::info!(model = %name, version = %m.info.version, params = m.info.num_params, device = %m.info.device, "loaded");
    }
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&(cfg.host.as_str(), cfg.port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| anyhow::anyhow!("invalid --host/--port: cannot resolve {}:{}", cfg.host, cfg.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, threads = cfg.threads, "listening");
    serve(listener, state, ConnLimits::of(&cfg), shutdown_signal()).await
}
