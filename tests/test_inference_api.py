"""The REST inference API end to end: real server, real workers, every error shape."""
from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
import requests

from conftest import make_archive

ECHO = """
import json
from modelserve import BaseHandler, PredictionException


class Echo(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            body = row.get("body", row.get("data"))
            if body == "raise":
                raise ValueError("boom from the handler")
            if body == "reject":
                raise PredictionException("input rejected by handler", 400)
            if body == "bad-one":
                context.set_response_status(400, "this one is bad", i)
                out.append("bad")
                continue
            if body == "bytes":
                context.set_response_content_type(i, "application/x-custom")
                out.append(b"\\x00\\x01raw")
                continue
            if body == "big":
                out.append("x" * 5000)
                continue
            context.set_response_header(i, "x-batch-size", str(len(data)))
            out.append({"echo": body if not isinstance(body, (bytes, bytearray)) else body.decode(),
                        "type": type(body).__name__, "batch": len(data),
                        "hdr": context.get_request_header(i, "X-Test")})
        return out
"""

SLOW = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(float(context.model_yaml_config.get("sleep", 0.5)))
    return [{"batch": len(data)} for _ in data]
"""


@pytest.fixture
def echo_server(model_store, server_factory):
    make_archive(model_store, "echo", ECHO, config_yaml="batchSize: 4\nmaxBatchDelay: 20\n")
    return server_factory(model_store, ["echo=echo.mar"],
                          extra_config="max_request_size=2000\nmax_response_size=4000\n").start()


def test_ping_and_text_json_bytes_bodies(echo_server):
    url = echo_server.url
    r = requests.get(url + "/ping")
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    r = requests.post(url + "/predictions/echo", data="5.0", headers={"Content-Type": "text/plain", "X-Test": "yes"})
    assert r.status_code == 200, r.text
    assert r.json() == {"echo": "5.0", "type": "str", "batch": 1, "hdr": "yes"}
    assert r.headers["x-request-id"]
    assert r.headers["x-batch-size"] == "1"
    r = requests.put(url + "/predictions/echo/1.0", json={"a": [1, 2]})
    assert r.json()["echo"] == {"a": [1, 2]} and r.json()["type"] == "dict"
    r = requests.post(url + "/predictions/echo", data=b"\x01\x02", headers={"Content-Type": "application/octet-stream"})
    assert r.json()["type"] == "bytes"
    r = requests.post(url + "/predictions/echo", data="bytes", headers={"Content-Type": "text/plain"})
    assert r.content == b"\x00\x01raw" and r.headers["Content-Type"] == "application/x-custom"


def test_multipart_fields_arrive_by_name(echo_server):
    r = requests.post(echo_server.url + "/predictions/echo", files={"data": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json()["echo"] == "hello"


def _err(r, code):
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"code", "type", "message"} and body["code"] == code
    assert r.headers.get("x-request-id") or code in (404, 405)
    return body


def test_error_shapes(echo_server):
    url = echo_server.url
    assert "Model not found: nope" in _err(requests.post(url + "/predictions/nope", data="1"), 404)["message"]
    assert "version" in _err(requests.post(url + "/predictions/echo/9.9", data="1"), 404)["message"]
    _err(requests.get(url + "/predictions/echo"), 405)
    _err(requests.get(url + "/no/such/route"), 404)
    _err(requests.post(url + "/predictions/echo", data="x" * 3000, headers={"Content-Type": "text/plain"}), 413)
    body = _err(requests.post(url + "/predictions/echo", data="raise", headers={"Content-Type": "text/plain"}), 500)
    assert "ValueError: boom from the handler" in body["message"] and "Traceback" in body["message"]
    body = _err(requests.post(url + "/predictions/echo", data="reject", headers={"Content-Type": "text/plain"}), 400)
    assert body["message"] == "input rejected by handler"
    body = _err(requests.post(url + "/predictions/echo", data="bad-one", headers={"Content-Type": "text/plain"}), 400)
    assert body["message"] == "this one is bad"
    body = _err(requests.post(url + "/predictions/echo", data="big", headers={"Content-Type": "text/plain"}), 500)
    assert "max_response_size" in body["message"]
    body = _err(requests.post(url + "/predictions/echo", data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert "Invalid JSON" in body["message"]
    # the server keeps serving after all of that
    r = requests.post(url + "/predictions/echo", data="ok", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["echo"] == "ok"


def test_one_bad_request_does_not_fail_its_batch(echo_server):
    url = echo_server.url + "/predictions/echo"
    bodies = ["a", "bad-one", "c", "d"]
    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda b: requests.post(url, data=b, headers={"Content-Type": "text/plain"}), bodies))
    assert [r.status_code for r in rs] == [200, 400, 200, 200]


def test_batching_forms_one_full_batch(model_store, server_factory):
    make_archive(model_store, "slow", SLOW, config_yaml="batchSize: 8\nmaxBatchDelay: 5000\nsleep: 0.01\n")
    srv = server_factory(model_store, ["slow=slow.mar"]).start()
    url = srv.url + "/predictions/slow"
    start = time.monotonic()
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: requests.post(url, data=str(i)), range(8)))
    elapsed = time.monotonic() - start
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert [r.json()["batch"] for r in rs] == [8] * 8
    assert elapsed < 5.0  # a full batch never waits for max_batch_delay


def test_lone_request_waits_about_max_batch_delay(model_store, server_factory):
    make_archive(model_store, "slow", SLOW, config_yaml="batchSize: 8\nmaxBatchDelay: 400\nsleep: 0\n")
    srv = server_factory(model_store, ["slow=slow.mar"]).start()
    requests.post(srv.url + "/predictions/slow", data="warm")
    start = time.monotonic()
    r = requests.post(srv.url + "/predictions/slow", data="1")
    elapsed = time.monotonic() - start
    assert r.json() == {"batch": 1}
    assert 0.35 <= elapsed < 3.0, elapsed


def test_full_queue_answers_503_at_once(model_store, server_factory):
    make_archive(model_store, "slow", SLOW, config_yaml="batchSize: 1\nmaxBatchDelay: 1\nsleep: 1.0\n")
    srv = server_factory(model_store, ["slow=slow.mar"], extra_config="job_queue_size=2\n").start()
    url = srv.url + "/predictions/slow"
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: requests.post(url, data=str(i), timeout=60), range(8)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(503) >= 1 and codes.count(200) >= 3, codes
    rejected = [r for r in rs if r.status_code == 503][0]
    assert rejected.json()["code"] == 503 and rejected.headers.get("Retry-After")
