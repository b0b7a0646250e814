"""Faults and bad input against real processes: worker crashes, hangs, timeouts, backpressure, shutdown."""
from __future__ import annotations

import concurrent.futures as cf
import http.server
import io
import os
import signal
import socket
import threading
import time
import zipfile

import psutil
import pytest
import requests

from conftest import make_archive

SLEEPY = """
import os
import time


def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        body = row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        if body == "exit":
            os._exit(7)
        if body == "hang":
            time.sleep(3600)
        time.sleep(float(context.model_yaml_config.get("sleep", 0)))
        out.append({"pid": os.getpid()})
    return out
"""


def _post(url, body="x", timeout=60):
    return requests.post(url, data=body, headers={"Content-Type": "text/plain"}, timeout=timeout)


def _workers(srv, name):
    return [w for w in srv.describe(name)[0]["workers"]]


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_kill9_worker_under_load_loses_nothing(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 5\nsleep: 0.005\n")
    srv = server_factory(model_store, ["sl=sl.mar"]).start()
    url = srv.url + "/predictions/sl"
    victim = _workers(srv, "sl")[0]["pid"]
    stop = time.monotonic() + 4.0
    results: list[int] = []
    errors: list[str] = []

    def client():
        while time.monotonic() < stop:
            try:
                r = _post(url, timeout=30)
                results.append(r.status_code)
                if r.status_code != 200:
                    assert "Worker died" in r.json()["message"], r.text
            except Exception as exc:  # noqa: BLE001 - a lost request is what this test counts
                errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert errors == []
    died = [c for c in results if c != 200]
    assert set(died) <= {500} and len(died) <= 4, died  # at most the one batch in flight
    assert results.count(200) > 50
    assert _wait(lambda: sum(w["status"] == "READY" for w in _workers(srv, "sl")) == 2)
    assert victim not in [w["pid"] for w in _workers(srv, "sl")]
    assert _post(url).status_code == 200


def test_worker_exit_fails_only_its_batch_and_restarts(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY)
    srv = server_factory(model_store, ["sl=sl.mar"]).start()
    url = srv.url + "/predictions/sl"
    r = _post(url, "exit")
    assert r.status_code == 500
    assert r.json()["message"].startswith("Worker died (exit code 7)")
    assert _wait(lambda: _post(url).status_code == 200)


def test_response_timeout_answers_504_and_replaces_worker(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="responseTimeout: 2\n")
    srv = server_factory(model_store, ["sl=sl.mar"]).start()
    url = srv.url + "/predictions/sl"
    old = _workers(srv, "sl")[0]["pid"]
    r = _post(url, "hang")
    assert r.status_code == 504 and r.json()["type"] == "TimeoutException"
    assert "response_timeout" in r.json()["message"]
    assert _wait(lambda: _post(url).status_code == 200)
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE


def test_hung_idle_worker_is_found_by_ping_and_replaced(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY)
    srv = server_factory(model_store, ["sl=sl.mar"],
                         extra_config="worker_ping_interval=0.3\nworker_ping_timeout=1\n").start()
    old = _workers(srv, "sl")[0]["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        assert _wait(lambda: _workers(srv, "sl")[0]["pid"] != old and _workers(srv, "sl")[0]["status"] == "READY")
    finally:
        try:
            os.kill(old, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert _post(srv.url + "/predictions/sl").status_code == 200


def test_client_timeout_drops_expired_requests_from_the_queue(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="sleep: 1.0\nclientTimeoutInMills: 300\n")
    srv = server_factory(model_store, ["sl=sl.mar"]).start()
    url = srv.url + "/predictions/sl"
    with cf.ThreadPoolExecutor(3) as ex:
        codes = sorted(r.status_code for r in ex.map(lambda _: _post(url), range(3)))
    assert codes[0] == 200 and codes.count(504) >= 1, codes


def test_disconnected_client_frees_its_queue_slot(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="sleep: 1.5\n")
    srv = server_factory(model_store, ["sl=sl.mar"], extra_config="job_queue_size=2\n").start()
    url = srv.url + "/predictions/sl"
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(_post, url, "x", 0.3) for _ in range(3)]
        for f in futs:
            with pytest.raises(requests.exceptions.ReadTimeout):
                f.result()
    assert _wait(lambda: srv.describe("sl")[0]["jobQueueStatus"]["pendingRequests"] == 0, 5)
    assert srv.describe("sl")[0]["jobQueueStatus"]["remainingCapacity"] == 2


def test_queue_byte_budget_answers_503(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="sleep: 0.5\n")
    srv = server_factory(model_store, ["sl=sl.mar"], extra_config="job_queue_max_bytes=1500\n").start()
    url = srv.url + "/predictions/sl"
    with cf.ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda _: _post(url, "y" * 1000), range(6)))
    codes = [r.status_code for r in rs]
    assert 503 in codes and 200 in codes, codes
    busy = [r for r in rs if r.status_code == 503][0]
    assert "byte budget" in busy.json()["message"] and busy.headers["Retry-After"]


def test_sigterm_finishes_in_flight_and_queued_requests(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY, config_yaml="sleep: 0.4\n")
    srv = server_factory(model_store, ["sl=sl.mar"]).start()
    url = srv.url + "/predictions/sl"
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(_post, url) for _ in range(4)]
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        codes = [f.result().status_code for f in futs]
    assert codes == [200] * 4
    assert srv.proc.wait(30) == 0


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


MANIFEST = b'{"runtime": "python", "model": {"modelName": "evil", "handler": "h.py", "modelVersion": "1.0"}}'


