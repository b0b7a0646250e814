"""Soak: a steady request rate for a while; nothing lost, frontend and worker memory flat.

CI runs the short version (about 15 s). The long one is marked slow and runs for ten minutes:
    .venv/bin/python -m pytest -m slow tests/test_soak.py -s
(MODELSERVE_SOAK_SECONDS overrides its length). Both print their figures.
"""
from __future__ import annotations

import json
import os
import threading
import time

import psutil
import pytest
import requests

from conftest import make_archive

HANDLER = """
import torch
from modelserve import BaseHandler


class Soak(BaseHandler):
    def initialize(self, context):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(16, 4)
        self.initialized = True

    def preprocess(self, data):
        return torch.tensor([[float(row["body"])] * 16 for row in data])

    def postprocess(self, out):
        return out.tolist()
"""


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def soak(model_store, server_factory, seconds: float, rate: float, clients: int = 4) -> dict:
    make_archive(model_store, "soak", HANDLER, config_yaml="minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 5\n")
    srv = server_factory(model_store, ["soak=soak.mar"]).start()
    url = srv.url + "/predictions/soak"
    workers = [w["pid"] for w in srv.describe("soak")[0]["workers"]]
    session = requests.Session()
    for _ in range(200):  # warm up before taking the starting memory
        session.post(url, data="1.5", headers={"Content-Type": "text/plain"})
    start_mem = {"frontend": _rss(srv.proc.pid), **{f"worker{i}": _rss(p) for i, p in enumerate(workers)}}
    sent = answered = 0
    codes: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    interval = clients / rate

    def client() -> None:
        nonlocal sent, answered
        s = requests.Session()
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            with lock:
                sent += 1
            try:
                r = s.post(url, data="2.5", headers={"Content-Type": "text/plain"}, timeout=30)
                with lock:
                    answered += 1
                    codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
            except requests.RequestException as exc:
                with lock:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    end_mem = {"frontend": _rss(srv.proc.pid), **{f"worker{i}": _rss(p) for i, p in enumerate(workers)}}
    report = {"seconds": seconds, "target_rate": rate, "sent": sent, "answered": answered, "codes": codes,
              "lost": sent - answered, "errors": errors[:5],
              "rss_mib_start": {k: round(v / 2**20, 1) for k, v in start_mem.items()},
              "rss_mib_end": {k: round(v / 2**20, 1) for k, v in end_mem.items()}}
    print("SOAK " + json.dumps(report))
    return report


def _check(report: dict, mem_slack: float) -> None:
    assert report["errors"] == [] and report["lost"] == 0, report
    assert report["codes"] == {"200": report["sent"]}, report
    for key, start in report["rss_mib_start"].items():
        assert report["rss_mib_end"][key] <= start * (1 + mem_slack) + 2, (key, report)


def test_soak_short(model_store, server_factory):
    report = soak(model_store, server_factory, seconds=15, rate=200)
    assert report["sent"] > 1000
    _check(report, mem_slack=0.10)


@pytest.mark.slow
@pytest.mark.timeout(float(os.environ.get("MODELSERVE_SOAK_SECONDS", "600")) + 300)
def test_soak_long(model_store, server_factory):
    seconds = float(os.environ.get("MODELSERVE_SOAK_SECONDS", "600"))
    report = soak(model_store, server_factory, seconds=seconds, rate=300)
    _check(report, mem_slack=0.10)
