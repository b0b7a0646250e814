"""The worker template: workers are forks of a process that imported torch once (``worker_template``)."""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import psutil
import pytest
import requests

from conftest import make_archive

INFO = """
import os
import sys
import time

import torch


def fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}")) if int(fd) > 2 else None
        except OSError:  # the listing's own descriptor
            pass
    return sorted(out)


def handle(data, context):
    if data is None:
        print("init output of pid", os.getpid())
        return None
    out = []
    for row in data:
        body = row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        if body == "exit":
            os._exit(7)
        if body == "sleep":
            print("sleeping now", flush=True)
            time.sleep(30)
        out.append({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "path0": sys.path[0],
                    "model_dir": context.system_properties["model_dir"],
                    "omp": os.environ.get("OMP_NUM_THREADS"), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
                    "torch_threads": torch.get_num_threads(), "spec_env": "MODELSERVE_WORKER_SPEC" in os.environ,
                    "stdin": os.readlink("/proc/self/fd/0"),
                    "fds": fds()})
    return out
"""

OK = """
def handle(data, context):
    return None if data is None else ["ok"] * len(data)
"""

BROKEN = """
from modelserve import BaseHandler


class Broken(BaseHandler):
    def initialize(self, context):
        raise RuntimeError("weights are missing: the forked worker cannot initialise")
"""


def _post(srv, name, body="x", timeout=60):
    return requests.post(f"{srv.url}/predictions/{name}", data=body, headers={"Content-Type": "text/plain"},
                         timeout=timeout)


def _info(srv, name="info"):
    r = _post(srv, name)
    assert r.status_code == 200, r.text
    return r.json()


def _cmdline(pid):
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ready_pids(srv, name="info"):
    workers = srv.describe(name)[0]["workers"]
    return [w["pid"] for w in workers if w["status"] == "READY"]


def _template_pid(srv):
    pids = [c.pid for c in psutil.Process(srv.proc.pid).children() if "modelserve.worker.template" in _cmdline(c.pid)]
    assert len(pids) <= 1, pids
    return pids[0] if pids else None


@pytest.mark.parametrize("template", [True, False])
def test_a_forked_worker_looks_like_a_spawned_one(model_store, server_factory, template):
    make_archive(model_store, "info", INFO)
    srv = server_factory(model_store, ["info=info.mar"],
                         extra_config=f"worker_template={str(template).lower()}\nnumber_of_threads=1\n").start()
    info = _info(srv)
    template_pid = _template_pid(srv)
    assert srv.describe("info")[0]["workers"][0]["pid"] == info["pid"]
    if template:
        assert template_pid is not None and info["ppid"] == template_pid
        assert "modelserve.worker.template" in _cmdline(info["ppid"])
    else:
        assert template_pid is None and info["ppid"] == srv.proc.pid
    # what a spawned worker gets from its interpreter start, a forked one gets from the template
    assert info["cwd"] == info["path0"] == info["model_dir"]
    assert info["omp"] == "1" and info["torch_threads"] == 1 and info["unbuffered"] == "1"
    assert info["spec_env"] is False and info["stdin"] == "/dev/null"
    if template:  # nothing of the template's (control socket, wakeup pipe) leaks into a worker
        assert [link.split(":")[0] for link in info["fds"]] == ["socket"], info["fds"]
    # its output is tagged with its pid in the model log
    log = srv.log_dir / "model_log.log"
    assert _wait(lambda: f"pid {info['pid']}] init output of pid {info['pid']}" in log.read_text())


def test_a_killed_worker_is_reported_and_forked_again_from_the_template(model_store, server_factory):
    make_archive(model_store, "info", INFO)
    srv = server_factory(model_store, ["info=info.mar"]).start()
    first = _info(srv)
    template_pid = first["ppid"]
    assert "modelserve.worker.template" in _cmdline(template_pid)
    # a worker's own exit code reaches the request, as with a spawned worker
    r = _post(srv, "info", "exit")
    assert r.status_code == 500 and r.json()["message"].startswith("Worker died (exit code 7)"), r.text
    assert _wait(lambda: len(_ready_pids(srv)) == 1)
    # and a signal: kill -9 the worker while it runs a request
    victim = _ready_pids(srv)[0]
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_post, srv, "info", "sleep")
        assert _wait(lambda: "sleeping now" in srv.read_output())  # the worker runs "sleep"
        os.kill(victim, signal.SIGKILL)
        r = fut.result(60)
    assert r.status_code == 500 and "killed by signal SIGKILL" in r.json()["message"], r.text
    assert _wait(lambda: _ready_pids(srv) and victim not in _ready_pids(srv))
    again = _info(srv)
    assert again["pid"] != victim and again["ppid"] == template_pid  # restarted through the template
    assert "killed by signal SIGKILL" in srv.read_output()


def test_kill9_of_the_frontend_takes_template_and_workers_down(model_store, server_factory):
    # more workers than a Unix socket queues fork requests by default (10): the rest wait their turn
    make_archive(model_store, "info", OK, config_yaml="minWorkers: 12\nmaxWorkers: 12\n")
    srv = server_factory(model_store, ["info=info.mar"]).start()
    workers = _ready_pids(srv)
    template_pid = _template_pid(srv)
    assert len(workers) == 12 and template_pid is not None
    assert all(psutil.Process(p).ppid() == template_pid for p in workers)
    srv.proc.kill()
    srv.proc.wait(30)
    assert _wait(lambda: all(_gone(p) for p in [template_pid, *workers]), 30), \
        [(p, _cmdline(p)) for p in [template_pid, *workers] if not _gone(p)]


