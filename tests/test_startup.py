"""Starting the server: CLI, config.properties, load failures that reach the user, shutdown."""
from __future__ import annotations

import subprocess
import time

import psutil
import requests

from conftest import Server, make_archive, modelserve_cmd

OK = """
def handle(data, context):
    if data is None:
        return None
    return ["ok"] * len(data)
"""

BROKEN = """
from modelserve import BaseHandler


class Broken(BaseHandler):
    def initialize(self, context):
        raise RuntimeError("weights are missing: cannot initialise the broken model")
"""

BAD_IMPORT = """
import module_that_does_not_exist_anywhere

def handle(data, context):
    return data
"""


def test_foreground_start_fails_with_the_workers_traceback(model_store, server_factory):
    make_archive(model_store, "broken", BROKEN)
    srv = server_factory(model_store, ["broken=broken.mar"])
    srv.start(wait=False)
    code = srv.proc.wait(120)
    out = srv.read_output()
    assert code != 0
    assert "RuntimeError: weights are missing: cannot initialise the broken model" in out
    assert "Traceback" in out


def test_daemon_start_reports_import_error_and_exits_nonzero(model_store, tmp_path):
    make_archive(model_store, "badimport", BAD_IMPORT)
    wd = tmp_path / "wd"
    wd.mkdir()
    srv = Server(wd, model_store, ["badimport=badimport.mar"])
    cmd = [c for c in srv.cmd if c != "--foreground"]
    res = subprocess.run(cmd, env=srv.env, cwd=wd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "ModuleNotFoundError" in res.stderr and "module_that_does_not_exist_anywhere" in res.stderr


def test_daemon_start_stop_and_describe(model_store, tmp_path):
    make_archive(model_store, "okmodel", OK, version="2.5", config_yaml="batchSize: 2\nmaxBatchDelay: 7\n")
    wd = tmp_path / "wd"
    wd.mkdir()
    srv = Server(wd, model_store, ["okmodel=okmodel.mar"])
    cmd = [c for c in srv.cmd if c != "--foreground"]
    res = subprocess.run(cmd, env=srv.env, cwd=wd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Model server started" in res.stdout
    pid = int((wd / "modelserve.pid").read_text())
    try:
        r = requests.post(srv.url + "/predictions/okmodel", data="x")
        assert r.status_code == 200 and r.text == "ok"
        assert "okmodel" in [m["modelName"] for m in requests.get(srv.mgmt + "/models").json()["models"]]
        d = srv.describe("okmodel")[0]
        assert d["modelName"] == "okmodel" and d["modelVersion"] == "2.5"
        assert d["batchSize"] == 2 and d["maxBatchDelay"] == 7 and d["modelUrl"] == "okmodel.mar"
        w = d["workers"][0]
        assert w["status"] == "READY" and psutil.pid_exists(w["pid"]) and w["id"]
        worker_pid = w["pid"]
    finally:
        res = subprocess.run(modelserve_cmd() + ["--stop"], env=srv.env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 10
    while psutil.pid_exists(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(worker_pid)


def test_unknown_config_keys_are_warned_by_name(model_store, server_factory):
    make_archive(model_store, "okmodel", OK)
    srv = server_factory(model_store, ["okmodel=okmodel.mar"],
                         extra_config="number_of_netty_threads=4\ntotally_made_up_key=1\n").start()
    srv.stop()
    out = srv.read_output()
    assert "totally_made_up_key" in out and "number_of_netty_threads" in out


def test_sigterm_stops_server_and_workers(model_store, server_factory):
    make_archive(model_store, "okmodel", OK)
    srv = server_factory(model_store, ["okmodel=okmodel.mar"]).start()
    worker_pid = srv.describe("okmodel")[0]["workers"][0]["pid"]
    assert srv.stop() == 0
    deadline = time.monotonic() + 10
    while psutil.pid_exists(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(worker_pid)


def test_version_flag():
    res = subprocess.run(modelserve_cmd() + ["--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("modelserve ")
