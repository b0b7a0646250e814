"""/metrics parsed by prometheus_client's parser: counters and histograms move as requests flow."""
from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_archive

METRIC_HANDLER = """
import os
import time
from modelserve import BaseHandler


class Metered(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        out = []
        for row in data:
            body = row.get("body")
            if body == "die":
                os._exit(3)
            context.metrics.add_counter("InferenceItems", 1, dimensions={"kind": "demo"})
            context.metrics.add_time("ItemTime", 2.5, unit="ms")
            out.append({"pid": os.getpid()})
        return out
"""


def scrape(srv, params=None):
    r = requests.get(srv.metrics_url + "/metrics", params=params, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families, family, name=None, **labels):
    fam = families[family]
    for s in fam.samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name or family} {labels} in {fam.samples}")


def test_metrics_move_with_requests_and_survive_worker_restart(model_store, server_factory):
    make_archive(model_store, "metered", METRIC_HANDLER, config_yaml="batchSize: 1\n")
    srv = server_factory(model_store, ["metered=metered.mar"]).start()
    base = scrape(srv)
    assert sample(base, "ts_inference_requests", "ts_inference_requests_total", model_name="metered") == 0
    for name in ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization", "DiskAvailable",
                 "DiskUsage", "DiskUtilization", "Requests2XX", "Requests4XX", "Requests5XX",
                 "modelserve_queue_depth", "modelserve_workers", "modelserve_worker_memory_bytes"):
        assert name in base, name
    url = srv.url + "/predictions/metered"
    for _ in range(5):
        assert requests.post(url, data="x", headers={"Content-Type": "text/plain"}).status_code == 200
    requests.post(srv.url + "/predictions/missing", data="x")
    fams = scrape(srv)
    assert sample(fams, "ts_inference_requests", "ts_inference_requests_total", model_name="metered") == 5
    assert sample(fams, "ts_inference_latency_microseconds", model_name="metered") > 0
    assert sample(fams, "modelserve_request_latency_seconds", "modelserve_request_latency_seconds_count",
                  model_name="metered") == 5
    assert sample(fams, "modelserve_batch_size", "modelserve_batch_size_bucket", model_name="metered", le="1.0") == 5
    assert sample(fams, "modelserve_batches", "modelserve_batches_total", model_name="metered", reason="full") == 5
    assert sample(fams, "Requests2XX") - sample(base, "Requests2XX") == 5
    assert sample(fams, "Requests4XX") - sample(base, "Requests4XX") == 1
    assert sample(fams, "InferenceItems", "InferenceItems_total", ModelName="metered", kind="demo") == 5
    assert sample(fams, "ItemTime", ModelName="metered") == 2.5
    assert sample(fams, "modelserve_workers", model_name="metered", state="READY") == 1
    # kill the worker: the handler counter keeps its total and goes on from there
    r = requests.post(url, data="die", headers={"Content-Type": "text/plain"})
    assert r.status_code == 500 and "Worker died" in r.json()["message"]
    deadline = time.monotonic() + 30
    unavailable = 0  # 503s while the replacement starts
    while time.monotonic() < deadline:
        code = requests.post(url, data="x", headers={"Content-Type": "text/plain"}).status_code
        if code == 200:
            break
        unavailable += code == 503
        time.sleep(0.1)
    fams = scrape(srv)
    assert sample(fams, "InferenceItems", "InferenceItems_total", ModelName="metered", kind="demo") == 6
    assert sample(fams, "modelserve_worker_restarts", "modelserve_worker_restarts_total", model_name="metered") == 1
    assert sample(fams, "Requests5XX") - sample(base, "Requests5XX") == 1 + unavailable


def test_name_filter_and_rejection_counter(model_store, server_factory):
    make_archive(model_store, "metered", METRIC_HANDLER)
    srv = server_factory(model_store, ["metered=metered.mar"], extra_config="max_request_size=100\n").start()
    r = requests.post(srv.url + "/predictions/metered", data="x" * 500, headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    fams = scrape(srv, params={"name[]": ["modelserve_requests_rejected", "Requests4XX"]})
    assert set(fams) == {"modelserve_requests_rejected", "Requests4XX"}
    assert sample(fams, "modelserve_requests_rejected", "modelserve_requests_rejected_total", reason="too_large") == 1


def test_metrics_api_can_be_turned_off(model_store, server_factory):
    make_archive(model_store, "metered", METRIC_HANDLER)
    srv = server_factory(model_store, ["metered=metered.mar"], extra_config="enable_metrics_api=false\n").start()
    try:
        requests.get(srv.metrics_url + "/metrics", timeout=2)
        reached = True
    except requests.ConnectionError:
        reached = False
    assert not reached


def test_access_log_lines(model_store, server_factory):
    make_archive(model_store, "metered", METRIC_HANDLER)
    srv = server_factory(model_store, ["metered=metered.mar"]).start()
    requests.post(srv.url + "/predictions/metered", data="x", headers={"Content-Type": "text/plain"})
    srv.stop()
    lines = (srv.log_dir / "access_log.log").read_text().splitlines()
    assert any('"POST /predictions/metered HTTP/1.1" 200' in line and line.split()[1] == "127.0.0.1"
               for line in lines), lines
