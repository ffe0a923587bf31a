#!/usr/bin/env python3
"""What one request can cost the server, measured on a release build with
the shipped models, `--threads 2`, default flags (the numbers in
docs/benchmarks.md come from this script):

    python3 scripts/cost-check.py [--threads 2]

1. one POST of 10,000 1x1 PNGs (about 1.1 MB) to the image model: status,
   latency and the server's peak RSS (VmHWM);
2. 20 sessions of 250 28x28 array images each (1.4 MB bodies): RSS before
   and after, and the session store's bytes (metasgd_sessions_bytes);
3. /health polled every 10 ms while six clients run 20-way 5-shot
   adaptations of 10 steps: the probe's p50/p99/max.

Needs the release binary (cargo build --release --locked). Prints Markdown.
"""

import argparse
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import BIN, ROOT, free_port  # noqa: E402


def post(url, body, timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def png_1x1():
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def ink(i):
    return [[((r * 28 + c + 7 * i) % 5) / 4 for c in range(28)] for r in range(28)]


def serve(threads):
    port = free_port()
    log = open(tempfile.mktemp(prefix="metasgd-cost-", suffix=".log"), "w")
    p = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads),
                          "--models", os.path.join(ROOT, "models")],
                         stdout=log, stderr=log, env={**os.environ, "METASGD_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            with urllib.request.urlopen(base + "/ready", timeout=1) as r:
                if r.status == 200:
                    return p, base
        except Exception:
            time.sleep(0.05)
    sys.exit(f"server never became ready (log {log.name})")


def metric(base, name):
    with urllib.request.urlopen(base + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    p, base = serve(a.threads)
    try:
        print("| check | result |\n|---|---|")
        # 1. 10,000 tiny PNGs.
        png = {"png_base64": base64.b64encode(png_1x1()).decode()}
        body = json.dumps({"support": {"inputs": [png] * 10_000, "labels": [i % 5 for i in range(10_000)]}}).encode()
        before = status(p.pid, "VmHWM")
        t = time.perf_counter()
        st, err = post(base + "/v1/models/omniglot/sessions", body)
        ms = 1000 * (time.perf_counter() - t)
        print(f"| 10,000 1x1 PNGs ({len(body) / 1e6:.2f} MB) | {st} {err['error']['code']} in {ms:.0f} ms; "
              f"peak RSS {before:.0f} → {status(p.pid, 'VmHWM'):.0f} MiB |")
        body = json.dumps({"support": {"inputs": [png] * 900, "labels": [i % 20 for i in range(900)]},
                           "steps": 10}).encode()
        t = time.perf_counter()
        st, err = post(base + "/v1/models/omniglot/sessions", body)
        ms = 1000 * (time.perf_counter() - t)
        print(f"| 900 PNGs x 10 steps | {st} {err['error']['code']} in {ms:.0f} ms |")
        # 2. 20 sessions of 250 array images.
        rss0, hwm0 = status(p.pid, "VmRSS"), status(p.pid, "VmHWM")
        size = 0
        for s in range(20):
            body = json.dumps({"support": {"inputs": [ink(i + 250 * s) for i in range(250)],
                                           "labels": [i % 10 for i in range(250)]}}).encode()
            size = len(body)
            st, out = post(base + "/v1/models/omniglot/sessions", body)
            assert st == 201, out
        time.sleep(6)  # one sweep refreshes the store gauges
        rss1, hwm1 = status(p.pid, "VmRSS"), status(p.pid, "VmHWM")
        stored = metric(base, 'metasgd_sessions_bytes{backend="memory"}')
        print(f"| 20 sessions x 250 images ({size / 1e6:.2f} MB bodies) | RSS {rss0:.0f} → {rss1:.0f} MiB "
              f"(+{rss1 - rss0:.0f}); peak {hwm0:.0f} → {hwm1:.0f} MiB; store holds {stored / 20 / 1024:.0f} KiB "
              f"a session |")
        # 3. /health under six heavy 20-way adaptations.
        heavy = json.dumps({"support": {"inputs": [ink(i) for i in range(100)], "labels": [i % 20 for i in range(100)]},
                            "steps": 10}).encode()
        stop = time.time() + 20
        done = []

        def client():
            while time.time() < stop:
                st, _ = post(base + "/v1/models/omniglot/sessions", heavy)
                done.append(st)
        clients = [threading.Thread(target=client) for _ in range(6)]
        for c in clients:
            c.start()
        time.sleep(1)
        lat = []
        while time.time() < stop:
            t = time.perf_counter()
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                r.read()
            lat.append(1000 * (time.perf_counter() - t))
            time.sleep(0.01)
        for c in clients:
            c.join()
        lat.sort()
        q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]  # noqa: E731
        codes = {c: done.count(c) for c in set(done)}
        print(f"| /health while 6 clients adapt 20-way 5-shot x 10 steps | {len(lat)} probes: p50 {q(0.5):.2f} ms, "
              f"p99 {q(0.99):.2f} ms, max {lat[-1]:.2f} ms; adaptations {codes} |")
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
