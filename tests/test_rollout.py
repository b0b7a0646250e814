"""Zero-downtime roll-out: v2 registered while v1 serves, set-default, v1 unregistered, all under load."""
from __future__ import annotations

import threading
import time

import requests

from conftest import make_archive

VERSIONED = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(0.002)
    return [{"version": context.manifest["model"]["modelVersion"]} for _ in data]
"""


def test_v1_to_v2_under_load_loses_nothing(model_store, server_factory):
    make_archive(model_store, "svc", VERSIONED, version="1.0", config_yaml="batchSize: 4\nmaxBatchDelay: 5\n")
    make_archive(model_store, "svc_v2", VERSIONED, version="2.0", config_yaml="batchSize: 4\nmaxBatchDelay: 5\n")
    srv = server_factory(model_store, ["svc=svc.mar"], args=["--enable-model-api"]).start()
    url = srv.url + "/predictions/svc"
    stop = threading.Event()
    codes: dict[int, int] = {}
    versions: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(url, data="x", headers={"Content-Type": "text/plain"}, timeout=30)
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        versions.append(r.json()["version"])
            except requests.RequestException as exc:
                with lock:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        r = requests.post(srv.mgmt + "/models", params={"url": "svc_v2.mar", "model_name": "svc", "initial_workers": 1},
                          timeout=120)
        assert r.status_code == 200, r.text
        time.sleep(1.0)
        assert requests.put(srv.mgmt + "/models/svc/2.0/set-default", timeout=30).status_code == 200
        time.sleep(1.0)
        r = requests.delete(srv.mgmt + "/models/svc/1.0", timeout=60)
        assert r.status_code == 200, r.text
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print("ROLLOUT", codes, len(errors))
    assert errors == [] and set(codes) == {200}, (codes, errors[:3])
    assert sum(codes.values()) > 200
    assert versions[0] == "1.0" and versions[-1] == "2.0"
    assert [m["modelName"] for m in requests.get(srv.mgmt + "/models").json()["models"]] == ["svc"]
    assert [d["modelVersion"] for d in srv.describe("svc", "all")] == ["2.0"]
