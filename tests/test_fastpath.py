"""The inference port's own HTTP/1.1 code (http/fastpath.py) and its hand-over to aiohttp.

Everything here runs against a real server on the same connection a client would hold: predictions
served by the fast path, other routes and unusual requests handed to aiohttp mid-connection, and the
answers of both code paths compared field by field.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import Server, make_archive

ECHO = """
from modelserve import BaseHandler


class Echo(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            body = row.get("body", row.get("data"))
            if isinstance(body, (bytes, bytearray)):
                body = body.decode()
            if body == "raise":
                raise ValueError("boom from the handler")
            if body == "stream":
                from modelserve.handler_utils import send_intermediate_predict_response
                send_intermediate_predict_response(["part-1"], context.request_ids, "ok", 200, context)
                out.append("part-2")
                continue
            context.set_response_header(i, "x-seen", "yes")
            out.append({"echo": body, "keys": sorted(row), "auth": context.get_request_header(i, "authorization")})
        return out
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server with the fast path (the default) and one with every request through aiohttp."""
    root = tmp_path_factory.mktemp("fastpath")
    store = root / "store"
    store.mkdir()
    make_archive(store, "echo", ECHO, config_yaml="batchSize: 2\nmaxBatchDelay: 5\n")
    out = {}
    for name, extra in (("fast", ""), ("aiohttp", "http_fast_path=false\n")):
        wd = root / name
        wd.mkdir()
        out[name] = Server(wd, store, ["echo=echo.mar"], extra_config="max_request_size=4096\n" + extra).start()
    yield out
    for srv in out.values():
        srv.stop()


def _port(srv: Server) -> int:
    return srv.ports["inference"]


def _read_response(f) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a socket file (Content-Length or chunked)."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1."), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(f.readline().strip(), 16)
            chunk = f.read(size + 2)[:size]
            if size == 0:
                break
            body += chunk
        return status, headers, body
    return status, headers, f.read(int(headers.get("content-length", "0")))


def _post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: text/plain\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("kind", ["fast", "aiohttp"])
def test_both_code_paths_answer_alike(servers, kind):
    """Every answer shape of /predictions, asked of the fast path and of aiohttp, must agree."""
    url = servers[kind].url
    r = requests.post(url + "/predictions/echo", data="5.0", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"echo": "5.0", "keys": ["body"], "auth": None}
    assert r.headers["x-seen"] == "yes" and r.headers["Content-Type"] == "application/json"
    assert r.headers["x-request-id"] and "Date" in r.headers
    r = requests.put(url + "/predictions/echo/1.0", data="a=1&b=2",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.json()["keys"] == ["a", "b"]
    r = requests.post(url + "/predictions/echo", data="raise", headers={"Content-Type": "text/plain"})
    err = r.json()
    assert r.status_code == 500 and err["type"] == "InternalServerException" and "boom from the handler" in err["message"]
    r = requests.post(url + "/predictions/nope", data="1")
    assert r.status_code == 404 and r.json()["code"] == 404 and "nope" in r.json()["message"]
    r = requests.post(url + "/predictions/echo/9.9", data="1")
    assert r.status_code == 404 and "9.9" in r.json()["message"]
    r = requests.post(url + "/predictions/echo", data="x" * 5000)
    assert r.status_code == 413 and r.json()["code"] == 413 and "max_request_size" in r.json()["message"]
    r = requests.post(url + "/predictions/echo", data="stream", headers={"Content-Type": "text/plain"}, stream=True)
    assert r.status_code == 200 and r.headers.get("Transfer-Encoding") == "chunked"
    assert b"".join(r.iter_content(None)) == b"part-1part-2"
    r = requests.get(url + "/predictions/echo")
    assert r.status_code == 405 and "GET" in r.json()["message"]
    assert requests.get(url + "/ping").json() == {"status": "Healthy"}


def test_one_connection_moves_from_the_fast_path_to_aiohttp(servers):
    """Predictions, then other routes, then predictions again, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(servers["fast"]), timeout=30)
    sock_ids = set()
    for method, path, body, want in (
            ("POST", "/predictions/echo", b"1", 200),
            ("POST", "/predictions/echo", b"2", 200),
            ("GET", "/ping", None, 200),  # handed over to aiohttp here
            ("POST", "/predictions/echo", b"3", 200),  # aiohttp serves the rest of this connection
            ("GET", "/nowhere", None, 404),
            ("POST", "/predictions/echo", b"4", 200)):
        conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == want, (path, data)
        if body:
            assert json.loads(data)["echo"] == body.decode()
        sock_ids.add(id(conn.sock))
    assert len(sock_ids) == 1  # never reconnected
    conn.close()


