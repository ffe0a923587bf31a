#!/usr/bin/env python3
"""Load and soak runs on loopback, as recorded in docs/benchmarks.md.

    python3 scripts/load.py sustained [--seconds 180] [--rate 1000]
        one server (memory sessions), open-loop predicts at a fixed rate
    python3 scripts/load.py replicas [--seconds 180] [--rate 500]
        three replicas on Redis behind nginx, predicts over 64 sessions
    python3 scripts/load.py sessions [--count 100000] [--store memory|redis]
        creates that many sessions with --max-sessions 10000, sampling RSS

Needs the release binary (cargo build --release --locked), oha
(cargo install oha), and for `replicas` or `--store redis` redis-server
and nginx (scripts/install-test-services.sh). Prints Markdown rows.
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "metasgd")
XS = [-4.5 + i for i in range(10)]
SUPPORT = {"inputs": [[x] for x in XS], "labels": [2.0 * math.sin(x - 0.5) for x in XS]}
PREDICT = json.dumps({"inputs": [[0.5], [1.7]]})


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
        return json.loads(data) if r.headers.get("content-type", "").startswith("application/json") else data.decode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """RSS of some processes once a second."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.samples, self.stop = pids, [], False

    def run(self):
        while not self.stop:
            self.samples.append(sum(rss_kib(p) for p in self.pids))
            time.sleep(1)


