#!/usr/bin/env python3
"""Where the load generators top out: each client against the bare aiohttp ceiling server
(/work/shared/bench/aiohttp_ceiling.py: no model, no queue, no IPC), which answers faster than any
model server can. Reports req/s and the client's own CPU time per request (µs).

    .venv/bin/python benchmarks/client_limits.py [-d 5] [--warmup 1] [-c 1,16,64]

The client and the server share the machine's cores: on a 2-core machine the req/s figures are the
pair's limit, and the CPU µs per request is the client's price (what it takes from a server under test).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("BENCH_SHARED", "/work/shared/bench"))
BIN = Path(sys.executable).parent
BODY = SHARED / "models" / "linear_body.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    c0 = children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return out, children_cpu() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("-c", "--concurrency", default="1,16,64")
    ap.add_argument("--clients", default="wrk,raw,aiohttp,raw-p2", help="wrk, raw, aiohttp, raw-p2, aiohttp-p2")
    a = ap.parse_args()
    port = free_port()
    srv = subprocess.Popen([sys.executable, str(SHARED / "aiohttp_ceiling.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        time.sleep(1.5)
        for client in a.clients.split(","):
            if client == "wrk" and not shutil.which("wrk"):
                continue
            for c in (int(x) for x in a.concurrency.split(",")):
                if client == "wrk":
                    env = dict(os.environ, BENCH_BODY=str(BODY), BENCH_CTYPE="text/plain")
                    base = ["wrk", "-t", "1", "-c", str(c), "--timeout", "10s", "-s", str(SHARED / "post.lua"),
                            url + "/predictions/linear"]
                    if a.warmup:
                        run(base + ["-d", f"{max(1, round(a.warmup))}s"], env)
                    out, cpu = run(base + ["-d", f"{max(1, round(a.duration))}s"], env)
                    r = json.loads(next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))[11:])
                    cpu_measured = cpu  # wrk's whole run: its start-up is negligible
                else:
                    kind, _, procs = client.partition("-p")
                    cmd = [str(BIN / "modelserve-bench"), "--url", url, "-m", "linear", "--body", str(BODY),
                           "-T", "text/plain", "-c", str(c), "-d", str(a.duration), "--warmup", str(a.warmup),
                           "--client", kind, "--processes", procs or "1", "--metrics-url", "none", "--json"]
                    out, _ = run(cmd)
                    r = json.loads(out)["results"][0]
                    # the client's own accounting of the measured window (no start-up, no warm-up)
                    cpu_measured = sum(r["client_cpu_pct"]) / 100 * r["duration_s"]
                n = r["requests"]
                rows.append({"client": client, "c": c, "rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                             "client_cpu_us_per_req": round(1e6 * cpu_measured / max(n, 1), 1)})
                print(f"{client:10} c={c:<3} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                      f"client CPU {rows[-1]['client_cpu_us_per_req']} µs/req", file=sys.stderr)
                time.sleep(1)
    finally:
        srv.terminate()
        srv.wait(10)
    print(json.dumps({"nproc": os.cpu_count(), "duration_s": a.duration, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
