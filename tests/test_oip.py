"""The Open Inference Protocol (REST and gRPC) and KServe v1, end to end, with real clients.

One server for the module: a TorchScript model served by the built-in ``tensor`` handler (FP32,
INT64 and BYTES inputs; batched across requests) and a Python handler that uses named tensors.
"""
from __future__ import annotations

import concurrent.futures as cf
import re
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from conftest import Server, archiver_cmd, make_archive

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TENSOR_YAML = """\
batchSize: 8
maxBatchDelay: 150
inputs:
  - {name: x, datatype: FP32, shape: [-1, 3]}
  - {name: ids, datatype: INT64, shape: [-1]}
  - {name: text, datatype: BYTES, shape: [-1]}
outputs:
  - {name: y, datatype: FP32, shape: [-1, 3]}
  - {name: ids_out, datatype: INT64, shape: [-1]}
  - {name: text_out, datatype: BYTES, shape: [-1]}
  - {name: rows, datatype: INT64, shape: [-1]}
"""

NAMED = """
import numpy as np


def handle(data, context):
    if data is None:
        return None
    out = []
    for item in data:
        a = item["a"]
        if a.datatype != "FP32":
            raise ValueError("expected FP32")
        out.append([
            {"name": "double", "data": a.data * 2},
            {"name": "info", "data": [a.name, a.datatype, type(a.data).__name__, str(list(a.shape))]},
            {"name": "ones", "data": np.ones((2,), dtype=np.float64)},
        ])
    return out
"""

NAMED_YAML = """\
maxBatchSize: 0
inputs:
  - {name: a, datatype: FP32, shape: [-1]}
outputs:
  - {name: double, datatype: FP16, shape: [-1]}
  - {name: info, datatype: BYTES, shape: [4]}
  - {name: ones, datatype: FP32, shape: [2]}
"""


def build_tensor_archive(store: Path, name: str, workdir: Path) -> Path:
    import torch
    from typing import List, Tuple

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor, ids: torch.Tensor,
                    text: List[str]) -> Tuple[torch.Tensor, torch.Tensor, List[str], torch.Tensor]:
            return x * 2.0 + 1.0, ids + 1, [t.upper() for t in text], torch.full_like(ids, x.shape[0])

    workdir.mkdir(parents=True, exist_ok=True)
    pt = workdir / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script, still what TorchServe users ship
        torch.jit.script(Model()).save(str(pt))
    cfg = workdir / "model-config.yaml"
    cfg.write_text(TENSOR_YAML)
    subprocess.run(archiver_cmd() + ["--model-name", name, "--version", "1.0", "--handler", "tensor",
                                     "--serialized-file", str(pt), "--config-file", str(cfg),
                                     "--export-path", str(store), "--force"],
                   check=True, capture_output=True, text=True)
    return store / f"{name}.mar"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip")
    store = root / "store"
    store.mkdir()
    build_tensor_archive(store, "demo", root / "src-demo")
    make_archive(store, "named", NAMED, config_yaml=NAMED_YAML)
    wd = root / "server"
    wd.mkdir()
    srv = Server(wd, store, ["demo=demo.mar", "named=named.mar"]).start()
    yield srv
    srv.stop()


def grpc_url(srv: Server) -> str:
    return f"127.0.0.1:{srv.ports['grpc']}"


def http_url(srv: Server) -> str:
    return f"127.0.0.1:{srv.ports['inference']}"


X = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
IDS = np.array([5, -7], dtype=np.int64)
TEXT = np.array([b"foo", "h\u00e9llo".encode()], dtype=np.object_)


def _inputs(mod, binary=True, x=X, ids=IDS, text=TEXT):
    ins = [mod.InferInput("x", list(x.shape), "FP32"), mod.InferInput("ids", list(ids.shape), "INT64"),
           mod.InferInput("text", list(text.shape), "BYTES")]
    for inp, value in zip(ins, (x, ids, text)):
        if mod is tritonhttp:
            inp.set_data_from_numpy(value, binary_data=binary)
        else:
            inp.set_data_from_numpy(value)
    return ins


def _check(result, x=X, ids=IDS, text=TEXT):
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 1)
    assert result.as_numpy("y").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("ids_out"), ids + 1)
    assert result.as_numpy("ids_out").dtype == np.int64
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("text_out").tolist()]
    assert got == [t.upper() for t in text.tolist()]  # TorchScript's str.upper() is ASCII-only, like bytes.upper()


