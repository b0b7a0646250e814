"""modelserve-bench against a real server: it runs, and its report has the fields with sane values.

No assertions about speed: these machines are shared; docs/benchmark.md and benchmarks/ hold the numbers.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, free_port, make_archive

ECHO = """
import time
from modelserve import BaseHandler


class Echo(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        time.sleep(0.001)
        return [{"n": len(data)} for _ in data]
"""


def bench_cmd() -> list[str]:
    exe = BIN / "modelserve-bench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelserve.bench"]


def run_bench(*args: str, check: bool = True) -> tuple[int, Any, str]:
    p = subprocess.run(bench_cmd() + list(args), capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"modelserve-bench exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    out = json.loads(p.stdout) if "--json" in args and p.stdout.strip() else p.stdout
    return p.returncode, out, p.stderr


def check_row(row: dict[str, Any]) -> None:
    for key in ("load", "requests", "ok", "duration_s", "rps", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms",
                "errors"):
        assert key in row, key
    assert row["requests"] > 0 and row["ok"] > 0 and row["rps"] > 0
    assert row["errors"] == {}
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]


@pytest.fixture
def echo_server(model_store: Path, server_factory: Any) -> Any:
    make_archive(model_store, "echo", ECHO, config_yaml="batchSize: 4\nmaxBatchDelay: 5\n")
    return server_factory(model_store, ["echo=echo.mar"]).start()


def test_closed_loop_sweep_json_with_server_breakdown(echo_server: Any, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("1.5")
    _, rep, _ = run_bench("-m", "echo", "--url", echo_server.url, "--body", str(body), "-T", "text/plain",
                          "-c", "1,8", "-d", "1", "--warmup", "0.3", "--pause", "0",
                          "--metrics-url", echo_server.metrics_url, "--json")
    assert rep["target"]["url"] == echo_server.url + "/predictions/echo"
    assert rep["target"]["body_bytes"] == 3 and rep["target"]["content_type"] == "text/plain"
    assert [r["load"] for r in rep["results"]] == ["c=1", "c=8"]
    for row in rep["results"]:
        check_row(row)
        srv = row["server"]["echo"]
        assert srv["requests"] >= row["ok"] * 0.8
        assert 1 <= srv["batch_size_mean"] <= 4
        assert srv["queue_wait_ms_mean"] >= 0 and srv["handler_ms_mean"] > 0
    assert rep["results"][0]["concurrency"] == 1 and rep["results"][0]["server"]["echo"]["batch_size_mean"] >= 1
    # eight in flight against batchSize 4: the server batches
    assert rep["results"][1]["server"]["echo"]["batch_size_mean"] > 1


def test_open_loop_request_count_over_two_processes(echo_server: Any) -> None:
    _, rep, _ = run_bench("-m", "echo", "--url", echo_server.url, "--data", "2", "--rate", "100", "-n", "30",
                          "--warmup", "0", "--processes", "2", "--metrics-url", "none", "--json")
    (row,) = rep["results"]
    assert row["kind"] == "open" and row["rate"] == 100 and row["processes"] == 2
    assert row["issued"] == 30 and row["ok"] == 30
    check_row(row)
    assert row["achieved_rate"] > 0 and "server" not in row


def test_text_report_and_progress(echo_server: Any) -> None:
    _, out, err = run_bench("-m", "echo", "--url", echo_server.url, "--data", "3", "-c", "2", "-d", "1",
                            "--warmup", "0", "--metrics-url", echo_server.metrics_url, "--progress")
    assert "req/s" in out and "p99 ms" in out and "c=2" in out
    assert "server side" in out and "echo" in out
    assert "c=2" in err  # the progress line / per-level summary goes to stderr


def test_errors_by_kind(echo_server: Any) -> None:
    code, rep, _ = run_bench("-m", "nosuch", "--url", echo_server.url, "--data", "1", "-c", "2", "-d", "0.5",
                             "--warmup", "0", "--metrics-url", "none", "--json", check=False)
    assert code == 1  # nothing succeeded
    (row,) = rep["results"]
    assert row["ok"] == 0 and set(row["errors"]) == {"http_404"} and row["errors"]["http_404"] > 0
    assert row["p50_ms"] is None
    closed = free_port()
    code, rep, _ = run_bench("-m", "echo", "--url", f"http://127.0.0.1:{closed}", "--data", "1", "-c", "2",
                             "-d", "0.3", "--warmup", "0", "--metrics-url", "none", "--json", check=False)
    assert code == 1 and set(rep["results"][0]["errors"]) == {"connect"}


def test_aiohttp_client_and_auth_header(model_store: Path, server_factory: Any) -> None:
    make_archive(model_store, "echo", ECHO)
    srv = server_factory(model_store, ["echo=echo.mar"], auth=True).start()
    key = srv.keys()["inference"]
    _, rep, _ = run_bench("-m", "echo", "--url", srv.url, "--data", "1", "-c", "2", "-d", "0.5", "--warmup", "0",
                          "--metrics-url", "none", "--json", check=False)
    assert set(rep["results"][0]["errors"]) == {"http_401"}
    for client in ("raw", "aiohttp"):
        _, rep, _ = run_bench("-m", "echo", "--url", srv.url, "--data", "1", "-c", "2", "-d", "0.5", "--warmup", "0",
                              "--header", f"Authorization: Bearer {key}", "--client", client,
                              "--metrics-url", "none", "--json")
        check_row(rep["results"][0])


def test_grpc_mode(echo_server: Any) -> None:
    try:
        from modelserve.bench import grpc_stubs

        grpc_stubs()
    except ImportError as e:
        pytest.skip(f"gRPC stubs unavailable: {e}")
    _, rep, _ = run_bench("--mode", "grpc", "--url", f"127.0.0.1:{echo_server.ports['grpc']}", "-m", "echo",
                          "--data", "4", "-c", "4", "-d", "1", "--warmup", "0.2",
                          "--metrics-url", echo_server.metrics_url, "--json")
    (row,) = rep["results"]
    check_row(row)
    assert row["server"]["echo"]["batch_size_mean"] >= 1


def test_percentile_and_breakdown_helpers() -> None:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: F401 - the parser used

    from modelserve.bench import percentile, server_breakdown

    vals = [float(i) for i in range(1, 101)]
    assert percentile(vals, 50) == 50 and percentile(vals, 99) == 99 and percentile(vals, 100) == 100
    assert percentile([], 50) is None
    before = {("m", "1.0"): {"queue_wait_sum": 1.0, "queue_wait_count": 10, "batch_size_sum": 10,
                             "batch_size_count": 10, "handler_sum": 0.1, "handler_count": 10}}
    after = {("m", "1.0"): {"queue_wait_sum": 1.5, "queue_wait_count": 110, "batch_size_sum": 110,
                            "batch_size_count": 35, "handler_sum": 0.35, "handler_count": 35}}
    row = server_breakdown(before, after)["m"]
    assert row["requests"] == 100 and row["batches"] == 25
    assert row["batch_size_mean"] == 4.0 and row["queue_wait_ms_mean"] == 5.0 and row["handler_ms_mean"] == 10.0
