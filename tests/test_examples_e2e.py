"""The bundled examples, built from scratch by their scripts and served by a real server."""
from __future__ import annotations

import concurrent.futures as cf
import io
import subprocess
import sys

import pytest
import requests

from conftest import ROOT


def _build(example: str, store) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / example / "build.py"), "--export-path", str(store)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_simple_linear_answers_about_nine(model_store, server_factory):
    _build("simple_linear", model_store)
    srv = server_factory(model_store, ["simple_linear=simple_linear.mar"]).start()
    r = requests.post(srv.url + "/predictions/simple_linear", data="5.0", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    value = r.json()
    value = value[0] if isinstance(value, list) else value
    assert abs(float(value) - 9.0) < 0.1
    # curl -d without a content type sends a form-encoded bare value; it still works
    r = requests.post(srv.url + "/predictions/simple_linear", data="5.0",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and abs(float(r.json()[0]) - 9.0) < 0.1
    r = requests.post(srv.url + "/predictions/simple_linear", data="five", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["code"] == 400


def test_image_classifier_batches_up_to_eight(model_store, server_factory):
    PIL = pytest.importorskip("PIL.Image")
    _build("image_classifier", model_store)
    srv = server_factory(model_store, ["image_classifier=image_classifier.mar"]).start()
    d = srv.describe("image_classifier")[0]
    assert d["batchSize"] == 8
    buf = io.BytesIO()
    PIL.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    png = buf.getvalue()
    url = srv.url + "/predictions/image_classifier"
    with cf.ThreadPoolExecutor(12) as ex:
        rs = list(ex.map(lambda _: requests.post(url, data=png, headers={"Content-Type": "image/png"}), range(12)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    sizes = [int(r.headers["x-batch-size"]) for r in rs]
    assert max(sizes) <= 8 and max(sizes) > 1, sizes
    top = rs[0].json()
    assert len(top) == 3 and all(len(item) == 1 for item in top)
    probs = [list(item.values())[0] for item in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    flat = [0.1] * (3 * 32 * 32)
    r = requests.post(url, json=flat)
    assert r.status_code == 200 and len(r.json()) == 3
    r = requests.post(url, data=b"not an image", headers={"Content-Type": "image/png"})
    assert r.status_code == 400


def test_torch_model_archiver_mar_with_modelserve_handler(model_store, server_factory, tmp_path):
    """A .mar built by torch-model-archiver 0.12 (eager model, modelserve.BaseHandler) serves unchanged."""
    import shutil

    tma = shutil.which("torch-model-archiver", path=str(ROOT / ".venv" / "bin")) or shutil.which("torch-model-archiver")
    if tma is None:
        pytest.skip("torch-model-archiver is not installed (it is in the test extras)")
    ex = ROOT / "examples" / "simple_linear"
    work = tmp_path / "train"
    work.mkdir()
    res = subprocess.run([sys.executable, str(ex / "train.py"), "--output-dir", str(work)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    env = dict(__import__("os").environ, TMPDIR=str(tmp_path))
    res = subprocess.run([tma, "--model-name", "tma_linear", "--version", "3.0", "--model-file", str(ex / "model.py"),
                          "--serialized-file", str(work / "model.pth"), "--handler", str(ex / "handler.py"),
                          "--export-path", str(model_store)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    srv = server_factory(model_store, ["tma_linear=tma_linear.mar"]).start()
    r = requests.post(srv.url + "/predictions/tma_linear", data="5.0", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert abs(float(r.json()[0]) - 9.0) < 0.1
    assert srv.describe("tma_linear")[0]["modelVersion"] == "3.0"