# --- REST, by hand -------------------------------------------------------------------------------------

def test_rest_health_metadata_config_and_errors(server):
    url = server.url
    assert requests.get(url + "/v2/health/live").json() == {"live": True}
    assert requests.get(url + "/v2/health/ready").status_code == 200
    meta = requests.get(url + "/v2").json()
    assert meta["name"] == "modelserve" and "binary_tensor_data" in meta["extensions"]
    md = requests.get(url + "/v2/models/demo").json()
    assert md["name"] == "demo" and md["versions"] == ["1.0"] and md["platform"] == "pytorch_libtorch"
    assert md["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
    assert [o["name"] for o in md["outputs"]] == ["y", "ids_out", "text_out", "rows"]
    assert requests.get(url + "/v2/models/demo/versions/1.0").json() == md
    assert requests.get(url + "/v2/models/demo/ready").status_code == 200
    assert requests.get(url + "/v2/models/demo/versions/1.0/ready").status_code == 200
    cfg = requests.get(url + "/v2/models/demo/config").json()
    assert cfg["max_batch_size"] == 8 and cfg["backend"] == "pytorch"
    assert cfg["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [3],
                               "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}
    assert cfg["input"][2]["data_type"] == "TYPE_STRING"
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 150000}
    named = requests.get(url + "/v2/models/named/config").json()
    assert named["max_batch_size"] == 0 and "dynamic_batching" not in named and named["output"][1]["dims"] == [4]
    index = requests.post(url + "/v2/repository/index", json={}).json()
    assert {(m["name"], m["state"]) for m in index} == {("demo", "READY"), ("named", "READY")}
    for path, code in (("/v2/models/nope", 404), ("/v2/models/nope/ready", 404), ("/v2/models/demo/versions/9/config", 404),
                       ("/v2/models/nope/stats", 404)):
        r = requests.get(url + path)
        assert r.status_code == code and set(r.json()) == {"error"}, (path, r.text)
    r = requests.delete(url + "/v2/models/demo/infer")
    assert r.status_code == 405 and "error" in r.json()


def _infer(url, body, **kw):
    return requests.post(url + "/v2/models/demo/infer", data=body, **kw)


def test_rest_json_and_binary_by_hand(server):
    url = server.url
    req = {"id": "abc", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [[0.5, 1, 2]]},
        {"name": "ids", "datatype": "INT64", "shape": [1], "data": [41]},
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["ok"]}],
        "outputs": [{"name": "y"}, {"name": "text_out"}]}
    r = _infer(url, orjson.dumps(req))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "demo" and body["model_version"] == "1.0"
    assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [2.0, 3.0, 5.0]},
                               {"name": "text_out", "datatype": "BYTES", "shape": [1], "data": ["OK"]}]
    # the binary extension: raw inputs after the JSON header, y as binary output, ids_out as JSON
    x = struct.pack("<3f", 1, 2, 3)
    text = struct.pack("<I", 2) + b"ab"
    head = orjson.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": len(x)}},
        {"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(text)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "ids_out"}]})
    r = _infer(url, head + x + text, headers={"Inference-Header-Content-Length": str(len(head)),
                                              "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    out = orjson.loads(r.content[:n])
    assert out["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}
    assert struct.unpack("<3f", r.content[n:]) == (3.0, 5.0, 7.0)
    assert out["outputs"][1]["data"] == [2]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["inputs"][0].update(datatype="FP64"), "datatype FP64 does not match"),
    (lambda r: r["inputs"][0].update(shape=[1, 4], data=[1, 2, 3, 4]), "does not match the model's [-1, 3]"),
    (lambda r: r["inputs"].pop(), "expects input(s) text"),
    (lambda r: r["inputs"].append({"name": "zz", "datatype": "FP32", "shape": [1], "data": [1]}), "unexpected inference input 'zz'"),
    (lambda r: r["inputs"][0].update(data=[1, 2]), "do not fill shape"),
    (lambda r: r["inputs"][0].update(datatype="FLOAT"), "unknown datatype"),
    (lambda r: r.update(outputs=[{"name": "nope"}]), "unexpected inference output(s) nope"),
    (lambda r: r.update(inputs=[]), "non-empty 'inputs'"),
])
def test_rest_bad_requests_answer_400_error(server, mutate, message):
    req = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                      {"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]},
                      {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    mutate(req)
    r = _infer(server.url, orjson.dumps(req))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_rest_malformed_binary_and_json(server):
    r = _infer(server.url, b"{not json")
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                     "parameters": {"binary_data_size": 12}}]})
    r = _infer(server.url, head + b"\0" * 4, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "runs past" in r.json()["error"]
    r = _infer(server.url, head, headers={"Inference-Header-Content-Length": "x"})
    assert r.status_code == 400


# --- real clients -------------------------------------------------------------------------------------

def test_tritonclient_http(server):
    client = tritonhttp.InferenceServerClient(http_url(server))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("demo")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["name"] == "modelserve"
    md = client.get_model_metadata("demo")
    assert md["inputs"][1] == {"name": "ids", "datatype": "INT64", "shape": [-1]}
    assert client.get_model_config("demo")["max_batch_size"] == 8
    before = client.get_inference_statistics("demo")["model_stats"][0]["inference_stats"]["success"]["count"]
    _check(client.infer("demo", _inputs(tritonhttp, binary=True)))
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=False) for n in ("y", "ids_out", "text_out")]
    _check(client.infer("demo", _inputs(tritonhttp, binary=False), outputs=outputs))
    one = client.infer("demo", _inputs(tritonhttp), outputs=[tritonhttp.InferRequestedOutput("ids_out")])
    assert one.as_numpy("y") is None and one.as_numpy("ids_out").tolist() == [6, -6]
    _check(client.infer("demo", _inputs(tritonhttp), request_compression_algorithm="gzip",
                        response_compression_algorithm="gzip"))
    stats = client.get_inference_statistics("demo")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == before + 4 and stats["inference_stats"]["success"]["ns"] > 0
    assert stats["inference_stats"]["queue"]["count"] >= 4 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    with pytest.raises(InferenceServerException, match="Model not found: nope"):
        client.infer("nope", _inputs(tritonhttp))
    with pytest.raises(InferenceServerException, match="does not match the model"):
        client.infer("demo", _inputs(tritonhttp, x=np.zeros((1, 2), np.float32), ids=IDS[:1], text=TEXT[:1]))
    assert client.get_inference_statistics("demo")["model_stats"][0]["inference_stats"]["fail"]["count"] >= 1


