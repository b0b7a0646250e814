"""Streamed (intermediate) responses: each chunk leaves as soon as the handler sends it, on every API."""
from __future__ import annotations

import queue
import time

import grpc
import numpy as np
import pytest
import requests

from conftest import Server, make_archive
from modelserve.grpc._generated import inference_pb2, inference_pb2_grpc

STREAMER = """
import time
from modelserve import BaseHandler
from modelserve.handler_utils import send_intermediate_predict_response


def _oip(row):
    return all(hasattr(v, "datatype") for v in row.values())


class Streamer(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        oip = [_oip(row) for row in data]
        first = [{"OUT": [float(len(data))]} if o else "first;" for o in oip]
        send_intermediate_predict_response(first, context.request_ids, "Intermediate Prediction success", 200,
                                           context)
        if any(row.get("body", row.get("data")) in ("fail", b"fail") for row in data):
            raise RuntimeError("failed after the first chunk")
        time.sleep(1.0)
        return [{"OUT": [2.0]} if o else "last" for o in oip]
"""

GENERATOR = """
import time


def handle(data, context):
    for i in range(3):
        yield [f"part{i};" for _ in data]
        time.sleep(0.2)
"""

OUT_YAML = """\
outputs:
  - {name: OUT, datatype: FP32, shape: [1]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    store = root / "store"
    store.mkdir()
    make_archive(store, "streamer", STREAMER, config_yaml=OUT_YAML)
    make_archive(store, "gen", GENERATOR)
    wd = root / "server"
    wd.mkdir()
    srv = Server(wd, store, ["streamer=streamer.mar", "gen=gen.mar"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as ch:
        yield inference_pb2_grpc.InferenceAPIsServiceStub(ch)


def _timed(iterable):
    start = time.monotonic()
    return [(time.monotonic() - start, item) for item in iterable]


def test_rest_chunks_arrive_as_sent(server):
    start = time.monotonic()
    with requests.post(server.url + "/predictions/streamer", data="x", headers={"Content-Type": "text/plain"},
                       stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
        chunks = [(time.monotonic() - start, c) for c in r.iter_content(chunk_size=None) if c]
    assert chunks[0][1] == b"first;" and chunks[0][0] < 0.7, chunks
    assert b"".join(c for _, c in chunks) == b"first;last" and chunks[-1][0] >= 0.95


def test_generator_handler_streams_over_rest(server):
    with requests.post(server.url + "/predictions/gen", data="x", stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert r.content == b"part0;part1;part2;"


def test_grpc_stream_predictions_first_message_leaves_at_once(stub):
    msgs = _timed(stub.StreamPredictions(inference_pb2.PredictionsRequest(
        model_name="streamer", input={"data": b"x"}), timeout=30))
    assert [m.prediction for _, m in msgs] == [b"first;", b"last"]
    assert msgs[0][0] < 0.7 and msgs[1][0] >= 0.95, msgs
    msgs = list(stub.StreamPredictions(inference_pb2.PredictionsRequest(model_name="gen", input={"data": b"x"}),
                                       timeout=30))
    assert [m.prediction for m in msgs] == [b"part0;", b"part1;", b"part2;"]
    # the unary RPC answers what a REST client reads: the chunks joined
    one = stub.Predictions(inference_pb2.PredictionsRequest(model_name="streamer", input={"data": b"x"}), timeout=30)
    assert one.prediction == b"first;last"
    out = list(stub.StreamPredictions2(iter([inference_pb2.PredictionsRequest(
        model_name="gen", input={"data": b"x"}, sequence_id="q")]), timeout=30))
    assert [(m.prediction, m.sequence_id) for m in out] == [(b"part0;", "q"), (b"part1;", "q"), (b"part2;", "q")]


def test_error_after_first_chunk(server, stub):
    msgs = []
    with pytest.raises(grpc.RpcError) as err:
        for m in stub.StreamPredictions(inference_pb2.PredictionsRequest(
                model_name="streamer", input={"data": b"fail"}), timeout=30):
            msgs.append(m.prediction)
    assert msgs == [b"first;"]
    assert err.value.code() == grpc.StatusCode.INTERNAL and "failed after the first chunk" in err.value.details()
    r = requests.post(server.url + "/predictions/streamer", data="fail", headers={"Content-Type": "text/plain"},
                      timeout=30)
    assert r.content.startswith(b"first;") and b"failed after the first chunk" in r.content


def test_oip_stream_infer_with_tritonclient(server):
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((time.monotonic(), result, error)))
    try:
        inp = tritongrpc.InferInput("IN", [1], "FP32")
        inp.set_data_from_numpy(np.array([3.0], np.float32))
        start = time.monotonic()
        client.async_stream_infer("streamer", [inp], request_id="r1")
        first = got.get(timeout=30)
        second = got.get(timeout=30)
        assert first[2] is None and second[2] is None, (first, second)
        assert first[0] - start < 0.7 and second[0] - start >= 0.95
        assert first[1].as_numpy("OUT").tolist() == [1.0] and second[1].as_numpy("OUT").tolist() == [2.0]
        assert first[1].get_response().id == "r1"
        client.async_stream_infer("nope", [inp], request_id="r2")
        _, result, error = got.get(timeout=30)
        assert result is None and "Model not found: nope" in str(error)
    finally:
        client.stop_stream()
    # a unary infer on a streaming handler answers its last tensors
    res = client.infer("streamer", [inp])
    assert res.as_numpy("OUT").tolist() == [2.0]


def test_handler_utils_outside_a_worker():
    from modelserve.handler import Context
    from modelserve.handler_utils import send_intermediate_predict_response

    with pytest.raises(RuntimeError, match="inside a modelserve worker"):
        send_intermediate_predict_response(["x"], {0: "id"}, "msg", 200, Context("m", ".", {}))
    sent = []
    ctx = Context("m", ".", {})
    ctx._send_partial = lambda *a: sent.append(a)
    assert send_intermediate_predict_response(["x"], {0: "id"}, "msg", 200, ctx)
    assert sent == [(["x"], {0: "id"}, "msg", 200)]