def test_malicious_archives_are_refused_with_400(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY)
    (model_store / "slip.mar").write_bytes(_zip({"MAR-INF/MANIFEST.json": MANIFEST, "h.py": b"", "../../evil.py": b"x"}))
    (model_store / "absolute.mar").write_bytes(_zip({"MAR-INF/MANIFEST.json": MANIFEST, "h.py": b"", "/tmp/evil.py": b"x"}))
    (model_store / "badmanifest.mar").write_bytes(_zip({"MAR-INF/MANIFEST.json": b"{not json", "h.py": b""}))
    (model_store / "notazip.mar").write_bytes(b"this is not an archive")
    (model_store / "bomb.mar").write_bytes(_zip({"MAR-INF/MANIFEST.json": MANIFEST, "h.py": b"", "big.bin": b"\0" * 200_000}))
    srv = server_factory(model_store, ["sl=sl.mar"], args=["--enable-model-api"],
                         extra_config="archive_max_bytes=100000\n").start()
    for name, needle in (("slip.mar", ".."), ("absolute.mar", "absolute"), ("badmanifest.mar", "MANIFEST"),
                         ("notazip.mar", "archive"), ("bomb.mar", "uncompressed")):
        r = requests.post(srv.mgmt + "/models", params={"url": name})
        assert r.status_code == 400, (name, r.text)
        assert needle.lower() in r.json()["message"].lower(), (name, r.json())
    assert not (model_store.parent / "evil.py").exists()
    assert _post(srv.url + "/predictions/sl").status_code == 200


def test_remote_urls_only_where_allowed(model_store, server_factory, tmp_path):
    make_archive(model_store, "sl", SLEEPY)
    served = tmp_path / "www"
    served.mkdir()
    make_archive(served, "remote", SLEEPY)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        denied = server_factory(model_store, ["sl=sl.mar"], args=["--enable-model-api"]).start()
        r = requests.post(denied.mgmt + "/models", params={"url": f"http://127.0.0.1:{port}/remote.mar"})
        assert r.status_code == 404 and "allowed" in r.json()["message"]
        r = requests.post(denied.mgmt + "/models", params={"url": str(served / "remote.mar")})
        assert r.status_code == 404 and "allowed" in r.json()["message"]
        denied.stop()
        ok = server_factory(model_store, ["sl=sl.mar"], args=["--enable-model-api"],
                            extra_config=f"allowed_urls=http://127\\\\.0\\\\.0\\\\.1:{port}/.*\n").start()
        r = requests.post(ok.mgmt + "/models", params={"url": f"http://127.0.0.1:{port}/remote.mar", "initial_workers": 1})
        assert r.status_code == 200, r.text
        assert (model_store / "remote.mar").exists()
        assert _post(ok.url + "/predictions/remote").status_code == 200
    finally:
        httpd.shutdown()


def test_bad_http_never_breaks_the_server(model_store, server_factory):
    make_archive(model_store, "sl", SLEEPY)
    srv = server_factory(model_store, ["sl=sl.mar"], args=["--enable-model-api"]).start()
    url = srv.url + "/predictions/sl"
    r = requests.post(url, data=b"--xyz\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and r.json()["code"] == 400
    r = requests.post(url, data="x", headers={"Content-Type": "text/plain", "X-Big": "a" * 100_000})
    assert r.status_code in (400, 431)
    r = requests.post(srv.mgmt + "/models", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    # a body shorter than its Content-Length, then the client goes away
    with socket.create_connection(("127.0.0.1", srv.ports["inference"])) as s:
        s.sendall(b"POST /predictions/sl HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc")
    with socket.create_connection(("127.0.0.1", srv.ports["inference"])) as s:
        s.sendall(b"GARBAGE \x00\x01\x02\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert _post(url).status_code == 200


LEAKY = """
import os
import signal

_hoard = []


def handle(data, context):
    if data is None:
        return None
    for row in data:
        body = row.get("body")
        if body == "oom":  # what the kernel's OOM killer does to a process over its limit
            os.kill(os.getpid(), signal.SIGKILL)
        _hoard.append(bytearray(8 * 1024 * 1024))  # leak 8 MiB per request, touched
        _hoard[-1][::4096] = b"x" * len(_hoard[-1][::4096])
    return [len(_hoard)] * len(data)
"""


def test_leaking_handler_is_visible_and_an_oom_kill_is_survived(model_store, server_factory):
    from prometheus_client.parser import text_string_to_metric_families

    make_archive(model_store, "leaky", LEAKY)
    srv = server_factory(model_store, ["leaky=leaky.mar"]).start()
    url = srv.url + "/predictions/leaky"
    before = _workers(srv, "leaky")[0]["memoryUsage"]
    for _ in range(10):
        assert _post(url).status_code == 200
    grown = _workers(srv, "leaky")[0]["memoryUsage"]
    assert grown - before > 60 * 1024 * 1024, (before, grown)
    fams = {f.name: f for f in text_string_to_metric_families(requests.get(srv.metrics_url + "/metrics").text)}
    rss = [s.value for s in fams["modelserve_worker_memory_bytes"].samples if s.labels["model_name"] == "leaky"]
    assert rss and rss[0] > before + 60 * 1024 * 1024
    r = _post(url, "oom")
    assert r.status_code == 500 and "killed by signal SIGKILL" in r.json()["message"]
    assert _wait(lambda: _post(url).status_code == 200)
    assert _workers(srv, "leaky")[0]["memoryUsage"] < grown  # the replacement starts small again
