"""TorchServe handlers served unchanged: archives made by the real torch-model-archiver, handlers that
import ``ts``, one real modelserve server, REST requests."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from conftest import BIN, ROOT, Server

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from torch import Tensor, nn  # noqa: E402

TMA = BIN / "torch-model-archiver"
pytestmark = pytest.mark.skipif(not TMA.exists(), reason="torch-model-archiver is not installed")

# -- the TorchServe handlers under test (they import only ts, torch, PIL and the stdlib) -----------

CLASS_HANDLER = '''
import json
import time

import torch

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException, map_class_to_label


class ScaledClassifier(BaseHandler):
    """Four numbers in, scaled by the X-Scale header; class probabilities out."""

    def preprocess(self, data):
        start = time.time()
        rows = []
        for idx, row in enumerate(data):
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode("utf-8")
            if isinstance(body, str):
                body = json.loads(body)
            if not isinstance(body, list) or len(body) != 4:
                raise PredictionException("each input must be a list of 4 numbers", 400)
            scale = float(self.context.get_request_header(idx, "X-Scale") or 1)
            rows.append([float(v) * scale for v in body])
        metrics = self.context.metrics
        metrics.add_counter("RowsSeen", len(rows), dimensions=[Dimension("Stage", "preprocess")])
        metrics.add_time("CustomPreprocessTime", (time.time() - start) * 1000, None, "ms")
        metrics.add_metric("CustomCalls", 1, "count", None, [Dimension("Stage", "pre")], MetricTypes.COUNTER)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        out = map_class_to_label(torch.softmax(data, dim=1).tolist(), self.mapping)
        for idx in range(len(out)):
            if self.context.get_request_header(idx, "X-Reject"):
                self.context.set_response_status(422, "rejected as the client asked", idx)
        return out

    def describe_handle(self):
        return {"classes": self.mapping, "device": str(self.device), "model": type(self.model).__name__}
'''

MODEL_FILE = '''
import torch
from torch import nn


class TinyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
'''

FUNCTION_HANDLER = '''
from ts.context import Context
from ts.handler_utils.utils import send_intermediate_predict_response

_state = {}


def handle(data, context: Context):
    if data is None:  # TorchServe initialises a function handler with a None batch
        _state["model_dir"] = context.system_properties.get("model_dir")
        _state["name"] = context.manifest["model"]["modelName"]
        return None
    out = []
    for idx, row in enumerate(data):
        body = row.get("data") or row.get("body")
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else str(body)
        if text == "stream":
            send_intermediate_predict_response(["partial;"], context.request_ids, "Intermediate", 200, context)
            out.append("final")
            continue
        out.append({"upper": text.upper(), "model": _state["name"], "initialised": bool(_state["model_dir"]),
                    "request_id": context.get_request_id(idx)})
    return out
'''

GRAY_HANDLER = '''
import torch

from ts.torch_handler.image_classifier import ImageClassifier


class GrayLevel(ImageClassifier):
    """MNIST-style: its own image_processing (grayscale 8x8), TorchServe's top-k postprocess."""

    topk = 2

    @staticmethod
    def image_processing(img):
        img = img.convert("L").resize((8, 8))
        return torch.tensor(list(img.getdata()), dtype=torch.float32).view(1, 8, 8) / 255.0
'''

TEXT_HANDLER = '''
from ts.torch_handler.text_classifier import TextClassifier


class Sentiment(TextClassifier):
    ngrams = 1
