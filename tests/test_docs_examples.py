"""The bash examples of the API pages, run against a real server: each exits 0 and prints what it says."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

PAGES = ["inference_api.md", "metrics.md"]


def blocks(page: str) -> list[tuple[str, list[str]]]:
    text = (ROOT / "docs" / page).read_text()
    out = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        expects = [line[len("# => "):] for line in body.splitlines() if line.startswith("# => ")]
        out.append((body, expects))
    return out


@pytest.fixture(scope="module")
def linear_server(tmp_path_factory):
    from conftest import Server

    store = tmp_path_factory.mktemp("store")
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "simple_linear" / "build.py"),
                          "--export-path", str(store)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wd = tmp_path_factory.mktemp("srv")
    srv = Server(wd, store, ["simple_linear=simple_linear.mar"]).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, linear_server):
    found = blocks(page)
    assert found, f"docs/{page} has no bash examples"
    ports = {"8080": linear_server.ports["inference"], "8081": linear_server.ports["management"],
             "8082": linear_server.ports["metrics"]}
    for body, expects in found:
        script = re.sub(r"127\.0\.0\.1:(8080|8081|8082)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", body)
        res = subprocess.run(["bash", "-eo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (body, res.stdout, res.stderr)
        for expect in expects:
            assert expect in res.stdout, (body, expect, res.stdout)


def test_metrics_page_lists_every_family(linear_server):
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    requests.post(linear_server.url + "/predictions/simple_linear", data="1", headers={"Content-Type": "text/plain"})
    text = requests.get(linear_server.metrics_url + "/metrics", timeout=10).text
    doc = (ROOT / "docs" / "metrics.md").read_text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "HandlerTime" in names and "modelserve_batch_size" in names
    missing = [n for n in names if f"`{n}" not in doc]
    assert not missing, f"docs/metrics.md does not list {missing}"
