"""Pipelining: a worker holds the batch it runs and the next one, which must never run once its client is gone."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_archive
from modelserve.batching import RequestQueue
from modelserve.types import InferenceRequest

# Logs every request it starts to the file named by ``log`` in model-config.yaml.
RECORDER = """
import os
import time


def handle(data, context):
    if data is None:
        return None
    cfg = context.model_yaml_config
    out = []
    for row in data:
        body = row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        with open(cfg["log"], "a") as f:
            f.write(f"{body} {os.getpid()}\\n")
        if body == "hang":
            time.sleep(3600)
        if body.startswith("sleep"):
            time.sleep(float(cfg.get("sleep", 1.0)))
        out.append({"pid": os.getpid(), "body": body})
    return out
"""


def _archive(store: Path, log: Path, config: str = "") -> None:
    make_archive(store, "rec", RECORDER, config_yaml=f"log: {log}\nbatchSize: 1\n{config}")


def _post(srv, body: str, timeout: float = 60) -> requests.Response:
    return requests.post(srv.url + "/predictions/rec", data=body, headers={"Content-Type": "text/plain"},
                         timeout=timeout)


def _ran(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def _metric(srv, family: str, name: str, **labels: str) -> float:
    r = requests.get(srv.metrics_url + "/metrics", timeout=10)
    for fam in text_string_to_metric_families(r.text):
        if fam.name == family:
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
    return 0.0


def _pipelined(srv) -> float:
    return _metric(srv, "modelserve_pipelined_batches", "modelserve_pipelined_batches_total", model_name="rec")


def _wait(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _pending(srv) -> int:
    return srv.describe("rec")[0]["jobQueueStatus"]["pendingRequests"]


def test_busy_worker_gets_its_next_batch_while_running_one(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "sleep: 0.1\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    for i in range(3):  # one at a time: nothing to pipeline
        assert _post(srv, f"sleep{i}").status_code == 200
    assert _pipelined(srv) == 0
    with cf.ThreadPoolExecutor(6) as ex:
        codes = [r.status_code for r in ex.map(lambda i: _post(srv, f"sleep-c{i}"), range(6))]
    assert codes == [200] * 6
    assert _pipelined(srv) >= 1
    assert len(_ran(log)) == 9


def test_light_load_still_spreads_over_idle_workers(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "sleep: 0.5\nminWorkers: 2\nmaxWorkers: 2\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    assert _wait(lambda: sum(w["status"] == "READY" for w in srv.describe("rec")[0]["workers"]) == 2)
    with cf.ThreadPoolExecutor(2) as ex:
        answers = list(ex.map(lambda i: _post(srv, f"sleep{i}"), range(2)))
    assert [r.status_code for r in answers] == [200, 200]
    assert len({r.json()["pid"] for r in answers}) == 2  # not both on one worker, one behind the other
    assert _pipelined(srv) == 0


def test_client_gone_while_its_batch_waits_in_the_worker_never_runs(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "sleep: 1.5\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    with cf.ThreadPoolExecutor(2) as ex:
        slow = ex.submit(_post, srv, "sleep")
        assert _wait(lambda: _ran(log) == ["sleep"])  # the worker runs it
        gone = ex.submit(_post, srv, "gone", 0.5)
        assert _wait(lambda: _pending(srv) == 0 and gone.running(), 5)
        try:
            gone.result()
            raise AssertionError("the request was answered before its client gave up")
        except requests.exceptions.ReadTimeout:
            pass  # the client hung up while "gone" waited behind "sleep" in the worker's socket
        assert slow.result().status_code == 200
    assert _post(srv, "after").status_code == 200
    assert _ran(log) == ["sleep", "after"]
    assert _pipelined(srv) == 1  # "gone" did reach the worker (and came back unrun)


def test_request_expiring_in_the_worker_socket_answers_504_unrun(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "sleep: 1.0\nclientTimeoutInMills: 300\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    with cf.ThreadPoolExecutor(2) as ex:
        slow = ex.submit(_post, srv, "sleep")
        assert _wait(lambda: _ran(log) == ["sleep"])
        late = _post(srv, "late")
        assert slow.result().status_code == 200
    assert late.status_code == 504, late.text
    assert late.json()["message"] == "Request timed out in the queue before reaching a worker"
    assert _ran(log) == ["sleep"]
    assert _pipelined(srv) == 1  # it expired in the worker's socket, not in the frontend's queue
    assert _metric(srv, "modelserve_requests_rejected", "modelserve_requests_rejected_total", reason="timeout") == 1


def test_kill9_with_two_batches_in_flight_requeues_the_second(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log)
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    victim = srv.describe("rec")[0]["workers"][0]["pid"]
    with cf.ThreadPoolExecutor(2) as ex:
        hung = ex.submit(_post, srv, "hang")
        assert _wait(lambda: _ran(log) == ["hang"])
        second = ex.submit(_post, srv, "second")
        assert _wait(lambda: _pending(srv) == 0 and second.running(), 5)
        time.sleep(0.2)  # "second" waits in the worker's socket
        os.kill(victim, signal.SIGKILL)
        died = hung.result()
        again = second.result()
    assert died.status_code == 500 and died.json()["message"].startswith("Worker died"), died.text
    assert again.status_code == 200, again.text
    assert again.json()["pid"] != victim  # run by the restarted worker
    assert _ran(log) == ["hang", "second"]


def test_response_timeout_counts_from_when_a_batch_starts(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "sleep: 1.2\nresponseTimeout: 2\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    with cf.ThreadPoolExecutor(2) as ex:
        first = ex.submit(_post, srv, "sleep1")
        assert _wait(lambda: _ran(log) == ["sleep1"])
        second = ex.submit(_post, srv, "sleep2")  # ends ~2.4 s after it was sent, 1.2 s after it started
        assert first.result().status_code == 200
        assert second.result().status_code == 200, second.result().text
    assert _pipelined(srv) == 1


def test_response_timeout_fails_the_running_batch_and_requeues_the_next(model_store, server_factory, tmp_path):
    log = tmp_path / "ran.log"
    _archive(model_store, log, "responseTimeout: 2\n")
    srv = server_factory(model_store, ["rec=rec.mar"]).start()
    victim = srv.describe("rec")[0]["workers"][0]["pid"]
    with cf.ThreadPoolExecutor(2) as ex:
        hung = ex.submit(_post, srv, "hang")
        assert _wait(lambda: _ran(log) == ["hang"])
        second = ex.submit(_post, srv, "second")
        timed_out, again = hung.result(), second.result()
    assert timed_out.status_code == 504 and "response_timeout" in timed_out.json()["message"]
    assert again.status_code == 200 and again.json()["pid"] != victim, again.text


# --- the queue's side: a busy worker only takes work no idle worker is about to take -------------------

def test_queue_wakes_a_busy_spare_only_for_work_no_idle_waiter_takes():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        q = RequestQueue(10)

        def req(n: int) -> InferenceRequest:
            return InferenceRequest(f"r{n}", [], [], 0.0, loop.create_future())

        idle = asyncio.ensure_future(q.get_batch(1, 0.0))
        await asyncio.sleep(0)
        spare = loop.create_future()
        q.add_spare(spare)
        r1, r2 = req(1), req(2)
        q.put(r1)
        assert not spare.done()  # the idle worker takes it
        assert not q.has_unclaimed()
        assert await q.get_batch(1, 0.0, wait=False) == ([], "")  # a busy worker leaves it alone
        q.put(r2)
        assert spare.done() and q.has_unclaimed()  # nobody idle for this one: the busy worker may
        assert await idle == ([r1], "full")
        assert await q.get_batch(1, 0.0, wait=False) == ([r2], "full")
        q.remove_spare(spare)
        assert not q.has_unclaimed() and len(q) == 0

    asyncio.run(main())
