"""Token authorization on by default: key file, Bearer keys per API, 401s, rotation, expiry, open probes."""
from __future__ import annotations

import stat
import time

import requests

from conftest import make_archive

OK = """
def handle(data, context):
    if data is None:
        return None
    return ["ok"] * len(data)
"""


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def _401(r):
    assert r.status_code == 401, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == 401 and body["type"] == "UnauthorizedException" and "Token authorization failed" in body["message"]


def test_every_route_needs_its_key(model_store, server_factory):
    make_archive(model_store, "okm", OK)
    srv = server_factory(model_store, ["okm=okm.mar"], auth=True, args=["--enable-model-api"]).start()
    key_file = srv.workdir / "key_file.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = srv.keys()
    assert set(keys) == {"management", "inference", "API"} and len(set(keys.values())) == 3
    inf, mg = srv.url, srv.mgmt
    # probes stay open by default
    assert requests.get(inf + "/ping").status_code == 200
    assert requests.get(srv.metrics_url + "/metrics").status_code == 200
    inference_routes = [("post", "/predictions/okm"), ("put", "/predictions/okm/1.0"), ("options", "/"),
                        ("get", "/api-description")]
    management_routes = [("get", "/models"), ("get", "/models/okm"), ("get", "/models/okm/1.0"),
                         ("put", "/models/okm?min_worker=1"), ("put", "/models/okm/1.0/set-default"),
                         ("post", "/models?url=okm.mar"), ("delete", "/models/okm/9.9"), ("options", "/"),
                         ("get", "/api-description")]
    for method, path in inference_routes:
        _401(requests.request(method, inf + path, data="x"))
        _401(requests.request(method, inf + path, data="x", headers=bearer(keys["management"])))
        _401(requests.request(method, inf + path, data="x", headers={"Authorization": "Basic abc"}))
        assert requests.request(method, inf + path, data="x", headers=bearer(keys["inference"])).status_code == 200
    for method, path in management_routes:
        _401(requests.request(method, mg + path))
        _401(requests.request(method, mg + path, headers=bearer(keys["inference"])))
        assert requests.request(method, mg + path, headers=bearer(keys["management"])).status_code != 401
    # rotation needs the API key; the old key stops working at once
    _401(requests.get(mg + "/token", params={"type": "inference"}, headers=bearer(keys["management"])))
    r = requests.get(mg + "/token", params={"type": "inference"}, headers=bearer(keys["API"]))
    assert r.status_code == 200
    new = r.json()["inference"]
    assert new != keys["inference"] and srv.keys()["inference"] == new
    _401(requests.post(inf + "/predictions/okm", data="x", headers=bearer(keys["inference"])))
    assert requests.post(inf + "/predictions/okm", data="x", headers=bearer(new)).status_code == 200
    assert requests.get(mg + "/token", params={"type": "bogus"}, headers=bearer(keys["API"])).status_code == 400


def test_keys_expire_and_probes_can_be_closed(model_store, server_factory):
    make_archive(model_store, "okm", OK)
    srv = server_factory(model_store, ["okm=okm.mar"], auth=True,
                         extra_config="token_expiration_min=0.05\nauth_exempt_health=false\n").start()
    keys = srv.keys()
    _401(requests.get(srv.url + "/ping"))
    _401(requests.get(srv.metrics_url + "/metrics"))
    assert requests.get(srv.metrics_url + "/metrics", headers=bearer(keys["management"])).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = requests.post(srv.url + "/predictions/okm", data="x", headers=bearer(keys["inference"]))
        if r.status_code == 401:
            break
        time.sleep(0.2)
    _401(r)
    assert "expired" in r.json()["message"]


def test_disable_token_auth_writes_no_key_file(model_store, server_factory):
    make_archive(model_store, "okm", OK)
    srv = server_factory(model_store, ["okm=okm.mar"]).start()
    assert requests.post(srv.url + "/predictions/okm", data="x").status_code == 200
    assert not (srv.workdir / "key_file.json").exists()
