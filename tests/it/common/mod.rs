//! Helpers shared by the integration tests: where the shared data lives.
#![allow(dead_code)]

pub mod procs;

use std::path::PathBuf;

/// `../shared` beside the checkout (or `$METASGD_SHARED`). Returns `None`
/// (the test skips) when it is missing, except under `CI=true`, where a
/// missing folder fails the test.
pub fn shared_dir(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("METASGD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let p = root.join(sub);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{} is missing, and CI=true requires it", p.display());
    }
    eprintln!("skipping: {} not found (set METASGD_SHARED)", p.display());
    None
}

use candle_core::{Device, Tensor};
use metasgd::model::{save_model, Architecture, InputKind, InputSpec, Manifest, TaskKind};
use metasgd::server::{build_state, serve, AppState, ConnLimits, ServeConfig};

/// The shipped models folder.
pub fn shipped_models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A fresh temporary folder (removed by the OS's tmp cleaning; unique per call).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("metasgd-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A models folder with the shipped sinusoid model, the one-step Meta-SGD
/// sinusoid baseline served as "sinusoid-1step" (no gradient bound, so a
/// wild support set can still diverge), and a small 5-way classifier
/// ("toy-classifier": MLP 2-16-5, θ seeded, α one scalar per tensor).
pub fn models_with_classifier() -> PathBuf {
    let d = temp_dir("models");
    let src = shipped_models().join("sinusoid");
    std::fs::create_dir_all(d.join("sinusoid")).unwrap();
    for f in ["manifest.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.join("sinusoid").join(f)).unwrap();
    }
    let one = src.join("baselines/metasgd-1step");
    std::fs::create_dir_all(d.join("sinusoid-1step")).unwrap();
    std::fs::copy(
        one.join("model.safetensors"),
        d.join("sinusoid-1step/model.safetensors"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(one.join("manifest.json"))
        .unwrap()
        .replace("\"sinusoid-metasgd-1step\"", "\"sinusoid-1step\"");
    std::fs::write(d.join("sinusoid-1step/manifest.json"), manifest).unwrap();
    let arch = Architecture::Mlp { sizes: vec![2, 16, 5] };
    let manifest = Manifest {
        inner_loss: Default::default(),
        name: "toy-classifier".into(),
        task: TaskKind::Classification,
        input: InputSpec {
            kind: InputKind::Vector,
            shape: vec![2],
        },
        architecture: arch.clone(),
        n_way: Some(5),
        update_rule: Default::default(),
        inner_grad_clip: None,
        default_steps: 5,
        max_steps: 50,
        weights: "model.safetensors".into(),
        family: None,
        encoder: None,
        limits: Default::default(),
        description: "test classifier".into(),
    };
    let mut seed = 1u64;
    let theta: Vec<Tensor> = arch
        .params()
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.5
                })
                .collect();
            Tensor::from_vec(v, s.shape.as_slice(), &Device::Cpu).unwrap()
        })
        .collect();
    let alpha: Vec<Tensor> = arch
        .params()
        .iter()
        .map(|_| Tensor::new(0.5f32, &Device::Cpu).unwrap())
        .collect();
    save_model(
        &d.join("toy-classifier"),
        &manifest,
        &theta,
        &metasgd::model::rule::Rule::metasgd(&alpha),
    )
    .unwrap();
    d
}

/// A server on an ephemeral loopback port.
pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(cfg: ServeConfig) -> Self {
        let state = build_state(&cfg).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state.clone(), ConnLimits::of(&cfg), async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{base}/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self {
            base,
            state,
            client,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn with_models(models: PathBuf) -> Self {
        Self::start(ServeConfig::with_models(models)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// A GET's body as text (for /metrics and /openapi.yaml).
    pub async fn text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn trigger_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Whether `prog` is on PATH. Under `CI=true` a missing program fails the
/// test (`.ci/run` installs it); elsewhere the test skips.
pub fn have_program(prog: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
            panic!("{prog} is not installed, and CI=true requires it (.ci/run installs it)");
        }
        eprintln!("skipping: {prog} not found on PATH");
    }
    found
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, secs: u64) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// A real redis-server on a free loopback port, without persistence;
/// killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
    _dir: PathBuf,
}

impl RedisServer {
    /// `None` (skip) when redis-server is not installed, outside CI.
    pub fn start() -> Option<Self> {
        if !have_program("redis-server") {
            return None;
        }
        Some(Self::start_on(free_port()))
    }

    /// A redis-server on `port` (for restarting one where it was).
    pub fn start_on(port: u16) -> Self {
        let dir = temp_dir("redis");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        assert!(wait_for_port(port, 10), "redis-server did not listen on {port}");
        Self { port, child, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a GET as text (a process's /metrics, say).
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}
