//! The real binary and a real SIGTERM: a request in flight finishes, then the
//! process exits cleanly.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metasgd"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--models",
        ])
        .arg(common::shipped_models())
        .env("METASGD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The log line "listening addr=127.0.0.1:PORT" tells the ephemeral port.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(rest) = line.split("127.0.0.1:").nth(1) {
            break rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>();
        }
    };
    std::thread::spawn(move || lines.for_each(drop)); // keep draining the log
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..500 {
        if client
            .get(format!("{base}/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let xs: Vec<f64> = (0..10_000).map(|i| -5.0 + 10.0 * i as f64 / 9999.0).collect();
    let body = json!({"support": {"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
                                  "labels": xs.iter().map(|x| x.sin()).collect::<Vec<_>>()},
                      "steps": 10});
    let (c, url) = (client.clone(), format!("{base}/v1/models/sinusoid/sessions"));
    let in_flight = tokio::spawn(async move { c.post(url).json(&body).send().await.unwrap().status().as_u16() });
    // Wait until the server reports the request as admitted, then signal.
    let mut admitted = false;
    for _ in 0..1000 {
        let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
        if metrics
            .lines()
            .any(|l| l.starts_with("metasgd_compute_in_flight ") && !l.ends_with(" 0"))
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(admitted, "the request never showed up in metasgd_compute_in_flight");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(
        in_flight.await.unwrap(),
        201,
        "the request in flight must finish after SIGTERM"
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the server must exit 0 after SIGTERM, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_the_drain_deadline_with_work_still_queued() {
    let models = common::procs::sinusoid_models(None);
    let mut server = common::procs::Replica::start(&models, &["--drain-timeout", "1"], &[]).await;
    let xs: Vec<f64> = (0..10_000).map(|i| -5.0 + 10.0 * i as f64 / 9999.0).collect();
    let body = json!({"support": {"inputs": xs.iter().map(|x| json!([x])).collect::<Vec<_>>(),
                                  "labels": xs.iter().map(|x| x.sin()).collect::<Vec<_>>()},
                      "steps": 10});
    // About 0.3 s each on one thread: 16 of them queue several seconds of work.
    let client = reqwest::Client::new();
    let url = server.url("/v1/models/sinusoid/sessions");
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let (c, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { c.post(url).json(&body).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = server.terminate();
        (code, server)
    })
    .await
    .unwrap();
    let took = start.elapsed();
    assert_eq!(code.0, Some(0));
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} with a 1 s drain deadline"
    );
    let mut finished = 0;
    for r in requests {
        if let Ok(Ok(201)) = r.await {
            finished += 1;
        }
    }
    assert!(
        finished < 16,
        "the deadline cut the queue short ({finished} of 16 finished)"
    );
}
