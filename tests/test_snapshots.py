"""Config snapshots: kill -9 of the frontend and a restart restore models, versions, defaults, workers."""
from __future__ import annotations

import json
import signal
import time

import psutil
import requests

from conftest import make_archive

VERSIONED = """
def handle(data, context):
    if data is None:
        return None
    return [{"version": context.manifest["model"]["modelVersion"]} for _ in data]
"""


def _predict(srv, name, version=None):
    url = f"{srv.url}/predictions/{name}" + (f"/{version}" if version else "")
    r = requests.post(url, data="x", headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["version"]


def _wait_dead(pids, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        time.sleep(0.05)


def test_kill9_and_restart_restores_everything(model_store, server_factory):
    make_archive(model_store, "vm", VERSIONED, version="1.0")
    make_archive(model_store, "vm_v2", VERSIONED, version="2.0")
    make_archive(model_store, "other", VERSIONED, version="3.1", config_yaml="batchSize: 4\nmaxBatchDelay: 9\n")
    srv = server_factory(model_store, ["other=other.mar"], args=["--enable-model-api"], snapshots=True).start()
    mg = srv.mgmt
    assert requests.post(f"{mg}/models", params={"url": "vm.mar", "model_name": "vm", "initial_workers": 1}).status_code == 200
    assert requests.post(f"{mg}/models", params={"url": "vm_v2.mar", "model_name": "vm", "initial_workers": 1,
                                                 "batch_size": 3, "max_batch_delay": 11}).status_code == 200
    assert requests.put(f"{mg}/models/vm/2.0/set-default").status_code == 200
    assert requests.put(f"{mg}/models/vm/2.0", params={"min_worker": 2, "max_worker": 3, "synchronous": "true"}).status_code == 200
    assert _predict(srv, "vm") == "2.0"
    old_workers = [w["pid"] for d in srv.describe("vm", "all") for w in d["workers"]]
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    _wait_dead(old_workers)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in old_workers)
    srv.cmd = [c for c in srv.cmd if c not in ("other=other.mar", "--models")]
    srv.start()
    assert _predict(srv, "vm") == "2.0"
    assert _predict(srv, "vm", "1.0") == "1.0"
    assert _predict(srv, "other") == "3.1"
    v2 = srv.describe("vm", "2.0")[0]
    assert len(v2["workers"]) == 2 and v2["minWorkers"] == 2 and v2["maxWorkers"] == 3
    assert v2["batchSize"] == 3 and v2["maxBatchDelay"] == 11
    other = srv.describe("other")[0]
    assert other["batchSize"] == 4 and other["maxBatchDelay"] == 9


def test_corrupt_snapshot_is_reported_and_the_previous_used(model_store, server_factory):
    make_archive(model_store, "vm", VERSIONED, version="1.0")
    srv = server_factory(model_store, ["vm=vm.mar"], snapshots=True).start()
    assert srv.stop() == 0
    folder = srv.log_dir / "config"
    good = sorted(folder.glob("*-snapshot.json"))[-1]
    assert "vm" in json.loads(good.read_text())["models"]
    bad = folder / "99999999999999999999999999-snapshot.json"
    bad.write_text('{"models": {"vm": {"defaultVersion": "1.0", "vers')
    srv.cmd = [c for c in srv.cmd if c not in ("vm=vm.mar", "--models")]
    srv.start()
    assert _predict(srv, "vm") == "1.0"
    assert bad.name in (srv.log_dir / "modelserve_log.log").read_text()


def test_ncs_neither_restores_nor_writes(model_store, server_factory):
    make_archive(model_store, "vm", VERSIONED, version="1.0")
    srv = server_factory(model_store, ["vm=vm.mar"]).start()
    srv.stop()
    assert not (srv.log_dir / "config").exists()
