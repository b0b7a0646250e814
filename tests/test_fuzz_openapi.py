"""schemathesis against the OpenAPI documents of 8080 and 8081: no 5xx, every response matches the schema."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server, make_archive

OK = """
def handle(data, context):
    if data is None:
        return None
    return [{"ok": True} for _ in data]
"""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    make_archive(store, "fuzzme", OK)
    srv = Server(tmp_path_factory.mktemp("srv"), store, ["fuzzme=fuzzme.mar"], args=["--enable-model-api"]).start()
    yield srv
    srv.stop()


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).parent / "schemathesis"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.skip("schemathesis is not installed (it is in the test extras)")
    return [found]


@pytest.mark.parametrize("port", ["inference", "management"])
def test_no_server_errors_and_responses_match_the_schema(fuzz_server, port, tmp_path):
    base = f"http://127.0.0.1:{fuzz_server.ports[port]}"
    res = subprocess.run(_schemathesis() + ["run", base + "/api-description", "--url", base,
                                            "-c", "not_a_server_error,response_schema_conformance",
                                            "-n", "10", "--seed", "1"],
                         capture_output=True, text=True, timeout=400, cwd=tmp_path)
    summary = [line for line in res.stdout.splitlines() if "generated" in line]
    assert res.returncode == 0, res.stdout[-4000:]
    assert summary and "passed" in summary[-1], res.stdout[-2000:]
