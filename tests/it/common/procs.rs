//! Real server processes (the built `metasgd` binary) and a real nginx in
//! front of them, for the multi-replica and restart tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{free_port, have_program, shipped_models, temp_dir, wait_for_port};

/// A models folder holding only the shipped sinusoid model; with `nudge`,
/// θ is shifted by that much (a "new deploy" of the same model).
pub fn sinusoid_models(nudge: Option<f32>) -> PathBuf {
    let d = temp_dir("sine-models");
    let dst = d.join("sinusoid");
    std::fs::create_dir_all(&dst).unwrap();
    let src = shipped_models().join("sinusoid");
    match nudge {
        None => {
            for f in ["manifest.json", "model.safetensors"] {
                std::fs::copy(src.join(f), dst.join(f)).unwrap();
            }
        }
        Some(by) => {
            let m = metasgd::model::load_model(&src, &candle_core::Device::Cpu).unwrap();
            let theta: Vec<_> = m.theta.iter().map(|t| (t + by as f64).unwrap()).collect();
            metasgd::model::save_model(&dst, &m.manifest, &theta, &m.rule).unwrap();
        }
    }
    d
}

/// One `metasgd serve` process on a free port; killed (SIGKILL) on drop.
pub struct Replica {
    pub port: u16,
    pub child: Child,
    pub log: PathBuf,
}

impl Replica {
    /// Starts `metasgd serve` with `args` and waits until /ready answers 200.
    pub async fn start(models: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = temp_dir("replica-log").join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_metasgd"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(if args.contains(&"--threads") {
                &[][..]
            } else {
                &["--threads", "1"][..]
            })
            .arg("--models")
            .arg(models)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting metasgd serve");
        let r = Self { port, child, log };
        r.wait_ready().await;
        r
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(resp) = client.get(self.url("/ready")).send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("replica on {} never became ready; log:\n{}", self.port, self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The replica's /metrics text.
    pub async fn metrics(&self) -> String {
        super::get_text(&reqwest::Client::new(), &self.url("/metrics")).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// nginx balancing round robin over `ports`, on a free port; stopped on drop.
pub struct Nginx {
    pub port: u16,
    child: Child,
}

impl Nginx {
    pub fn start(ports: &[u16]) -> Option<Self> {
        if !have_program("nginx") && !Path::new("/usr/sbin/nginx").exists() {
            return None;
        }
        let bin = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let dir = temp_dir("nginx");
        let port = free_port();
        let servers: String = ports
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream metasgd {{\n{servers}    keepalive 16;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 8m;\n\
                 location / {{\n      proxy_pass http://metasgd;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_connect_timeout 1s;\n\
                   proxy_next_upstream error timeout;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("starting nginx");
        assert!(wait_for_port(port, 10), "nginx did not listen on {port}");
        Some(Self { port, child })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