'''


# -- models ----------------------------------------------------------------------------------------

class Brightness(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        return torch.cat([m, 1.0 - m], dim=1) * 10.0


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=5, stride=4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(5, 2, mode="sum")
        with torch.no_grad():
            self.bag.weight.copy_(torch.tensor([[0., 0.], [2., 0.], [0., 2.], [0., 0.], [1., 0.]]))

    def forward(self, text: Tensor, offsets: Tensor) -> Tensor:
        return self.bag(text, offsets)


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    return path


def _tma(store: Path, name: str, handler: str, serialized: Path, *, model_file: Optional[Path] = None,
         extra: Optional[list[Path]] = None, config: Optional[Path] = None) -> str:
    cmd = [str(TMA), "--model-name", name, "--version", "1.0", "--handler", handler,
           "--serialized-file", str(serialized), "--export-path", str(store), "--force"]
    if model_file is not None:
        cmd += ["--model-file", str(model_file)]
    if extra:
        cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    if config is not None:
        cmd += ["--config-file", str(config)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert (store / f"{name}.mar").is_file()
    return f"{name}={name}.mar"


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tscompat")
    store, src, wd = root / "store", root / "src", root / "server"
    for d in (store, src, wd):
        d.mkdir()
    torch.manual_seed(0)
    models = []

    # class-based handler + eager model (model file + state dict) + index_to_name ([id, name] too)
    d = src / "scaled"
    d.mkdir()
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3, 4))
        lin.bias.zero_()
    torch.save({"fc.weight": lin.weight, "fc.bias": lin.bias}, d / "weights.pt")
    models.append(_tma(store, "scaled", str(_write(d / "scaled_handler.py", CLASS_HANDLER)), d / "weights.pt",
                       model_file=_write(d / "model.py", MODEL_FILE),
                       extra=[_write(d / "index_to_name.json", '{"0": "cat", "1": ["n01", "dog"], "2": "bird"}')],
                       config=_write(d / "model-config.yaml", "batchSize: 4\nmaxBatchDelay: 100\n"
                                                               "handler:\n  profile: true\n")))

    # function-based handler
    d = src / "fn"
    d.mkdir()
    models.append(_tma(store, "fn", str(_write(d / "fn_handler.py", FUNCTION_HANDLER)),
                       _script(Brightness(), d / "unused.pt")))

    # ts ImageClassifier subclass with its own image_processing
    d = src / "gray"
    d.mkdir()
    models.append(_tma(store, "gray", str(_write(d / "gray_handler.py", GRAY_HANDLER)),
                       _script(Brightness(), d / "model.pt"),
                       extra=[_write(d / "index_to_name.json", '{"0": "light", "1": "dark"}')]))

    # the built-in name image_classifier with a tiny TorchScript CNN and ImageNet-style labels
    d = src / "cnn"
    d.mkdir()
    cnn = TinyCNN().eval()
    _script(cnn, d / "cnn.pt")
    labels = {str(i): [f"n0{i}", name] for i, name in enumerate(["ant", "bee", "cow", "dog", "eel"])}
    models.append(_tma(store, "cnn", "image_classifier", d / "cnn.pt",
                       extra=[_write(d / "index_to_name.json", json.dumps(labels))]))

    # ts TextClassifier subclass with a torch.save-d token -> id source_vocab.pt
    d = src / "sent"
    d.mkdir()
    torch.save({"<unk>": 0, "good": 1, "bad": 2, "movie": 3, "not": 4}, d / "source_vocab.pt")
    models.append(_tma(store, "sent", str(_write(d / "sent_handler.py", TEXT_HANDLER)), _script(Bag(), d / "bag.pt"),
                       extra=[d / "source_vocab.pt",
                              _write(d / "index_to_name.json", '{"0": "positive", "1": "negative"}')]))

    srv = Server(wd, store, models).start(timeout=120)
    srv.cnn = cnn
    yield srv
    srv.stop()


def post(srv: Server, model: str, **kw: Any) -> requests.Response:
    return requests.post(f"{srv.url}/predictions/{model}", timeout=60, **kw)


def softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def png(size=(32, 32), color=(255, 255, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# -- tests ----------------------------------------------------------------------------------------

def test_class_based_handler_with_headers_mapping_and_status(ts_server):
    r = post(ts_server, "scaled", json=[1, 0, 0, 9], headers={"X-Scale": "2"})
    assert r.status_code == 200, r.text
    p = softmax([2, 0, 0])
    assert list(r.json()) == ["cat", "dog", "bird"]  # [id, name] mapping values give the name
    assert r.json()["cat"] == pytest.approx(p[0], rel=1e-5) and r.json()["dog"] == pytest.approx(p[1], rel=1e-5)
    r = post(ts_server, "scaled", data="[0, 0, 3, 0]", headers={"Content-Type": "text/plain"})
    assert r.json()["bird"] == pytest.approx(softmax([0, 0, 3])[2], rel=1e-5)
    r = post(ts_server, "scaled", json=[1, 2, 3, 4], headers={"X-Reject": "yes"})
    assert r.status_code == 422 and r.json()["message"] == "rejected as the client asked"
    r = post(ts_server, "scaled", json=[1, 2])
    assert r.status_code == 400 and r.json()["message"] == "each input must be a list of 4 numbers"


def test_describe_handle_is_served_as_customized_metadata(ts_server):
    r = requests.get(f"{ts_server.mgmt}/models/scaled?customized=true", timeout=30)
    assert r.status_code == 200, r.text
    meta = r.json()[0]["customizedMetadata"]
    if isinstance(meta, str):
        meta = json.loads(meta)
    assert meta == {"classes": {"0": "cat", "1": "dog", "2": "bird"}, "device": "cpu", "model": "TinyLinear"}


def test_handler_metrics_reach_the_metrics_endpoint(ts_server):
    for _ in range(2):
        assert post(ts_server, "scaled", json=[1, 1, 1, 1]).status_code == 200
    text = requests.get(f"{ts_server.metrics_url}/metrics", timeout=30).text
    rows = [line for line in text.splitlines() if line.startswith("RowsSeen") and 'ModelName="scaled"' in line]
    assert rows and 'Stage="preprocess"' in rows[0] and float(rows[0].rsplit(" ", 1)[1]) >= 2
    assert any(line.startswith("CustomCalls") and 'Stage="pre"' in line for line in text.splitlines())
    assert "CustomPreprocessTime" in text and "HandlerTime" in text
    # handler: {profile: true} makes the base handler's @timed inference record its time
    assert "ts_handler_inference" in text and "ts_handler_preprocess" not in text  # overridden: not timed


def test_function_handler_and_intermediate_responses(ts_server):
    r = post(ts_server, "fn", data="hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["upper"] == "HELLO" and body["model"] == "fn" and body["initialised"] is True
    assert body["request_id"] == r.headers["x-request-id"]
    r = post(ts_server, "fn", data="stream", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.text == "partial;final"


def test_ts_image_classifier_subclass(ts_server):
    r = post(ts_server, "gray", data=png(color=(250, 250, 250)))
    assert r.status_code == 200, r.text
    m = 250 / 255
    assert list(r.json()) == ["light", "dark"]
    assert r.json()["light"] == pytest.approx(softmax([10 * m, 10 * (1 - m)])[0], rel=1e-5)
    assert next(iter(post(ts_server, "gray", data=png(color=(10, 10, 10))).json())) == "dark"
    r = post(ts_server, "gray", data=b"not an image")
    assert r.status_code == 400 and "not a valid image" in r.json()["message"]


def test_builtin_image_classifier_name_from_torch_model_archiver(ts_server):
    from modelserve_handlers._vision import ImageTransform  # the built-in handler's own transforms

    img = Image.new("RGB", (80, 60), (200, 30, 90))
    img.paste((10, 220, 40), (0, 0, 40, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    r = post(ts_server, "cnn", data=buf.getvalue())
    assert r.status_code == 200, r.text
    out = r.json()
    with torch.no_grad():
        probs = torch.softmax(ts_server.cnn(ImageTransform()(img).unsqueeze(0)), dim=1)[0]
    names = ["ant", "bee", "cow", "dog", "eel"]
    expected = sorted(((names[i], p) for i, p in enumerate(probs.tolist())), key=lambda t: -t[1])
    assert list(out) == [n for n, _ in expected]  # all five, most probable first, names from [id, name]
    for name, p in expected:
        assert out[name] == pytest.approx(p, rel=1e-4, abs=1e-6)


def test_ts_text_classifier_subclass(ts_server):
    r = post(ts_server, "sent", data="A <b>GOOD</b> movie!", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.json()["positive"] == pytest.approx(softmax([2, 0])[0], rel=1e-5)
    r = post(ts_server, "sent", data="Bad, not good.", headers={"Content-Type": "text/plain"})
    assert r.json()["positive"] == pytest.approx(softmax([3, 2])[0], rel=1e-5)


def test_ts_utils_behave_like_torchserve():
    compat = str(ROOT / "src" / "modelserve" / "compat")
    sys.path.append(compat)
    try:
        if importlib.util.find_spec("ts") is None or "modelserve" not in str(importlib.util.find_spec("ts").origin):
            pytest.skip("another ts package is importable")
        from modelserve import PredictionException as MSPredictionException
        from ts.context import Context
        from ts.utils.util import PredictionException, list_classes_from_module, map_class_to_label

        assert map_class_to_label([[0.7, 0.3]], {"0": "a", "1": "b"}) == [{"a": 0.7, "b": 0.3}]
        assert map_class_to_label([[0.9], [0.8]], None, [[4], [2]]) == [{"4": 0.9}, {"2": 0.8}]
        err = PredictionException("nope", error_code=418)
        assert isinstance(err, MSPredictionException) and err.error_code == 418 and str(err) == "nope : 418"
        import ts.torch_handler.image_classifier as ic

        assert [c.__name__ for c in list_classes_from_module(ic)] == ["ImageClassifier"]
        import modelserve

        assert Context is modelserve.Context
    finally:
        sys.path.remove(compat)


class SegNet(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": x * 4.0}


class BoxNet(nn.Module):
    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = []
        for img in images:
            h = float(img.shape[1])
            out.append({"boxes": torch.tensor([[1.0, 2.0, 3.0, h], [0.0, 0.0, 1.0, 1.0]]),
                        "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.8, 0.1])})
        return out


@pytest.fixture
def ts_modules():
    compat = str(ROOT / "src" / "modelserve" / "compat")
    spec = importlib.util.find_spec("ts")
    if spec is not None and "modelserve" not in str(spec.origin):
        pytest.skip("another ts package is importable")
    sys.path.append(compat)
    yield
    sys.path.remove(compat)


def _context(tmp_path: Path, model: nn.Module, mapping: Optional[dict] = None, yaml: Optional[dict] = None):
    from modelserve import Context

    _script(model, tmp_path / "m.pt")
    if mapping is not None:
        (tmp_path / "index_to_name.json").write_text(json.dumps(mapping))
    ctx = Context("m", str(tmp_path), {"model": {"modelName": "m", "serializedFile": "m.pt"}},
                  model_yaml_config=yaml or {})
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ts_segmenter_detector_and_explain_in_process(tmp_path, ts_modules):
    from ts.torch_handler.image_segmenter import ImageSegmenter
    from ts.torch_handler.object_detector import ObjectDetector
    from ts.utils.util import PredictionException

    img = Image.new("RGB", (300, 260), (0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = [{"body": buf.getvalue()}]

    (tmp_path / "seg").mkdir()
    ctx = _context(tmp_path / "seg", SegNet())
    seg = ImageSegmenter()
    seg.initialize(ctx)
    ctx.begin_batch(["r1"], [{}])
    out = seg.handle(data, ctx)
    assert len(out) == 1 and len(out[0]) == 224 and len(out[0][0]) == 224  # resize 256, crop 224
    assert {tuple(px)[0] for row in out[0] for px in row} == {2.0}  # blue everywhere
    ctx.begin_batch(["r2"], [{"explain": "True"}])
    with pytest.raises(PredictionException) as info:  # no captum here: a clear 501
        seg.handle(data, ctx)
    assert info.value.error_code == 501

    (tmp_path / "det").mkdir()
    ctx = _context(tmp_path / "det", BoxNet(), mapping={"1": "thing", "2": "other"})
    det = ObjectDetector()
    det.initialize(ctx)
    ctx.begin_batch(["r1", "r2"], [{}, {}])
    out = det.handle(data + data, ctx)
    assert out == [[{"thing": [1.0, 2.0, 3.0, 260.0], "score": pytest.approx(0.8)}]] * 2
    ctx.begin_batch(["r3"], [{}])
    with pytest.raises(PredictionException) as info:
        det.handle([{"body": b"not an image"}], ctx)
    assert info.value.error_code == 400 and "not a valid image" in info.value.message


def test_add_counter_with_torchserve_positional_arguments(ts_modules):
    from modelserve.worker.metrics import HandlerMetrics
    from ts.metrics.dimension import Dimension

    metrics = HandlerMetrics()
    metrics.add_counter("LoopCount", 1, None, [Dimension("Stage", "loop")])  # TorchServe's documented form
    assert metrics.drain() == [["counter", "LoopCount", 1.0, "count", {"Stage": "loop"}]]