def test_pipelined_and_split_requests(servers):
    port = _port(servers["fast"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        # three requests in one write: answered in order
        s.sendall(_post("/predictions/echo", b"a") + _post("/predictions/echo", b"b") + _post("/predictions/echo", b"c"))
        assert [json.loads(_read_response(f)[2])["echo"] for _ in range(3)] == ["a", "b", "c"]
        # one request in pieces, the head split mid-line and the body late
        raw = _post("/predictions/echo", b"slow-body")
        for piece in (raw[:7], raw[7:30], raw[30:-4], raw[-4:]):
            s.sendall(piece)
            time.sleep(0.05)
        status, _, body = _read_response(f)
        assert status == 200 and json.loads(body)["echo"] == "slow-body"
        # a prediction followed, in the same write, by a request for aiohttp
        s.sendall(_post("/predictions/echo", b"d") + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(_read_response(f)[2])["echo"] == "d"
        assert json.loads(_read_response(f)[2]) == {"status": "Healthy"}


def test_a_long_pipelined_run_of_errors_and_answers(servers):
    """Errors answered at once and answers from a worker, pipelined in one write, come back in order."""
    port = _port(servers["fast"])
    n = 400  # answered without the worker: handled one after the other, never by nested calls
    raw = b"".join(_post("/predictions/missing", b"x") for _ in range(n))
    raw += _post("/predictions/echo", b"e1") + _post("/predictions/missing", b"y") + _post("/predictions/echo", b"e2")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        s.sendall(raw)
        statuses = [_read_response(f)[0] for _ in range(n)]
        assert statuses == [404] * n
        first, missing, second = (_read_response(f) for _ in range(3))
    assert (first[0], json.loads(first[2])["echo"]) == (200, "e1")
    assert missing[0] == 404 and json.loads(missing[2])["type"] == "ModelNotFoundException"
    assert (second[0], json.loads(second[2])["echo"]) == (200, "e2")


def test_unusual_requests_go_to_aiohttp_and_are_answered(servers):
    port = _port(servers["fast"])

    def exchange(raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw)
            return _read_response(s.makefile("rb"))

    # chunked request body
    chunked = (b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, _, body = exchange(chunked)
    assert status == 200 and json.loads(body)["echo"] == "abcde"
    # Expect: 100-continue (curl sends it for bodies over 1 KB)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        s.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 100")
        f.readline()
        s.sendall(b"wxyz")
        status, _, body = _read_response(f)
        assert status == 200 and json.loads(body)["echo"] == "wxyz"
    # malformed: a space before the colon, two Content-Lengths, a garbage request line
    for raw in (b"POST /predictions/echo HTTP/1.1\r\nHost : x\r\nContent-Length: 1\r\n\r\n1",
                b"POST /predictions/echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n12",
                b"\x16\x03\x01garbage\r\n\r\n"):
        status, _, _ = exchange(raw)
        assert status == 400, raw
    # percent-encoded and trailing-slash paths are routed by aiohttp
    assert exchange(_post("/predictions/ec%68o", b"p"))[0] == 200
    assert exchange(_post("/predictions/echo/", b"p"))[0] == 404
    # a multipart form, read by aiohttp
    r = requests.post(servers["fast"].url + "/predictions/echo", files={"data": ("x.txt", b"filed", "text/plain")})
    assert r.status_code == 200 and r.json()["echo"] == "filed"
    # the server still serves on the fast path afterwards
    assert requests.post(servers["fast"].url + "/predictions/echo", data="after").json()["echo"] == "after"


def test_http10_and_connection_close(servers):
    port = _port(servers["fast"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_post("/predictions/echo", b"old", version="1.0"))
        f = s.makefile("rb")
        status, headers, body = _read_response(f)
        assert status == 200 and headers.get("connection") == "close" and json.loads(body)["echo"] == "old"
        assert f.read() == b""  # the server closed the connection
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # ApacheBench's ab -k
        f = s.makefile("rb")
        for i in range(2):
            s.sendall(_post("/predictions/echo", b"ka%d" % i, extra="Connection: Keep-Alive\r\n", version="1.0"))
            status, headers, body = _read_response(f)
            assert headers.get("connection") == "keep-alive" and json.loads(body)["echo"] == f"ka{i}"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_post("/predictions/echo", b"bye", extra="Connection: close\r\n"))
        f = s.makefile("rb")
        assert _read_response(f)[0] == 200 and f.read() == b""


def test_fast_path_requests_reach_the_access_log(servers):
    srv = servers["fast"]
    requests.post(srv.url + "/predictions/echo/1.0?probe=access", data="logged")
    log = Path(srv.log_dir) / "access_log.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text().splitlines() if "probe=access" in ln] if log.exists() else []
        if lines:
            break
        time.sleep(0.1)
    assert lines and '"POST /predictions/echo/1.0?probe=access HTTP/1.1" 200' in lines[0]
    assert lines[0].split()[1] == "127.0.0.1"