def serve(models, *args):
    port = free_port()
    log = open(tempfile.mktemp(prefix="metasgd-load-", suffix=".log"), "w")
    p = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--models", models, *args],
                         stdout=log, stderr=log, env={**os.environ, "METASGD_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if http(base + "/ready")["status"] == "ready":
                return p, base
        except Exception:
            time.sleep(0.05)
    sys.exit(f"server on {port} never became ready (log {log.name})")


def sinusoid_models():
    d = tempfile.mkdtemp(prefix="metasgd-load-models-")
    shutil.copytree(os.path.join(ROOT, "models", "sinusoid"), os.path.join(d, "sinusoid"),
                    ignore=shutil.ignore_patterns("*checkpoint.*"))
    return d


def oha(args):
    out = subprocess.run(["oha", "--no-tui", "--output-format", "json", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def row(name, r, extra=""):
    p = r["latencyPercentiles"]
    codes = r["statusCodeDistribution"]
    errors = sum(n for c, n in codes.items() if not c.startswith("2")) + sum(r["errorDistribution"].values())
    total = sum(codes.values()) + sum(r["errorDistribution"].values())
    print(f"| {name} | {r['summary']['requestsPerSec']:.0f} | {total} | {1000 * p['p50']:.2f} | "
          f"{1000 * p['p99']:.2f} | {1000 * p['p99.9']:.2f} | {errors} | {extra} |")
    print("status codes:", codes, "errors:", r["errorDistribution"], file=sys.stderr)


def predict_load(urls, seconds, rate):
    path = tempfile.mktemp(prefix="metasgd-urls-")
    with open(path, "w") as f:
        f.write("\n".join(urls) + "\n")
    return oha(["-z", f"{seconds}s", "--wait-ongoing-requests-after-deadline", "-q", str(rate),
                "--latency-correction", "-c", "32", "-m", "POST",
                "-H", "content-type: application/json", "-d", PREDICT, "--urls-from-file", path])


def sustained(a):
    p, base = serve(sinusoid_models(), "--threads", "2")
    sid = http(base + "/v1/models/sinusoid/sessions", {"support": SUPPORT})["session_id"]
    s = Sampler([p.pid])
    s.start()
    r = predict_load([f"{base}/v1/sessions/{sid}/predict"], a.seconds, a.rate)
    s.stop = True
    row(f"1 server, {a.rate}/s for {a.seconds} s", r, f"RSS {min(s.samples) // 1024}–{max(s.samples) // 1024} MiB")
    p.terminate()


def replicas(a):
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    models = sinusoid_models()
    procs = [serve(models, "--threads", "1", "--sessions", f"redis://127.0.0.1:{redis_port}/") for _ in range(3)]
    lb = start_nginx([b.rsplit(":", 1)[1] for _, b in procs])
    ids = [http(lb + "/v1/models/sinusoid/sessions", {"support": SUPPORT})["session_id"] for _ in range(64)]
    s = Sampler([p.pid for p, _ in procs])
    s.start()
    r = predict_load([f"{lb}/v1/sessions/{i}/predict" for i in ids], a.seconds, a.rate)
    s.stop = True
    row(f"3 replicas + Redis + nginx, {a.rate}/s for {a.seconds} s", r,
        f"RSS of the 3: {min(s.samples) // 1024}–{max(s.samples) // 1024} MiB")
    for p, _ in procs:
        p.terminate()
    redis.terminate()


def start_nginx(ports):
    d = tempfile.mkdtemp(prefix="metasgd-nginx-")
    port = free_port()
    servers = "".join(f"server 127.0.0.1:{p};" for p in ports)
    conf = (f"worker_processes 1; daemon off; pid {d}/pid; error_log {d}/error.log warn;"
            f"events {{ worker_connections 1024; }}"
            f"http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;"
            f" fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;"
            f" upstream m {{ {servers} keepalive 64; }}"
            f" server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://m;"
            f" proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}")
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(conf)
    subprocess.Popen(["nginx", "-p", d, "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf"])
    time.sleep(0.5)
    return f"http://127.0.0.1:{port}"


def sessions(a):
    extra = []
    redis = None
    if a.store == "redis":
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        extra = ["--sessions", f"redis://127.0.0.1:{redis_port}/"]
    p, base = serve(sinusoid_models(), "--threads", "2", "--max-sessions", "10000", "--model-cache-mb", "16", *extra)
    pids = [p.pid] + ([redis.pid] if redis else [])
    s = Sampler(pids)
    s.start()
    body = json.dumps({"support": SUPPORT})
    checkpoints = []
    done = 0
    step = a.count // 10
    t0 = time.time()
    codes = {}
    while done < a.count:
        r = oha(["-n", str(step), "-c", "16", "-m", "POST", "-H", "content-type: application/json", "-d", body,
                 f"{base}/v1/models/sinusoid/sessions"])
        for c, n in r["statusCodeDistribution"].items():
            codes[c] = codes.get(c, 0) + n
        done += step
        checkpoints.append((done, rss_kib(p.pid) // 1024, (rss_kib(redis.pid) // 1024) if redis else None))
    elapsed = time.time() - t0
    s.stop = True
    metrics = http(base + "/metrics")
    live = [l for l in metrics.splitlines() if l.startswith("metasgd_sessions_live")]
    evicted = [l for l in metrics.splitlines() if l.startswith("metasgd_session_evictions_total")]
    cache = [l for l in metrics.splitlines() if l.startswith("metasgd_model_cache_bytes")]
    print(f"{a.count} sessions created in {elapsed:.0f} s ({a.count / elapsed:.0f}/s), status codes {codes}")
    print("| sessions created | server RSS (MiB) |" + (" Redis RSS (MiB) |" if redis else ""))
    print("|---|---|" + ("---|" if redis else ""))
    for n, m, rm in checkpoints:
        print(f"| {n} | {m} |" + (f" {rm} |" if redis else ""))
    print(f"max RSS sampled (server{' + Redis' if redis else ''}): {max(s.samples) // 1024} MiB")
    print(*live, *evicted, *cache, sep="\n")
    p.terminate()
    if redis:
        redis.terminate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sustained", "replicas", "sessions"])
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--store", choices=["memory", "redis"], default="memory")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release --locked")
    print("| run | req/s | requests | p50 ms | p99 ms | p99.9 ms | errors | |\n|---|---|---|---|---|---|---|---|"
          if a.what != "sessions" else "", end="\n" if a.what != "sessions" else "")
    {"sustained": sustained, "replicas": replicas, "sessions": sessions}[a.what](a)


if __name__ == "__main__":
    main()
