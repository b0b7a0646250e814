#!/usr/bin/env python3
"""The side-by-side benchmark matrix: modelserve against TorchServe, same archives, same run.

    .venv/bin/python benchmarks/run_matrix.py [--torchserve-bin /tmp/ts-venv/bin/torchserve]
        [--duration 15] [--warmup 3] [--tool wrk|modelserve-bench] [--out benchmarks/RESULTS.md]

Cells (workers, batch size; max_batch_delay 5 ms): linear w1 b1, linear w1 b8, linear w2 b8,
mlp w1 b1, mlp w1 b8; each at c=16 and c=64 (linear w1 b1 also at c=1, for the per-request
overhead). Per cell, each server is started fresh, the model registered over the management API
(``POST /models?url=M.mar&initial_workers=W&batch_size=B&max_batch_delay=5&synchronous=true``),
each concurrency gets a warm-up then a measured window, and the server is stopped; modelserve and
TorchServe alternate cell by cell so drift on a shared machine hits both. Also measured: the bare
aiohttp ceiling (/work/shared/bench/aiohttp_ceiling.py), the in-process limit (inproc_bench.py),
cold start to the first answered prediction, and resident memory with both bench models loaded.
Prints PASS/FAIL per target of the performance issue and writes a markdown report (--out).

TorchServe is optional: give --torchserve-bin (or have ``torchserve`` on PATH, or /tmp/ts-venv);
without it the TorchServe columns are skipped with a note. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", "/work/shared/bench"))
MODELS = SHARED / "models"
BODIES = {"linear": (MODELS / "linear_body.txt", "text/plain"), "mlp": (MODELS / "mlp_body.json", "application/json")}
CELLS = [("linear", 1, 1), ("linear", 1, 8), ("linear", 2, 8), ("mlp", 1, 1), ("mlp", 1, 8)]
BATCH_DELAY_MS = 5
BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: Optional[bytes] = None, ctype: str = "application/octet-stream",
         timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": ctype} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False


def cmd_str(cmd: list[str], env: Optional[dict[str, str]] = None) -> str:
    pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (pre + " " if pre else "") + " ".join(shlex.quote(str(c)) for c in cmd)


# --------------------------------------------------------------------------------------------------
# Archives


def build_archives(store: Path, work: Path) -> list[str]:
    """torch.manual_seed(0) state dicts of the two bench models, archived with modelserve-archiver."""
    import torch

    sys.path.insert(0, str(MODELS))
    from linear_model import LinearModel  # type: ignore
    from mlp_model import MLPModel  # type: ignore

    store.mkdir(parents=True, exist_ok=True)
    cmds = []
    for name, cls in (("linear", LinearModel), ("mlp", MLPModel)):
        torch.manual_seed(0)
        pt = work / f"{name}.pt"
        torch.save(cls().state_dict(), pt)
        cmd = [str(BIN / "modelserve-archiver"), "--model-name", name, "--version", "1.0",
               "--model-file", str(MODELS / f"{name}_model.py"), "--serialized-file", str(pt),
               "--handler", str(MODELS / f"{name}_handler.py"), "--extra-files", str(MODELS / "bench_base.py"),
               "--export-path", str(store), "--force"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        cmds.append(cmd_str(cmd))
    return cmds


# --------------------------------------------------------------------------------------------------
# Servers


class ModelServe:
    name = "modelserve"

    def __init__(self, store: Path, work: Path) -> None:
        self.store = store
        self.work = work
        self.proc: Optional[subprocess.Popen] = None
        self.n = 0
        self.cmd_text = ""

    def start(self, models: Optional[list[str]] = None, wait: bool = True) -> None:
        self.n += 1
        wd = self.work / f"ms{self.n}"
        wd.mkdir(parents=True, exist_ok=True)
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
        cfg = wd / "config.properties"
        cfg.write_text(textwrap.dedent(f"""\
            inference_address=http://127.0.0.1:{self.ports['inference']}
            management_address=http://127.0.0.1:{self.ports['management']}
            metrics_address=http://127.0.0.1:{self.ports['metrics']}
            grpc_inference_port={self.ports['grpc']}
            grpc_management_port={self.ports['grpc_mgmt']}
            default_workers_per_model=1
            enable_model_api=true
            """))
        cmd = [str(BIN / "modelserve"), "--start", "--foreground", "--ts-config", str(cfg), "--ncs",
               "--disable-token-auth", "--model-store", str(self.store), "--log-dir", str(wd / "logs")]
        if models:
            cmd += ["--models", *models]
        env = {"MODELSERVE_PID_FILE": str(wd / "modelserve.pid")}
        self.cmd_text = cmd_str(cmd, env)
        self.logdir = wd / "logs"
        out = open(wd / "server.out", "wb")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=wd,
                                     env=dict(os.environ, **env))
        out.close()
        if wait and not wait_until(lambda: http("GET", self.url + "/ping", timeout=2)[0] == 200, 120, 0.05):
            raise RuntimeError(f"modelserve did not come up; see {wd / 'server.out'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def mgmt(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics(self) -> Optional[str]:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    def frontend_pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class TorchServe:
    name = "TorchServe"

    def __init__(self, binary: Path, store: Path, work: Path, config: Path) -> None:
        self.bin = binary
        self.store = store
        self.work = work
        self.config = config
        self.ports = {}
        for line in config.read_text().splitlines():
            k, _, v = line.partition("=")
            if k.strip() in ("inference_address", "management_address", "metrics_address"):
                self.ports[k.strip().split("_")[0]] = int(v.strip().rsplit(":", 1)[1])
        self.n = 0
        self.running = False
        self.cmd_text = ""
        self.env = dict(os.environ, PATH=f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def mgmt(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    metrics = None  # TorchServe's default metrics mode is log; no server-side breakdown

    def start(self, models: Optional[list[str]] = None, wait: bool = True) -> None:
        self.n += 1
        wd = self.work / f"ts{self.n}"
        wd.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.bin), "--start", "--ncs", "--ts-config", str(self.config), "--model-store", str(self.store)]
        if models:
            cmd += ["--models", *models]
        self.cmd_text = cmd_str(cmd)
        self.logdir = wd / "logs"
        with open(wd / "server.out", "wb") as out:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=wd, env=self.env,
                           check=True)
        self.running = True
        if wait and not wait_until(lambda: http("GET", self.url + "/ping", timeout=2)[0] == 200, 180, 0.05):
            raise RuntimeError(f"TorchServe did not come up; see {wd}")

    def frontend_pid(self) -> Optional[int]:
        import psutil

        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.ports["inference"] and c.pid:
                return c.pid
        return None

    def stop(self) -> None:
        if not self.running:
            return
        pid = self.frontend_pid()
        subprocess.run([str(self.bin), "--stop"], capture_output=True, cwd=self.work, env=self.env)
        if pid:
            import psutil

            try:
                psutil.Process(pid).wait(60)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not port_busy(self.ports["inference"]), 30, 0.1)
        self.running = False


def register(server: Any, model: str, workers: int, batch: int) -> None:
    url = (f"{server.mgmt}/models?url={model}.mar&initial_workers={workers}&batch_size={batch}"
           f"&max_batch_delay={BATCH_DELAY_MS}&synchronous=true")
    status, body = http("POST", url, timeout=300)
    if status != 200:
        raise RuntimeError(f"{server.name}: register {model} -> {status} {body[:300]!r}")


def handler_threads(logdir: Path) -> Optional[str]:
    """The bench handler prints its torch thread count at initialize; find it in the server's logs."""
    for p in sorted(logdir.glob("*.log")) if logdir.exists() else []:
        for line in p.read_text(errors="replace").splitlines():
            i = line.find("bench handler ready:")
            if i >= 0:
                return line[i + len("bench handler ready:"):].strip()
    return None