def test_a_dead_template_is_restarted_once_then_workers_are_spawned(model_store, server_factory):
    make_archive(model_store, "info", INFO)
    srv = server_factory(model_store, ["info=info.mar"], extra_config="worker_ping_interval=0\n").start()
    first = _info(srv)
    os.kill(first["ppid"], signal.SIGKILL)  # the template: its worker dies with it
    assert _wait(lambda: _gone(first["pid"]), 30)
    assert _wait(lambda: first["pid"] not in _ready_pids(srv) and len(_ready_pids(srv)) == 1)
    second = _info(srv)
    assert second["ppid"] not in (first["ppid"], srv.proc.pid)
    assert "modelserve.worker.template" in _cmdline(second["ppid"])  # the restarted template
    os.kill(second["ppid"], signal.SIGKILL)
    assert _wait(lambda: _gone(second["pid"]), 30)
    assert _wait(lambda: second["pid"] not in _ready_pids(srv) and len(_ready_pids(srv)) == 1)
    assert _info(srv)["ppid"] == srv.proc.pid  # its one restart used up: spawned the old way
    out = srv.read_output()
    assert "worker template" in out and "restarting the worker template" in out


def test_a_forked_worker_that_fails_to_load_reports_its_traceback(model_store, server_factory):
    make_archive(model_store, "broken", BROKEN)
    make_archive(model_store, "info", INFO)
    srv = server_factory(model_store, ["info=info.mar"], args=["--enable-model-api"]).start()
    assert _template_pid(srv) is not None
    r = requests.post(f"{srv.mgmt}/models", params={"url": "broken.mar", "initial_workers": 1,
                                                     "synchronous": "true"}, timeout=120)
    assert r.status_code >= 400
    message = r.json()["message"]
    assert "RuntimeError: weights are missing: the forked worker cannot initialise" in message
    assert "Traceback" in message


EXITING = """
import atexit
import os


def handle(data, context):
    if data is None:
        path = context.model_yaml_config["marker"]
        f = open(path, "w")  # never closed or flushed: interpreter finalisation flushes it
        f.write(f"buffered by {os.getpid()}\\n")
        handle.f = f
        atexit.register(lambda: open(path + ".atexit", "w").write("atexit ran\\n"))
        return None
    return [os.getppid()] * len(data)
"""


def test_a_forked_worker_exits_like_an_interpreter(model_store, server_factory, tmp_path):
    marker = tmp_path / "marker.txt"
    make_archive(model_store, "exiting", EXITING, config_yaml=f"marker: {marker}\n")
    srv = server_factory(model_store, ["exiting=exiting.mar"]).start()
    r = _post(srv, "exiting")
    assert r.status_code == 200 and r.json() == _template_pid(srv)
    pid = _ready_pids(srv, "exiting")[0]
    assert srv.stop() == 0
    assert marker.read_text() == f"buffered by {pid}\n"
    assert (tmp_path / "marker.txt.atexit").read_text() == "atexit ran\n"


def test_unforkable_environments_are_spawned():
    from modelserve.spawn import WorkerTemplate

    t = WorkerTemplate()
    t.env = {"PATH": "/bin", "OMP_NUM_THREADS": "4"}
    assert t.unforkable({"PATH": "/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "1",
                         "MODELSERVE_WORKER_SPEC": "{}"}) is None
    assert "LD_PRELOAD" in t.unforkable({"PATH": "/bin", "LD_PRELOAD": "/lib/libjemalloc.so"})
    assert "PYTHONPATH" in t.unforkable({"PATH": "/bin", "PYTHONPATH": "/opt/extra"})
    assert "MALLOC_ARENA_MAX" in t.unforkable({"PATH": "/bin", "MALLOC_ARENA_MAX": "2"})


def test_fork_requests_wait_while_the_control_socket_is_full():
    """The template reads nothing while it imports torch: requests queue, then wait for room."""
    import asyncio
    import socket

    from modelserve.spawn import WorkerTemplate

    async def scenario():
        t = WorkerTemplate()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        t.sock = ours
        queued = 0
        try:
            while True:
                ours.send(b"x" * 4096)
                queued += 1
        except BlockingIOError:
            pass
        r, w = os.pipe()
        sends = [asyncio.ensure_future(t._send(b"request %d" % i, [w])) for i in range(3)]
        await asyncio.sleep(0.1)
        assert not any(s.done() for s in sends)
        sends[0].cancel()  # a cancelled sender leaves the others waiting for room, not stranded
        for _ in range(queued):
            theirs.recv(8192)
        await asyncio.wait_for(asyncio.gather(*sends[1:]), 5)
        got = []
        for _ in range(2):
            data, fds, _, _ = socket.recv_fds(theirs, 100, 1)
            got.append(data)
            for fd in fds:
                os.close(fd)
        assert sorted(got) == [b"request 1", b"request 2"]
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()

    asyncio.run(scenario())
