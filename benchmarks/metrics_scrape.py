#!/usr/bin/env python3
"""Time GET /metrics with N models loaded (default 10), each with some traffic behind it.

    python benchmarks/metrics_scrape.py [--models 10] [--scrapes 50]

Starts its own modelserve on free ports with tiny function handlers, sends a few requests to every
model so every family has samples, then scrapes /metrics repeatedly and prints p50/p99/max in ms.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HANDLER = '''
def handle(data, context):
    if data is None:
        return None
    context.metrics.add_counter("Items", len(data), dimensions={"kind": "bench"})
    return ["ok"] * len(data)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = root / "store"
        store.mkdir()
        (root / "h.py").write_text(HANDLER)
        for i in range(args.models):
            subprocess.run([str(bindir / "modelserve-archiver"), "--model-name", f"m{i}", "--version", "1.0",
                            "--handler", str(root / "h.py"), "--export-path", str(store)], check=True)
        ports = [free_port() for _ in range(5)]
        (root / "cfg.properties").write_text(
            f"inference_address=http://127.0.0.1:{ports[0]}\nmanagement_address=http://127.0.0.1:{ports[1]}\n"
            f"metrics_address=http://127.0.0.1:{ports[2]}\ngrpc_inference_port={ports[3]}\n"
            f"grpc_management_port={ports[4]}\nmodel_store={store}\ndefault_workers_per_model=1\n")
        env = dict(os.environ, MODELSERVE_PID_FILE=str(root / "pid"))
        proc = subprocess.Popen([str(bindir / "modelserve"), "--start", "--foreground", "--ts-config",
                                 str(root / "cfg.properties"), "--ncs", "--disable-token-auth", "--log-dir",
                                 str(root / "logs"), "--models", "all"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{ports[0]}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(base + "/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            for i in range(args.models):
                for _ in range(20):
                    requests.post(f"{base}/predictions/m{i}", data="x", headers={"Content-Type": "text/plain"})
            url = f"http://127.0.0.1:{ports[2]}/metrics"
            session = requests.Session()
            times, size = [], 0
            for _ in range(args.scrapes):
                t = time.perf_counter()
                r = session.get(url, timeout=10)
                times.append((time.perf_counter() - t) * 1000)
                size = len(r.content)
            times.sort()
            print(json.dumps({"models": args.models, "scrapes": args.scrapes, "bytes": size,
                              "p50_ms": round(statistics.median(times), 2),
                              "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
                              "max_ms": round(times[-1], 2)}))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