# --------------------------------------------------------------------------------------------------
# Load


def run_wrk(url: str, body: Path, ctype: str, conc: int, secs: float, timeout: float = 10) -> dict[str, Any]:
    env = dict(os.environ, BENCH_BODY=str(body), BENCH_CTYPE=ctype)
    cmd = ["wrk", "-t", "1", "-c", str(conc), "-d", f"{max(1, round(secs))}s", "--timeout", f"{int(timeout)}s",
           "-s", str(SHARED / "post.lua"), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    r = json.loads(line[len("BENCH_JSON "):])
    r["errors"] = {k: v for k, v in r["errors"].items() if v}
    return r


def run_ms_bench(url: str, body: Path, ctype: str, conc: int, secs: float, timeout: float = 10) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from modelserve.bench import Target, run_bench

    t = Target(mode="rest", url=url, model="", body=body.read_bytes(), content_type=ctype, timeout=timeout)
    rep = run_bench(t, [("closed", conc)], duration=secs, warmup=0, metrics_url=None)
    return rep["results"][0]


def wait_quiet(max_wait: float, threshold: float = 30.0) -> float:
    """On a shared machine: wait (up to max_wait s) until the CPUs are busy < threshold % over 1 s
    (our servers are idle at this point). Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        b0 = _system_busy()
        time.sleep(1.0)
        b1 = _system_busy()
        if b0 is None or b1 is None or 100 * (b1 - b0) < threshold or time.monotonic() - t0 >= max_wait:
            return round(time.monotonic() - t0 - 1.0, 1)


class Load:
    def __init__(self, tool: str, duration: float, warmup: float, pause: float, quiet_wait: float = 0) -> None:
        self.tool, self.duration, self.warmup, self.pause = tool, duration, warmup, pause
        self.quiet_wait = quiet_wait
        self.fn = run_wrk if tool == "wrk" else run_ms_bench

    def point(self, url: str, model: str, conc: int, pids: Optional[dict[str, int]] = None,
              metrics_url: Optional[str] = None) -> dict[str, Any]:
        body, ctype = BODIES[model]
        waited = wait_quiet(self.quiet_wait) if self.quiet_wait > 0 else 0.0
        if self.warmup > 0:
            self.fn(url, body, ctype, conc, self.warmup)
            time.sleep(self.pause)
        before = _scrape(metrics_url)
        cpu0, sys0, own0 = _cpu(pids), _system_busy(), _own_cpu()
        t0 = time.monotonic()
        r = self.fn(url, body, ctype, conc, self.duration)
        el = time.monotonic() - t0
        cpu1, sys1, own1 = _cpu(pids), _system_busy(), _own_cpu()
        after = _scrape(metrics_url)
        if before is not None and after is not None:
            from modelserve.bench import server_breakdown

            r["server"] = server_breakdown(before, after).get(model)
        if cpu0 and cpu1:
            r["cpu_pct"] = {k: round(100 * (cpu1[k] - cpu0[k]) / el, 1) for k in cpu1 if k in cpu0}
        r.setdefault("cpu_pct", {})["load_tool"] = round(100 * (own1 - own0) / el, 1)
        if sys0 is not None and sys1 is not None:
            # CPU used by anything else on the machine (other users' jobs): noise in this point
            r["cpu_pct"]["other"] = round(100 * (sys1 - sys0) / el - sum(r["cpu_pct"].values()), 1)
        if waited > 0:
            r["waited_for_quiet_s"] = waited
        time.sleep(self.pause)
        return r

    def describe(self, url: str, model: str, conc: int) -> str:
        body, ctype = BODIES[model]
        if self.tool == "wrk":
            return cmd_str(["wrk", "-t", "1", "-c", str(conc), "-d", f"{max(1, round(self.duration))}s",
                            "--timeout", "10s", "-s", str(SHARED / "post.lua"), url],
                           {"BENCH_BODY": str(body), "BENCH_CTYPE": ctype})
        return cmd_str(["modelserve-bench", "--url", url.rsplit("/predictions/", 1)[0], "-m", model, "--body",
                        str(body), "-T", ctype, "-c", str(conc), "-d", str(self.duration), "--warmup", "0"])


def _scrape(metrics_url: Optional[str]) -> Optional[dict]:
    if not metrics_url:
        return None
    from modelserve.bench import scrape_metrics

    try:
        return scrape_metrics(metrics_url)
    except Exception:  # noqa: BLE001
        return None


def _system_busy() -> Optional[float]:
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def _own_cpu() -> float:
    """CPU seconds of this process and its finished children (wrk runs as a child)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + r.ru_utime + r.ru_stime


def _cpu(pids: Optional[dict[str, int]]) -> Optional[dict[str, float]]:
    """CPU seconds (user+system) of the frontend and of its children together."""
    if not pids:
        return None
    import psutil

    out = {}
    try:
        p = psutil.Process(pids["frontend"])
        t = p.cpu_times()
        out["frontend"] = t.user + t.system
        w = 0.0
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                w += ct.user + ct.system
            except psutil.NoSuchProcess:
                pass
        out["workers"] = w
    except psutil.NoSuchProcess:
        return None
    return out


def rss(pid: Optional[int]) -> Optional[dict[str, Any]]:
    if not pid:
        return None
    import psutil

    p = psutil.Process(pid)
    workers = []
    template = []
    for c in p.children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
            if "python" in c.name() or "python" in cmd:
                mib = round(c.memory_info().rss / 2**20, 1)
                # modelserve's worker template: the frontend's own child that forked the workers
                is_template = "modelserve.worker.template" in cmd and c.ppid() == pid and c.children()
                (template if is_template else workers).append(mib)
        except psutil.NoSuchProcess:
            pass
    return {"frontend_mib": round(p.memory_info().rss / 2**20, 1), "frontend_bytes": p.memory_info().rss,
            "workers_mib": workers, "template_mib": template}


# --------------------------------------------------------------------------------------------------
# Reference points: aiohttp ceiling, in-process limit, cold start


def ceiling(load: Load, concs: list[int]) -> dict[int, dict[str, Any]]:
    port = free_port()
    cmd = [sys.executable, str(SHARED / "aiohttp_ceiling.py"), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/predictions/linear"
        if not wait_until(lambda: port_busy(port), 30, 0.05):
            raise RuntimeError("aiohttp_ceiling.py did not come up")
        out = {}
        for c in concs:
            out[c] = load.point(url, "linear", c)
            log(f"ceiling c={c}: {out[c]['rps']:.0f} req/s")
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def inproc(secs: float) -> dict[str, Any]:
    env = dict(os.environ, SECS=str(secs))
    out = subprocess.run([sys.executable, str(SHARED / "inproc_bench.py")], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def inproc_call_p50(model: str = "linear", n: int = 20000) -> dict[str, float]:
    """p50 of one in-process handler-like call at batch 1 (parse, tensor, model, tolist, json.dumps),
    timed call by call, one torch thread; the same work as inproc_bench.py's model+prepost row."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(MODELS))
    from linear_model import LinearModel  # type: ignore
    from mlp_model import MLPModel  # type: ignore

    m = (LinearModel if model == "linear" else MLPModel)().eval()
    body = BODIES[model][0].read_bytes()
    parse = (lambda b: [float(b.decode())]) if model == "linear" else (lambda b: json.loads(b)["data"])

    def call() -> None:
        t = torch.tensor([parse(body)], dtype=torch.float32)
        with torch.inference_mode():
            y = m(t).tolist()
        [json.dumps(r) for r in y]

    for _ in range(500):
        call()
    times = []
    pc = time.perf_counter
    for _ in range(n):
        t0 = pc()
        call()
        times.append(pc() - t0)
    times.sort()
    return {"p50_ms": round(1e3 * times[len(times) // 2], 4), "p99_ms": round(1e3 * times[int(0.99 * len(times))], 4)}


def cold_start(server: Any) -> float:
    body, ctype = BODIES["linear"]
    data = body.read_bytes()
    t0 = time.monotonic()
    server.start(models=["linear=linear.mar"], wait=False)

    def answered() -> bool:
        try:
            return http("POST", server.url + "/predictions/linear", data, ctype, timeout=5)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    ok = wait_until(answered, 180, 0.01)
    el = time.monotonic() - t0
    server.stop()
    if not ok:
        raise RuntimeError(f"{server.name}: no prediction within 180 s")
    return el


# --------------------------------------------------------------------------------------------------
# Report


def versions(ts_bin: Optional[Path]) -> dict[str, str]:
    import aiohttp
    import torch

    from modelserve import __version__

    v = {"modelserve": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "aiohttp": aiohttp.__version__}
    try:
        import uvloop

        v["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                         check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        v["git_dirty"] = ("yes: " + ", ".join(ln[3:] for ln in dirty.splitlines())) if dirty else "no"
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        v["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(
            " Copyright")[0].strip()
    except OSError:
        pass
    if ts_bin:
        py = ts_bin.parent / "python"
        try:
            v["torchserve"] = subprocess.run(
                [str(py), "-c", "import ts.version, torch; print(ts.version.__version__, torch.__version__)"],
                capture_output=True, text=True, check=True).stdout.strip().replace(" ", ", torch ")
        except (OSError, subprocess.CalledProcessError):
            v["torchserve"] = "unknown"
        try:
            v["java"] = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.split("\n")[0]
        except OSError:
            pass
    return v


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "load_avg_at_start": os.getloadavg()}


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a is not None and b else None


def evaluate(res: dict[str, Any]) -> list[tuple[str, Optional[bool], str]]:
    """(target, pass/fail/None when not measurable, detail)."""
    out: list[tuple[str, Optional[bool], str]] = []
    pts = res["points"]
    has_ts = res["torchserve"] is not None

    def get(srv: str, cell: str, c: int) -> Optional[dict]:
        return pts.get(f"{srv}|{cell}|{c}")

    for model, factor in (("linear", 3.0), ("mlp", 2.0)):
        cells = [f"{m} w{w} b{b}" for m, w, b in res["cells"] if m == model]
        details, ok = [], True
        if not has_ts:
            out.append((f"{model}: >= {factor:g}x TorchServe req/s, p99 no worse (every cell, c=16/64)", None,
                        "TorchServe not run"))
            continue
        for cell in cells:
            for c in (16, 64):
                a, b = get("modelserve", cell, c), get("TorchServe", cell, c)
                if not a or not b:
                    ok = False
                    details.append(f"{cell} c={c}: missing")
                    continue
                r = ratio(a["rps"], b["rps"])
                good = r is not None and r >= factor and a["p99_ms"] <= b["p99_ms"]
                ok &= good
                details.append(f"{cell} c={c}: {r}x, p99 {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms"
                               + ("" if good else " ✗"))
        out.append((f"{model}: >= {factor:g}x TorchServe req/s, p99 no worse (every cell, c=16/64)",
                    ok if details else None, "; ".join(details) or "no such cell run"))
    # ceiling
    details, ok = [], True
    for c in (16, 64):
        a, ce = get("modelserve", "linear w1 b8", c), res["ceiling"].get(c) if res["ceiling"] else None
        if not a or not ce:
            ok = False
            details.append(f"c={c}: missing")
            continue
        f = a["rps"] / ce["rps"]
        ok &= f >= 0.65
        details.append(f"c={c}: {100 * f:.0f}% ({a['rps']:,.0f} of {ce['rps']:,.0f})")
    out.append(("linear w1 b8 >= 65% of the bare aiohttp ceiling",
                None if all("missing" in d for d in details) else ok, "; ".join(details)))
    # in-process
    ip = (res.get("inproc") or {}).get("mlp_b8_model+prepost")
    details, ok = [], True
    for c in (16, 64):
        a = get("modelserve", "mlp w1 b8", c)
        if not a or not ip:
            ok = False
            details.append(f"c={c}: missing")
            continue
        f = a["rps"] / ip["rows_per_s"]
        ok &= f >= 0.70
        details.append(f"c={c}: {100 * f:.0f}% ({a['rps']:,.0f} of {ip['rows_per_s']:,.0f} rows/s)")
    out.append(("mlp w1 b8 >= 70% of in-process rows/s",
                None if all("missing" in d for d in details) else ok, "; ".join(details)))
    # cold start
    cs = res.get("cold_start") or {}
    ms, ts = cs.get("modelserve"), cs.get("TorchServe")
    if ms and ts:
        f = statistics.median(ms) / statistics.median(ts)
        out.append(("cold start <= 0.6x TorchServe's", f <= 0.6,
                    f"median {statistics.median(ms):.2f} s vs {statistics.median(ts):.2f} s = {f:.2f}x"))
    else:
        out.append(("cold start <= 0.6x TorchServe's", None,
                    f"modelserve median {statistics.median(ms):.2f} s; TorchServe not run" if ms else "not measured"))
    mem = (res.get("memory") or {}).get("modelserve")
    if mem:
        out.append(("frontend RSS <= 80 MB with both bench models loaded", mem["frontend_bytes"] <= 80e6,
                    f"{mem['frontend_bytes'] / 1e6:.1f} MB ({mem['frontend_mib']} MiB); workers "
                    f"{', '.join(str(w) for w in mem['workers_mib'])} MiB"))
    else:
        out.append(("frontend RSS <= 80 MB with both bench models loaded", None, "not measured"))
    a = get("modelserve", "linear w1 b1", 1)
    ipc = res.get("inproc_call")
    if a and ipc:
        d = a["p50_ms"] - ipc["p50_ms"]
        out.append(("per-request overhead at c=1 <= 0.5 ms p50 over the in-process call", d <= 0.5,
                    f"{a['p50_ms']:.3f} ms - {ipc['p50_ms']:.3f} ms = {d:.3f} ms (linear w1 b1)"))
    else:
        out.append(("per-request overhead at c=1 <= 0.5 ms p50 over the in-process call", None, "not measured"))
    return out


def markdown(res: dict[str, Any]) -> str:
    v, m, a = res["versions"], res["machine"], res["args"]
    has_ts = res["torchserve"] is not None
    L = [
        "# Benchmark results: modelserve vs TorchServe",
        "",
        f"- Date: {res['date']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}; "
        f"load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in m.get('load_avg_at_end', ()))}",
        f"- modelserve {v.get('modelserve')} at git commit `{v.get('git_commit', '?')}` "
        f"(uncommitted changes to tracked files at start: {v.get('git_dirty', '?')}); Python {v['python']}, "
        f"torch {v['torch']}, aiohttp {v['aiohttp']}, uvloop {v.get('uvloop', '–')}",
        (f"- TorchServe {v.get('torchserve')} ({v.get('java', 'java ?')})" if has_ts
         else "- TorchServe: **not installed — TorchServe columns skipped** (give --torchserve-bin)"),
        f"- Load: {a['tool']} ({v.get('wrk', '')}), closed loop, {a['duration']:g} s measured after "
        f"{a['warmup']:g} s warm-up per point, {a['pause']:g} s pause between runs; before each point up to "
        f"{a.get('quiet_wait', 0):g} s waiting for other jobs on the machine to go quiet; "
        f"batch cells use max_batch_delay {BATCH_DELAY_MS} ms",
        f"- Torch threads per worker (bench handler's own report): modelserve "
        f"`{res['threads'].get('modelserve') or '?'}`" + (f"; TorchServe `{res['threads'].get('TorchServe') or '?'}`"
                                                         if has_ts else ""),
        "",
        "Absolute numbers on these shared 2-core machines drift by up to ~40% between runs (and the",
        "load generator shares the 2 cores with the server); ratios taken in one run are what to compare.",
        "",
        "## Throughput and latency",
        "",
    ]
    hdr = "| cell | c | modelserve req/s | p50 ms | p99 ms | batch (mean) | CPU% front/workers |"
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    if has_ts:
        hdr += " TorchServe req/s | p50 ms | p99 ms | CPU% front/workers | req/s ratio | p99 ratio |"
        sep += "---:|---:|---:|---:|---:|---:|"
    hdr += " other CPU% |"
    sep += "---:|"
    L += [hdr, sep]
    for mdl, w, b in res["cells"]:
        cell = f"{mdl} w{w} b{b}"
        for c in res["concurrencies"].get(cell, []):
            ms = res["points"].get(f"modelserve|{cell}|{c}")
            ts = res["points"].get(f"TorchServe|{cell}|{c}")
            row = f"| {cell} | {c} |"
            if ms:
                cpu = ms.get("cpu_pct") or {}
                srv = ms.get("server") or {}
                errs = f" ⚠ errors {ms['errors']}" if ms.get("errors") else ""
                row += (f" {fmt(ms['rps'])}{errs} | {fmt(ms['p50_ms'], 2)} | {fmt(ms['p99_ms'], 2)} | "
                        f"{fmt(srv.get('batch_size_mean'), 2)} | {fmt(cpu.get('frontend'), 0)}/{fmt(cpu.get('workers'), 0)} |")
            else:
                row += " – | – | – | – | – |"
            if has_ts:
                if ts:
                    cpu = ts.get("cpu_pct") or {}
                    errs = f" ⚠ errors {ts['errors']}" if ts.get("errors") else ""
                    row += (f" {fmt(ts['rps'])}{errs} | {fmt(ts['p50_ms'], 2)} | {fmt(ts['p99_ms'], 2)} | "
                            f"{fmt(cpu.get('frontend'), 0)}/{fmt(cpu.get('workers'), 0)} |")
                    row += (f" **{fmt(ratio(ms['rps'], ts['rps']), 2)}×** | {fmt(ratio(ms['p99_ms'], ts['p99_ms']), 2)} |"
                            if ms else " – | – |")
                else:
                    row += " – | – | – | – | – | – |"
            others = [fmt(((p or {}).get("cpu_pct") or {}).get("other"), 0) for p in ((ms, ts) if has_ts else (ms,))]
            row += f" {'/'.join(others)} |"
            L.append(row)
    L += ["", "CPU% is CPU time over the measured window (100% = one core); 'workers' sums all worker",
          "processes. 'other CPU%' is the machine's busy time minus the server, its workers and the load tool",
          "(modelserve/TorchServe point): other users' jobs plus unattributed kernel time; high values mark a",
          "noisy point. Batch (mean) is modelserve's own figure from /metrics (modelserve_batch_size).", ""]
    L += ["## Reference points", ""]
    if res.get("ceiling"):
        L.append("- Bare aiohttp ceiling (`aiohttp_ceiling.py`, no model, no queue, no IPC): " + "; ".join(
            f"c={c}: {fmt(r['rps'])} req/s (p50 {fmt(r['p50_ms'], 2)} ms, p99 {fmt(r['p99_ms'], 2)} ms)"
            for c, r in sorted(res["ceiling"].items())))
    ip = res.get("inproc")
    if ip:
        L.append(f"- In-process (`inproc_bench.py`, one thread, SECS={a['inproc_secs']:g}): " + "; ".join(
            f"{k.replace('_model+prepost', '')} {fmt(ip[k]['calls_per_s'], 0)} calls/s ({fmt(ip[k]['rows_per_s'], 0)} rows/s)"
            for k in ("linear_b1_model+prepost", "linear_b8_model+prepost", "mlp_b1_model+prepost",
                      "mlp_b8_model+prepost") if k in ip) + " (model + pre/post-processing). Its JSON is the "
            "standard library's `json`; a modelserve worker parses an `application/json` body with orjson before "
            "the handler sees it and writes the answer with orjson, so the served mlp can exceed these rows/s.")
    if res.get("inproc_call"):
        ipc = res["inproc_call"]
        L.append(f"- One in-process linear handler-like call at batch 1, timed call by call: p50 {ipc['p50_ms']:.4f} ms, "
                 f"p99 {ipc['p99_ms']:.4f} ms")
    cs = res.get("cold_start") or {}
    for srv in ("modelserve", "TorchServe"):
        if cs.get(srv):
            L.append(f"- Cold start, {srv} (launch to first answered prediction of linear, {len(cs[srv])} runs): "
                     f"median {statistics.median(cs[srv]):.2f} s (" + ", ".join(f"{x:.2f}" for x in cs[srv]) + " s)")
    for srv, mem in (res.get("memory") or {}).items():
        if mem:
            L.append(f"- RSS with linear and mlp loaded (1 worker each), {srv}: frontend {mem['frontend_mib']} MiB "
                     f"({mem['frontend_bytes'] / 1e6:.1f} MB); workers " + ", ".join(f"{w} MiB" for w in mem["workers_mib"])
                     + "".join(f"; worker template {t} MiB (its pages are shared with the workers it forked)"
                               for t in mem.get("template_mib") or ()))
    L += ["", "## Targets", "", "| target | result | detail |", "|---|---|---|"]
    for name, ok, detail in res["targets"]:
        L.append(f"| {name} | {'PASS' if ok else ('n/a' if ok is None else '**FAIL**')} | {detail} |")
    L += ["", "## Commands", "", "```", res["command"], "```", "", "Archives:", "", "```", *res["commands"]["archives"],
          "```", "", "Servers (one per cell, started fresh; ports are free ports for modelserve):", "", "```",
          res["commands"].get("modelserve", ""), res["commands"].get("TorchServe", ""), "```", "",
          "Registration (same call on both servers):", "", "```", res["commands"]["register"], "```", "",
          "Load (one per point, after a warm-up run of the same shape):", "", "```", *res["commands"]["load"], "```",
          "", "Stop: SIGTERM to modelserve's pid; `torchserve --stop`.", ""]
    if res.get("errors"):
        L += ["## Errors during the run", ""] + [f"- {e}" for e in res["errors"]] + [""]
    return "\n".join(L)


# --------------------------------------------------------------------------------------------------


def find_torchserve(arg: Optional[str]) -> Optional[Path]:
    if arg:
        p = Path(arg)
        return p if p.exists() else None
    w = shutil.which("torchserve")
    if w:
        return Path(w)
    p = Path("/tmp/ts-venv/bin/torchserve")
    return p if p.exists() else None


def ts_config(work: Path, given: Optional[str]) -> tuple[Path, str]:
    """The shared ts_config.properties, or a copy on free ports when its ports are taken."""
    src = Path(given) if given else SHARED / "ts_config.properties"
    text = src.read_text()
    ports = [int(line.rsplit(":", 1)[1]) for line in text.splitlines()
             if line.split("=")[0] in ("inference_address", "management_address", "metrics_address")]
    ports += [int(line.split("=", 1)[1]) for line in text.splitlines()
              if line.split("=")[0] in ("grpc_inference_port", "grpc_management_port")]
    if not any(port_busy(p) for p in ports):
        return src, ""
    out = []
    for line in text.splitlines():
        k = line.split("=")[0]
        if k in ("inference_address", "management_address", "metrics_address"):
            line = f"{k}=http://127.0.0.1:{free_port()}"
        elif k in ("grpc_inference_port", "grpc_management_port"):
            line = f"{k}={free_port()}"
        out.append(line)
    dst = work / "ts_config.properties"
    dst.write_text("\n".join(out) + "\n")
    return dst, f"ports of {src} were taken; used a copy on free ports"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torchserve-bin", help="the torchserve launcher (default: on PATH, else /tmp/ts-venv/bin)")
    ap.add_argument("--no-torchserve", action="store_true", help="skip TorchServe even when installed")
    ap.add_argument("--ts-config", help="TorchServe config (default /work/shared/bench/ts_config.properties)")
    ap.add_argument("--duration", "-d", type=float, default=15, help="measured seconds per point (default 15)")
    ap.add_argument("--warmup", type=float, default=3, help="warm-up seconds per point (default 3)")
    ap.add_argument("--pause", type=float, default=2, help="idle seconds after each run (default 2)")
    ap.add_argument("--tool", choices=("wrk", "modelserve-bench"), default="wrk" if shutil.which("wrk")
                    else "modelserve-bench", help="load generator (default wrk when installed)")
    ap.add_argument("--cells", help="subset, e.g. 'linear:1:8,mlp:1:1' (model:workers:batch)")
    ap.add_argument("--concurrency", default="16,64", help="per cell (default 16,64; linear w1 b1 adds c=1)")
    ap.add_argument("--cold-runs", type=int, default=3, help="cold starts per server (default 3)")
    ap.add_argument("--inproc-secs", type=float, default=3, help="SECS for inproc_bench.py (default 3)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: ceiling,inproc,cells,memory,cold")
    ap.add_argument("--quiet-wait", type=float, default=30,
                    help="before each point, wait up to this many seconds for other jobs on the machine to go "
                         "quiet (busy CPU < 30%% over 1 s); 0 = do not wait (default 30)")
    ap.add_argument("--out", help="write the markdown report here (e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--json-out", help="write the raw results as JSON here")
    ap.add_argument("--workdir", help="keep servers' files here (default: a temp dir, removed)")
    ap.add_argument("--from-json", help="no run: rebuild the report (targets, markdown) from a --json-out file")
    a = ap.parse_args(argv)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        res["ceiling"] = {int(k): v for k, v in (res.get("ceiling") or {}).items()}
        res["cells"] = [tuple(c) for c in res["cells"]]
        return report(res, a.out, None)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.tool == "wrk" and not shutil.which("wrk"):
        ap.error("wrk is not installed; use --tool modelserve-bench")
    cells = CELLS
    if a.cells:
        cells = [(m, int(w), int(b)) for m, w, b in (x.split(":") for x in a.cells.split(","))]
    concs = [int(x) for x in a.concurrency.split(",")]
    ts_bin = None if a.no_torchserve else find_torchserve(a.torchserve_bin)
    if ts_bin is None and not a.no_torchserve:
        log("TorchServe not found (--torchserve-bin); its columns are skipped")

    tmp = tempfile.TemporaryDirectory(prefix="msbench-") if not a.workdir else None
    work = Path(a.workdir) if a.workdir else Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(), "versions": versions(ts_bin),
        "args": {"tool": a.tool, "duration": a.duration, "warmup": a.warmup, "pause": a.pause,
                 "inproc_secs": a.inproc_secs, "quiet_wait": a.quiet_wait},
        "command": cmd_str([".venv/bin/python", "benchmarks/run_matrix.py",
                            *(argv if argv is not None else sys.argv[1:])]),
        "torchserve": str(ts_bin) if ts_bin else None, "cells": cells, "points": {}, "concurrencies": {},
        "ceiling": {}, "threads": {}, "errors": [], "commands": {"load": []},
    }
    log(f"work dir {work}; commit {res['versions'].get('git_commit')}")
    res["commands"]["archives"] = build_archives(store, work)
    load = Load(a.tool, a.duration, a.warmup, a.pause, a.quiet_wait)
    servers: list[Any] = [ModelServe(store, work)]
    if ts_bin:
        cfg, note = ts_config(work, a.ts_config)
        if note:
            res["errors"].append(note)
        servers.append(TorchServe(ts_bin, store, work, cfg))
    res["commands"]["register"] = ("POST http://127.0.0.1:MGMT/models?url=MODEL.mar&initial_workers=W&batch_size=B"
                                   f"&max_batch_delay={BATCH_DELAY_MS}&synchronous=true")
    try:
        if "inproc" not in skip:
            log("in-process limit (inproc_bench.py)")
            res["inproc"] = inproc(a.inproc_secs)
            res["inproc_call"] = inproc_call_p50("linear")
            log(f"in-process mlp b8: {res['inproc']['mlp_b8_model+prepost']['rows_per_s']:.0f} rows/s; "
                f"linear call p50 {res['inproc_call']['p50_ms']} ms")
        if "ceiling" not in skip:
            log("aiohttp ceiling")
            res["ceiling"] = ceiling(load, [c for c in concs if c > 1] or concs)
        if "cells" not in skip:
            for mdl, w, b in cells:
                cell = f"{mdl} w{w} b{b}"
                cc = ([1] if (mdl, w, b) == ("linear", 1, 1) else []) + concs
                res["concurrencies"][cell] = cc
                for srv in servers:
                    try:
                        srv.start()
                        res["commands"].setdefault(srv.name, srv.cmd_text)
                        register(srv, mdl, w, b)
                        if srv.name not in res["threads"]:
                            res["threads"][srv.name] = handler_threads(srv.logdir)
                        pids = {"frontend": srv.frontend_pid()}
                        for c in cc:
                            url = f"{srv.url}/predictions/{mdl}"
                            r = load.point(url, mdl, c, pids, srv.metrics)
                            res["points"][f"{srv.name}|{cell}|{c}"] = r
                            desc = load.describe(url.replace(str(srv.url), "http://127.0.0.1:PORT"), mdl, c)
                            if desc not in res["commands"]["load"]:
                                res["commands"]["load"].append(desc)
                            bs = (r.get("server") or {}).get("batch_size_mean")
                            log(f"{srv.name:10} {cell} c={c}: {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} "
                                f"p99 {r['p99_ms']:.2f} ms" + (f" batch {bs}" if bs else "")
                                + (f" errors {r['errors']}" if r.get("errors") else ""))
                    except Exception as e:  # noqa: BLE001 - one bad cell must not lose the run
                        res["errors"].append(f"{srv.name} {cell}: {type(e).__name__}: {e}")
                        log(f"ERROR {srv.name} {cell}: {e}")
                    finally:
                        srv.stop()
                        time.sleep(a.pause)
        if "memory" not in skip:
            res["memory"] = {}
            for srv in servers:
                try:
                    srv.start()
                    register(srv, "linear", 1, 1)
                    register(srv, "mlp", 1, 1)
                    for mdl in ("linear", "mlp"):
                        body, ctype = BODIES[mdl]
                        for _ in range(200):
                            http("POST", f"{srv.url}/predictions/{mdl}", body.read_bytes(), ctype)
                    time.sleep(1)
                    res["memory"][srv.name] = rss(srv.frontend_pid())
                    log(f"{srv.name} RSS: {res['memory'][srv.name]}")
                except Exception as e:  # noqa: BLE001
                    res["errors"].append(f"{srv.name} memory: {type(e).__name__}: {e}")
                finally:
                    srv.stop()
                    time.sleep(a.pause)
        if "cold" not in skip:
            res["cold_start"] = {s.name: [] for s in servers}
            for i in range(a.cold_runs):
                for srv in servers:
                    try:
                        el = cold_start(srv)
                        res["cold_start"][srv.name].append(round(el, 3))
                        log(f"{srv.name} cold start {i + 1}: {el:.2f} s")
                    except Exception as e:  # noqa: BLE001
                        res["errors"].append(f"{srv.name} cold start: {type(e).__name__}: {e}")
                        srv.stop()
                    time.sleep(a.pause)
    finally:
        for srv in servers:
            srv.stop()
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    rc = report(res, a.out, a.json_out)
    if tmp is not None:
        tmp.cleanup()
    return rc


def report(res: dict[str, Any], out: Optional[str], json_out: Optional[str]) -> int:
    res["targets"] = evaluate(res)
    print()
    for name, ok, detail in res["targets"]:
        print(f"{'PASS' if ok else ('n/a ' if ok is None else 'FAIL')}  {name}: {detail}")
    md = markdown(res)
    if out:
        Path(out).write_text(md)
        log(f"wrote {out}")
    else:
        print()
        print(md)
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