def test_tritonclient_grpc(server):
    client = tritongrpc.InferenceServerClient(grpc_url(server))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("demo")
    assert client.get_server_metadata().name == "modelserve"
    md = client.get_model_metadata("demo", as_json=True)
    assert md["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}
    cfg = client.get_model_config("demo", as_json=True)["config"]
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == ["3"]
    _check(client.infer("demo", _inputs(tritongrpc)))
    one = client.infer("demo", _inputs(tritongrpc), outputs=[tritongrpc.InferRequestedOutput("text_out")])
    assert one.as_numpy("y") is None and one.as_numpy("text_out").tolist() == [b"FOO", "H\u00e9LLO".encode()]
    stats = client.get_inference_statistics("demo", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 2
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", _inputs(tritongrpc))
    assert "NOT_FOUND" in str(err.value.status()) and "Model not found: nope" in err.value.message()
    bad = _inputs(tritongrpc)
    bad[1] = tritongrpc.InferInput("ids", [2], "INT32")
    bad[1].set_data_from_numpy(IDS.astype(np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("demo", bad)
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "datatype INT32 does not match" in err.value.message()


def test_grpc_typed_contents_and_named_tensor_handler(server):
    import grpc

    from modelserve.grpc._generated import grpc_service_pb2 as pb
    from modelserve.grpc._generated import grpc_service_pb2_grpc as pbg

    with grpc.insecure_channel(grpc_url(server)) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="named", id="7")
        inp = req.inputs.add(name="a", datatype="FP32", shape=[3])
        inp.contents.fp32_contents.extend([1.5, 2.0, -3.0])
        resp = stub.ModelInfer(req, timeout=30)
        assert resp.id == "7" and resp.model_name == "named"
        outs = {o.name: (o, raw) for o, raw in zip(resp.outputs, resp.raw_output_contents)}
        o, raw = outs["double"]
        assert o.datatype == "FP16" and list(o.shape) == [3]
        assert struct.unpack("<3e", raw) == (3.0, 4.0, -6.0)
        o, raw = outs["info"]
        assert o.datatype == "BYTES" and list(o.shape) == [4]
        assert raw == b"".join(struct.pack("<I", len(s)) + s for s in (b"a", b"FP32", b"Tensor", b"[3]"))
        o, raw = outs["ones"]
        assert o.datatype == "FP32" and struct.unpack("<2f", raw) == (1.0, 1.0)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert {m.name for m in index.models} == {"demo", "named"}
    # the same handler over REST JSON
    r = requests.post(server.url + "/v2/models/named/infer",
                      json={"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1, 2]}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {"name": "double", "datatype": "FP16", "shape": [2], "data": [2.0, 4.0]}


def test_requests_from_rest_and_grpc_batch_together(server):
    """Concurrent single-row requests over both protocols meet in one forward pass."""
    http_client = tritonhttp.InferenceServerClient(http_url(server), concurrency=4)
    grpc_client = tritongrpc.InferenceServerClient(grpc_url(server))

    def one(i):
        x = np.full((1, 3), i, np.float32)
        ids = np.array([i], np.int64)
        text = np.array([f"t{i}".encode()], np.object_)
        if i % 2:
            res = grpc_client.infer("demo", _inputs(tritongrpc, x=x, ids=ids, text=text))
        else:
            res = http_client.infer("demo", _inputs(tritonhttp, x=x, ids=ids, text=text))
        _check(res, x, ids, text)
        return int(res.as_numpy("rows")[0])

    with cf.ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(8)))
    assert max(rows) > 1, rows


# --- KServe v1 and TorchServe's route on the same model ----------------------------------------------

def test_kserve_v1(server):
    url = server.url
    assert requests.get(url + "/v1/models").json() == {"models": ["demo", "named"]}
    assert requests.get(url + "/v1/models/demo").json() == {"name": "demo", "ready": True}
    r = requests.get(url + "/v1/models/nope")
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    r = requests.post(url + "/v1/models/demo:predict", json={"instances": [
        {"x": [1, 2, 3], "ids": 4, "text": "a"}, {"x": [0, 0, 1], "ids": 0, "text": "b"}]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["y"] for p in preds] == [[3.0, 5.0, 7.0], [1.0, 1.0, 3.0]]
    assert [p["text_out"] for p in preds] == ["A", "B"] and preds[0]["rows"] == 2  # one batch of two
    r = requests.post(url + "/v1/models/demo:predict", json={"inputs": []})
    assert r.status_code == 400 and "instances" in r.json()["error"]
    r = requests.post(url + "/v1/models/nope:predict", json={"instances": [1]})
    assert r.status_code == 404


def test_torchserve_predictions_route_on_tensor_model(server):
    r = requests.post(server.url + "/predictions/demo", json={"x": [2, 2, 2], "ids": 1, "text": "z"})
    assert r.status_code == 200, r.text
    assert r.json() == {"y": [5.0, 5.0, 5.0], "ids_out": 2, "text_out": "Z", "rows": 1}


DOC = Path(__file__).resolve().parent.parent / "docs" / "oip.md"
BLOCK = re.compile(r"^```(bash|python)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _doc_blocks(lang):
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in BLOCK.finditer(text) if m.group(1) == lang]


def test_docs_examples_run(server):
    """docs/oip.md: each curl answers its '# expect:' status; each client snippet runs."""
    text = DOC.read_text()
    for route in ("/v2/health/live", "/v2/models/{model}[/versions/{version}]/infer", "/v2/repository/index",
                  "/v1/models/{model}:predict", "Inference-Header-Content-Length"):
        assert route in text, route
    failures = []
    for line, body in _doc_blocks("bash") if shutil.which("curl") else []:
        expect = re.search(r"^# expect: (\d{3})$", body, re.M)
        assert expect, f"docs/oip.md:{line}: curl block without '# expect: NNN'"
        cmd = re.sub(r"(?m)^curl ", "curl -sS -o /dev/null -w '%{http_code}' ",
                     body.replace("http://127.0.0.1:8080", server.url))
        run = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
        if run.stdout.strip() != expect.group(1):
            failures.append(f"docs/oip.md:{line}: status {run.stdout!r}, documented {expect.group(1)}; {run.stderr}")
    assert not failures, "\n".join(failures)
    snippets = [(line, code) for line, code in _doc_blocks("python") if "127.0.0.1:" in code]
    assert len(snippets) >= 4
    for line, code in snippets:
        code = code.replace("127.0.0.1:8080", http_url(server)).replace("127.0.0.1:7070", grpc_url(server))
        try:
            exec(compile(code, f"docs/oip.md:{line}", "exec"), {"__name__": "doc_example"})
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"docs/oip.md:{line}: {type(exc).__name__}: {exc}") from exc
