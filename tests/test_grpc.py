"""TorchServe's gRPC APIs end to end with our generated stubs: every RPC, REST's semantics and texts."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import json
import re
import time

import grpc
import pytest
import requests
from google.protobuf import empty_pb2

from conftest import ROOT, Server, make_archive
from modelserve.grpc._generated import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc

ECHO = """
import time
from modelserve import BaseHandler, PredictionException


class Echo(BaseHandler):
    def initialize(self, context):
        self.initialized = True
        self.seen = 0
        self.version = context.manifest["model"]["modelVersion"]

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            self.seen += 1
            body = row.get("data", row.get("body"))
            if body in (b"raise", "raise"):
                raise ValueError("boom from the handler")
            if body in (b"reject", "reject"):
                raise PredictionException("input rejected by handler", 400)
            if body in (b"sleep", "sleep"):
                time.sleep(1.0)
            out.append({"keys": sorted(row), "type": type(body).__name__,
                        "body": body.decode() if isinstance(body, (bytes, bytearray)) else body,
                        "batch": len(data), "seen": self.seen, "version": self.version,
                        "hdr": context.get_request_header(i, "x-test"),
                        "seq": context.get_request_header(i, "ts_request_sequence_id")})
        return out
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    store = root / "store"
    store.mkdir()
    make_archive(store, "echo", ECHO)
    make_archive(store, "pair", ECHO, config_yaml="batchSize: 2\nmaxBatchDelay: 3000\n")
    make_archive(store, "extra", ECHO)
    make_archive(store, "mymodel", ECHO)  # docs/grpc.md's models
    make_archive(store, "othermodel", ECHO)
    (store / "v2").mkdir()
    make_archive(store / "v2", "extra", ECHO, version="2.0")
    wd = root / "server"
    wd.mkdir()
    srv = Server(wd, store, ["echo=echo.mar", "pair=pair.mar", "mymodel=mymodel.mar"],
                 extra_config="max_request_size=5000\n",
                 args=["--enable-model-api"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as ch:
        yield ch


@pytest.fixture(scope="module")
def inference(channel):
    return inference_pb2_grpc.InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc_mgmt']}") as ch:
        yield management_pb2_grpc.ManagementAPIsServiceStub(ch)


def req(model="echo", version="", seq=None, **inputs):
    r = inference_pb2.PredictionsRequest(model_name=model, model_version=version, input=inputs)
    if seq is not None:
        r.sequence_id = seq
    return r


def predict(stub, *args, metadata=None, timeout=30, **kw):
    return json.loads(stub.Predictions(req(*args, **kw), metadata=metadata, timeout=timeout).prediction)


def rpc_error(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    return err.value


# --- inference ----------------------------------------------------------------------------------------

def test_ping_and_predictions(inference):
    assert json.loads(inference.Ping(empty_pb2.Empty(), timeout=10).health) == {"status": "Healthy"}
    out = predict(inference, data=b"hello", metadata=[("x-test", "yes")])
    # like TorchServe, gRPC inputs reach the handler as bytes, by name
    assert out["keys"] == ["data"] and out["type"] == "bytes" and out["body"] == "hello" and out["hdr"] == "yes"
    assert predict(inference, "echo", "1.0", body=b"x", other=b"y")["keys"] == ["body", "other"]


def test_errors_map_to_status_codes_with_rest_texts(server, inference):
    cases = [
        (req("nope", data=b"1"), grpc.StatusCode.NOT_FOUND, "/predictions/nope"),
        (req("echo", "9.9", data=b"1"), grpc.StatusCode.NOT_FOUND, "/predictions/echo/9.9"),
        (req(data=b"reject"), grpc.StatusCode.INVALID_ARGUMENT, "/predictions/echo"),
        (req(data=b"raise"), grpc.StatusCode.INTERNAL, "/predictions/echo"),
    ]
    for request, code, path in cases:
        err = rpc_error(inference.Predictions, request, timeout=30)
        assert err.code() == code, err
        rest = requests.post(server.url + path, data=request.input["data"])
        assert rest.json()["message"].split("\n")[0] == err.details().split("\n")[0]
    assert "ValueError: boom from the handler" in rpc_error(inference.Predictions, req(data=b"raise")).details()
    err = rpc_error(inference.Predictions, req(data=b"x" * 6000), timeout=30)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert predict(inference, data=b"still serving")["body"] == "still serving"


def test_stream_predictions_and_bidi(inference):
    msgs = list(inference.StreamPredictions(req(data=b"one"), timeout=30))
    assert len(msgs) == 1 and json.loads(msgs[0].prediction)["body"] == "one"
    err = rpc_error(lambda: list(inference.StreamPredictions(req("nope", data=b"1"), timeout=30)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    requests_in = [req(data=b"a", seq="s1"), req(data=b"reject", seq="s1"), req("nope", data=b"1", seq="s1"),
                   req(data=b"b", seq="s1")]
    out = list(inference.StreamPredictions2(iter(requests_in), timeout=30))
    assert len(out) == 4 and all(m.sequence_id == "s1" for m in out)
    assert json.loads(out[0].prediction)["body"] == "a" and json.loads(out[0].prediction)["seq"] == "s1"
    assert out[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert out[1].status.message == "input rejected by handler"
    assert out[2].status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert json.loads(out[3].prediction)["body"] == "b"


def test_rest_and_grpc_requests_share_a_batch(server, inference):
    with cf.ThreadPoolExecutor(2) as pool:
        rest = pool.submit(requests.post, server.url + "/predictions/pair", data=b"rest",
                           headers={"Content-Type": "text/plain"})
        time.sleep(0.2)
        via_grpc = pool.submit(predict, inference, "pair", data=b"grpc")
        assert rest.result().json()["batch"] == 2
        assert via_grpc.result()["batch"] == 2


def test_deadline_and_cancel_drop_queued_requests(inference):
    """Requests whose client gave up before they reached the worker never run."""
    first = predict(inference, data=b"x")["seen"]
    with cf.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(predict, inference, data=b"sleep")
        time.sleep(0.2)  # the worker is busy with "sleep" for a second
        err = rpc_error(inference.Predictions, req(data=b"late"), timeout=0.3)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = inference.Predictions.future(req(data=b"cancelled"), timeout=30)
        time.sleep(0.1)
        cancelled.cancel()
        assert slow.result()["seen"] == first + 1
    # neither the expired nor the cancelled request ran
    assert predict(inference, data=b"after")["seen"] == first + 2


# --- management ---------------------------------------------------------------------------------------

def test_management_rpcs_match_rest(server, management, inference):
    mgmt = server.mgmt
    listed = json.loads(management.ListModels(management_pb2.ListModelsRequest(), timeout=30).msg)
    assert listed == requests.get(mgmt + "/models").json()
    page = json.loads(management.ListModels(management_pb2.ListModelsRequest(limit=1), timeout=30).msg)
    assert page == requests.get(mgmt + "/models?limit=1").json() and page["nextPageToken"] == "1"
    described = json.loads(management.DescribeModel(
        management_pb2.DescribeModelRequest(model_name="echo"), timeout=30).msg)
    rest = requests.get(mgmt + "/models/echo").json()
    assert [{k: v for k, v in d.items() if k != "workers"} for d in described] == \
        [{k: v for k, v in d.items() if k != "workers"} for d in rest]
    err = rpc_error(management.DescribeModel, management_pb2.DescribeModelRequest(model_name="nope"), timeout=30)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == requests.get(mgmt + "/models/nope").json()["message"]

    reg = management.RegisterModel(management_pb2.RegisterModelRequest(
        url="extra.mar", initial_workers=1, synchronous=True), timeout=120)
    assert reg.msg == 'Model "extra" Version: 1.0 registered with 1 initial workers'
    err = rpc_error(management.RegisterModel, management_pb2.RegisterModelRequest(url="extra.mar", synchronous=True),
                    timeout=120)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    reg = management.RegisterModel(management_pb2.RegisterModelRequest(url="v2/extra.mar", synchronous=True),
                                   timeout=120)
    assert "Version: 2.0 registered" in reg.msg
    assert predict(inference, "extra", data=b"1")["version"] == "1.0"
    msg = management.SetDefault(management_pb2.SetDefaultRequest(model_name="extra", model_version="2.0"), timeout=30).msg
    assert msg == 'Default version successfully updated for model "extra" to "2.0"'
    assert predict(inference, "extra", data=b"1")["version"] == "2.0"
    msg = management.ScaleWorker(management_pb2.ScaleWorkerRequest(
        model_name="extra", model_version="1.0", min_worker=2, synchronous=True), timeout=120).msg
    assert msg == "Workers scaled to 2 for model: extra, version: 1.0"
    assert len(server.describe("extra", "1.0")[0]["workers"]) == 2
    msg = management.ScaleWorker(management_pb2.ScaleWorkerRequest(model_name="extra", model_version="1.0",
                                                                    min_worker=1), timeout=30).msg
    assert msg == "Processing worker updates..."
    err = rpc_error(management.ScaleWorker, management_pb2.ScaleWorkerRequest(
        model_name="extra", min_worker=3, max_worker=2, synchronous=True), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_worker" in err.details()
    err = rpc_error(management.UnregisterModel, management_pb2.UnregisterModelRequest(
        model_name="extra", model_version="2.0"), timeout=60)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # the default version, while another exists
    for version in ("1.0", ""):
        msg = management.UnregisterModel(management_pb2.UnregisterModelRequest(
            model_name="extra", model_version=version), timeout=60).msg
        assert msg == 'Model "extra" unregistered'
    assert rpc_error(inference.Predictions, req("extra", data=b"1")).code() == grpc.StatusCode.NOT_FOUND

    # a model without workers answers UNAVAILABLE, as REST answers 503
    r = requests.put(mgmt + "/models/pair?min_worker=0&synchronous=true")
    assert r.status_code == 200, r.text
    err = rpc_error(inference.Predictions, req("pair", data=b"1"), timeout=30)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == requests.post(server.url + "/predictions/pair", data=b"1").json()["message"]


# --- a server without the model API and with token authorization ----------------------------------------

def test_token_auth_and_disabled_model_api(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    wd = tmp_path / "server"
    wd.mkdir()
    srv = Server(wd, store, [])
    srv.cmd.remove("--disable-token-auth")
    srv.start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while not (wd / "key_file.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        keys = json.loads((wd / "key_file.json").read_text())
        srv.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{srv.ports['grpc']}") as ch, \
                grpc.insecure_channel(f"127.0.0.1:{srv.ports['grpc_mgmt']}") as mch:
            inf = inference_pb2_grpc.InferenceAPIsServiceStub(ch)
            mgmt = management_pb2_grpc.ManagementAPIsServiceStub(mch)
            assert json.loads(inf.Ping(empty_pb2.Empty(), timeout=10).health)["status"] == "Healthy"
            err = rpc_error(inf.Predictions, req(data=b"1"), timeout=10)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            err = rpc_error(inf.Predictions, req(data=b"1"), timeout=10,
                            metadata=[("authorization", f"Bearer {keys['management']['key']}")])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            err = rpc_error(inf.Predictions, req(data=b"1"), timeout=10,
                            metadata=[("authorization", f"Bearer {keys['inference']['key']}")])
            assert err.code() == grpc.StatusCode.NOT_FOUND  # authorised; there is no such model
            auth = [("authorization", f"Bearer {keys['management']['key']}")]
            assert rpc_error(mgmt.ListModels, management_pb2.ListModelsRequest(),
                             timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
            assert json.loads(mgmt.ListModels(management_pb2.ListModelsRequest(), metadata=auth, timeout=10).msg) == \
                {"models": []}
            err = rpc_error(mgmt.RegisterModel, management_pb2.RegisterModelRequest(url="x.mar"), metadata=auth,
                            timeout=10)
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED and "--enable-model-api" in err.details()
            err = rpc_error(mgmt.UnregisterModel, management_pb2.UnregisterModelRequest(model_name="x"),
                            metadata=auth, timeout=10)
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
        # the OIP REST routes take the same keys: health open, the rest needs the inference key
        assert requests.get(srv.url + "/v2/health/ready", timeout=10).status_code == 200
        r = requests.get(srv.url + "/v2/models/x", timeout=10)
        assert r.status_code == 401 and "error" in r.json()
        r = requests.get(srv.url + "/v2/models/x", timeout=10,
                         headers={"Authorization": f"Bearer {keys['inference']['key']}"})
        assert r.status_code == 404
    finally:
        srv.stop()


def test_docs_examples_run(server):
    """Every python example of docs/grpc.md runs against a real server."""
    text = (ROOT / "docs" / "grpc.md").read_text()
    blocks = [(text.count("\n", 0, m.start()) + 1, m.group(1))
              for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M)]
    assert len(blocks) >= 4
    for line, code in blocks:
        code = code.replace("127.0.0.1:7070", f"127.0.0.1:{server.ports['grpc']}").replace(
            "127.0.0.1:7071", f"127.0.0.1:{server.ports['grpc_mgmt']}")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"docs/grpc.md:{line}", "exec"), {"__name__": "doc_example"})
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"docs/grpc.md:{line}: {type(exc).__name__}: {exc}") from exc
        printed = out.getvalue()
        for expected in re.findall(r"^\s*# ((?:Model|Workers) .*)$", code, re.M):
            assert expected in printed, (line, expected, printed)
    assert "StatusCode.NOT_FOUND Model not found: nosuchmodel" in printed


def test_grpc_calls_reach_the_access_log(server, inference):
    predict(inference, data=b"logged")
    rpc_error(inference.Predictions, req("no_such_model", data=b"x"), timeout=10)
    path = server.log_dir / "access_log.log"
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if any("Predictions" in line and "NOT_FOUND" in line for line in lines):
            break
        time.sleep(0.1)
    assert any('"gRPC /org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions" OK' in line
               and " 127.0.0.1 " in line for line in lines), lines[-5:]
    assert any("Predictions\" NOT_FOUND" in line for line in lines), lines[-5:]
