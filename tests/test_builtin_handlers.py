"""The built-in handlers end to end: real archives, one real server, REST requests, real images."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import math
import subprocess
import textwrap
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import requests

from conftest import Server, archiver_cmd

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from torch import Tensor, nn  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


# -- models (TorchScript, deterministic: the expected answers are computed from the inputs) ------------

class ColorNet(nn.Module):
    """Logits: 5 x the mean of each (normalised) channel, then minus / plus their average."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(2, 3))
        avg = m.mean(dim=1, keepdim=True)
        return torch.cat([m, -avg, avg], dim=1) * 5.0


class BatchProbe(nn.Module):
    """Two classes; the second's logit is the batch size, so the response reveals the batch."""

    def forward(self, x: Tensor) -> Tensor:
        n = float(x.shape[0])
        zeros = torch.zeros(x.shape[0], 1)
        return torch.cat([zeros, zeros + n], dim=1)


class ChannelSegmenter(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": x * 4.0}


class RedBoxDetector(nn.Module):
    """Per image: the box around red pixels (label 1, score 0.9) and around green ones (label 2, 0.3)."""

    def _box(self, mask: Tensor) -> Tensor:
        idx = torch.nonzero(mask)
        if idx.shape[0] == 0:
            return torch.zeros(4)
        y0 = idx[:, 0].min()
        y1 = idx[:, 0].max() + 1
        x0 = idx[:, 1].min()
        x1 = idx[:, 1].max() + 1
        return torch.stack([x0, y0, x1, y1]).float()

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = []
        for img in images:
            red = (img[0] > 0.5) & (img[1] < 0.5)
            green = (img[1] > 0.5) & (img[0] < 0.5)
            boxes = torch.stack([self._box(red), self._box(green)])
            out.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.3])})
        return out


class BagClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(6, 2, mode="sum")
        with torch.no_grad():
            self.bag.weight.copy_(torch.tensor([[0., 0.], [2., 0.], [3., 0.], [0., 2.], [0., 3.], [0., 0.]]))

    def forward(self, text: Tensor, offsets: Tensor) -> Tensor:
        return self.bag(text, offsets)


class Doubler(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2.0


VOCAB = {"<unk>": 0, "good": 1, "great": 2, "bad": 3, "awful": 4, "movie": 5}


# -- archives & the server ------------------------------------------------------------------------

def _archive(store: Path, src: Path, name: str, handler: str, model: nn.Module, *,
             config: Optional[str] = None, extra: Optional[dict[str, Any]] = None) -> str:
    folder = src / name
    folder.mkdir()
    weights = folder / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in recent torch
        torch.jit.script(model).save(str(weights))
    cmd = archiver_cmd() + ["--model-name", name, "--version", "1.0", "--handler", handler,
                            "--serialized-file", str(weights), "--export-path", str(store), "--force"]
    if config is not None:
        (folder / "model-config.yaml").write_text(textwrap.dedent(config))
        cmd += ["--config-file", str(folder / "model-config.yaml")]
    if extra:
        paths = []
        for fname, content in extra.items():
            (folder / fname).write_text(json.dumps(content))
            paths.append(str(folder / fname))
        cmd += ["--extra-files", ",".join(paths)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return f"{name}={name}.mar"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    store, src, wd = root / "store", root / "src", root / "server"
    for d in (store, src, wd):
        d.mkdir()
    labels = {"0": ["n0", "red"], "1": ["n1", "green"], "2": "blue", "3": "dark", "4": "bright"}
    models = [
        _archive(store, src, "ic", "image_classifier", ColorNet(), extra={"index_to_name.json": labels},
                 config="""\
                     batchSize: 4
                     maxBatchDelay: 30
                     handler:
                       topk: 3
                       max_image_pixels: 1000000
                 """),
        _archive(store, src, "probe", "image_classifier", BatchProbe(),
                 config="batchSize: 8\nmaxBatchDelay: 5000\nhandler:\n  resize: 16\n  crop: 16\n"),
        _archive(store, src, "seg", "image_segmenter", ChannelSegmenter(),
                 config="handler:\n  resize: null\n  crop: null\n  mean: null\n  std: null\n"),
        _archive(store, src, "segc", "image_segmenter", ChannelSegmenter(),
                 config="handler:\n  resize: [4, 6]\n  crop: null\n  output: class\n"),
        _archive(store, src, "det", "object_detector", RedBoxDetector(),
                 extra={"index_to_name.json": {"1": "red_thing", "2": "green_thing"}},
                 config="batchSize: 4\nmaxBatchDelay: 30\n"),
        _archive(store, src, "txt", "text_classifier", BagClassifier(),
                 extra={"vocab.json": VOCAB, "index_to_name.json": {"0": "positive", "1": "negative"}},
                 config="batchSize: 4\nmaxBatchDelay: 200\n"),
        _archive(store, src, "base", "base_handler", Doubler(), config="batchSize: 4\nmaxBatchDelay: 200\n"),
    ]
    srv = Server(wd, store, models).start(timeout=120)
    yield srv
    srv.stop()


# -- helpers --------------------------------------------------------------------------------------

def png(size=(64, 48), color=(255, 0, 0), fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(size=(64, 48)) -> bytes:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    buf = io.BytesIO()
    Image.frombytes("RGB", size, bytes(data.flatten().tolist())).save(buf, format="PNG")
    return buf.getvalue()


def expected_color_probs(rgb) -> dict[str, float]:
    m = [(c / 255 - mu) / sd for c, mu, sd in zip(rgb, MEAN, STD)]
    avg = sum(m) / 3
    logits = [5 * v for v in (*m, -avg, avg)]
    z = sum(math.exp(v) for v in logits)
    names = ["red", "green", "blue", "dark", "bright"]
    return {n: math.exp(v) / z for n, v in zip(names, logits)}


def post(srv: Server, model: str, **kw) -> requests.Response:
    return requests.post(f"{srv.url}/predictions/{model}", timeout=60, **kw)


def assert_400(r: requests.Response, *fragments: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert body["code"] == 400
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


# -- image_classifier ------------------------------------------------------------------------------

@pytest.mark.parametrize("color", ["red", "green", "blue"])
def test_image_classifier_topk_labels_and_probabilities(server, color):
    r = post(server, "ic", data=png(color=COLORS[color]), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    out = r.json()
    expected = expected_color_probs(COLORS[color])
    top3 = sorted(expected, key=expected.get, reverse=True)[:3]
    assert list(out) == top3 and top3[0] == color  # most probable first, topk from model-config.yaml
    for label, prob in out.items():
        assert prob == pytest.approx(expected[label], rel=1e-4, abs=1e-6)


def test_image_classifier_input_forms(server):
    expected = expected_color_probs(COLORS["green"])
    jpeg = png(color=COLORS["green"], fmt="JPEG")
    b64 = base64.b64encode(jpeg).decode()
    answers = [
        post(server, "ic", files={"data": ("g.jpg", jpeg, "image/jpeg")}),          # multipart field data
        post(server, "ic", json=b64),                                               # JSON string, base64
        post(server, "ic", json={"data": b64}),                                     # JSON object
        post(server, "ic", data=b64, headers={"Content-Type": "text/plain"}),       # text, base64
        post(server, "ic", data=png(color=(0, 255, 0, 255), mode="RGBA"),           # RGBA PNG -> RGB
             headers={"Content-Type": "application/octet-stream"}),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        out = r.json()
        assert next(iter(out)) == "green"
        assert out["green"] == pytest.approx(expected["green"], abs=2e-3)  # JPEG is lossy


def test_image_classifier_bad_inputs_are_400(server):
    assert_400(post(server, "ic", data=b"definitely not an image",
                    headers={"Content-Type": "application/octet-stream"}), "not a valid image")
    assert_400(post(server, "ic", data=noise_png()[:600], headers={"Content-Type": "image/png"}),
               "invalid or truncated image")
    # 1200 x 1000 = 1.2 M pixels, over the configured max_image_pixels of 1 M (a decompression bomb)
    assert_400(post(server, "ic", data=png(size=(1200, 1000)), headers={"Content-Type": "image/png"}),
               "image too large", "1000000")
    # over twice the limit Pillow itself refuses the image (DecompressionBombError) before decoding
    assert_400(post(server, "ic", data=png(size=(2000, 1250)), headers={"Content-Type": "image/png"}),
               "image too large", "decompression bomb")
    assert_400(post(server, "ic", data=b"", headers={"Content-Type": "application/octet-stream"}), "empty")
    assert_400(post(server, "ic", data="not base64 at all!", headers={"Content-Type": "text/plain"}), "base64")
    assert_400(post(server, "ic", json={"nothing": 1}), "data")
    # and the worker still serves
    assert post(server, "ic", data=png()).status_code == 200


def test_image_classifier_one_bad_image_does_not_fail_its_batch(server):
    bodies = [png(color=COLORS["red"]), b"garbage", png(color=COLORS["blue"]), noise_png()[:500]]
    with cf.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda b: post(server, "ic", data=b, headers={"Content-Type": "image/png"}), bodies))
    assert rs[0].status_code == 200 and next(iter(rs[0].json())) == "red"
    assert rs[2].status_code == 200 and next(iter(rs[2].json())) == "blue"
    assert_400(rs[1], "not a valid image")
    assert_400(rs[3], "truncated")


def test_image_classifier_batches_concurrent_requests(server):
    # batchSize 8, maxBatchDelay 5 s: eight concurrent requests form one full batch at once;
    # the probe model's second logit is the batch size it saw
    sizes = [(20, 20), (40, 30), (30, 50), (64, 64), (17, 23), (100, 20), (16, 16), (33, 33)]
    with cf.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda s: post(server, "probe", data=png(size=s)), sizes))
    p8 = 1 / (1 + math.exp(-8))
    for r in rs:
        assert r.status_code == 200, r.text
        assert r.json()["1"] == pytest.approx(p8, rel=1e-5)  # no index_to_name.json: labels are indices
        assert r.json()["0"] == pytest.approx(1 - p8, rel=1e-3)


def test_describe_reports_the_effective_config(server):
    r = requests.get(f"{server.mgmt}/models/ic?customized=true", timeout=30)
    assert r.status_code == 200, r.text
    meta = r.json()[0]["customizedMetadata"]
    if isinstance(meta, str):
        meta = json.loads(meta)
    assert meta["handler"] == "image_classifier" and meta["labels"] == 5
    assert meta["config"]["topk"] == 3 and meta["config"]["crop"] == [224, 224]
    assert meta["config"]["max_image_pixels"] == 1000000


# -- image_segmenter -------------------------------------------------------------------------------

def _left_red_right_blue(size=(6, 4)) -> bytes:
    img = Image.new("RGB", size, COLORS["blue"])
    img.paste(COLORS["red"], (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_segmenter_torchserve_format(server):
    r = post(server, "seg", data=_left_red_right_blue())
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 4 and all(len(row) == 6 for row in out)  # [H][W][2]
    p = math.exp(4) / (math.exp(4) + 2)  # softmax of (4, 0, 0)
    for row in out:
        for x, (cls, prob) in enumerate(row):
            assert cls == (0.0 if x < 3 else 2.0)
            assert prob == pytest.approx(p, rel=1e-5)


def test_image_segmenter_class_map_output(server):
    r = post(server, "segc", data=_left_red_right_blue((12, 8)))  # resized to exactly 4 x 6
    assert r.status_code == 200, r.text
    assert r.json() == [[0, 0, 0, 2, 2, 2]] * 4
    assert_400(post(server, "segc", data=b"\x89PNG\r\n\x1a\n broken"), "image")


# -- object_detector -------------------------------------------------------------------------------

def _scene(size, red_box, green_box=None) -> bytes:
    img = Image.new("RGB", size, (0, 0, 0))
    img.paste(COLORS["red"], red_box)
    if green_box:
        img.paste(COLORS["green"], green_box)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_object_detector_boxes_labels_scores(server):
    scenes = [((40, 30), (5, 10, 15, 20), (20, 2, 30, 8)), ((64, 48), (30, 5, 60, 45), None)]
    with cf.ThreadPoolExecutor(2) as pool:  # images of different sizes may share a batch
        rs = list(pool.map(lambda s: post(server, "det", data=_scene(*s)), scenes))
    for r, (_, red_box, _) in zip(rs, scenes):
        assert r.status_code == 200, r.text
        detections = r.json()
        assert len(detections) == 1  # the green box scores 0.3, under the default threshold 0.5
        assert detections[0]["red_thing"] == [float(v) for v in red_box]
        assert detections[0]["score"] == pytest.approx(0.9)
    assert_400(post(server, "det", data=b"GIF89a-truncated"), "image")


# -- text_classifier -------------------------------------------------------------------------------

def _text_probs(pos: float, neg: float) -> dict[str, float]:
    z = math.exp(pos) + math.exp(neg)
    return {"positive": math.exp(pos) / z, "negative": math.exp(neg) / z}


def test_text_classifier_batched_with_offsets(server):
    texts = ["Good, GREAT movie!", "an awful, bad movie", "unknown words only", "bad... but great?"]
    expected = [_text_probs(5, 0), _text_probs(0, 5), _text_probs(0, 0), _text_probs(3, 2)]
    with cf.ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda t: post(server, "txt", data=t.encode(), headers={"Content-Type": "text/plain"}),
                           texts))
    for r, exp in zip(rs, expected):
        assert r.status_code == 200, r.text
        out = r.json()
        assert list(out) == ["positive", "negative"]  # every class, in index order
        assert out["positive"] == pytest.approx(exp["positive"], rel=1e-5)
    r = post(server, "txt", json={"text": "great"})
    assert r.json()["positive"] == pytest.approx(_text_probs(3, 0)["positive"], rel=1e-5)
    assert post(server, "txt", files={"data": ("t.txt", b"awful", "text/plain")}).json()["negative"] > 0.9


def test_text_classifier_bad_inputs_are_400(server):
    assert_400(post(server, "txt", data=b"", headers={"Content-Type": "text/plain"}), "empty")
    assert_400(post(server, "txt", data=b"   \n ", headers={"Content-Type": "text/plain"}), "empty")
    assert_400(post(server, "txt", data=b"\xff\xfe\xfa", headers={"Content-Type": "application/octet-stream"}),
               "UTF-8")
    assert_400(post(server, "txt", json=[1, 2, 3]), "expected text")


# -- base_handler ----------------------------------------------------------------------------------

def test_base_handler_json_arrays(server):
    inputs = [[1, 2, 3], [[1.5], [2.5]], [4, 5, 6]]
    with cf.ThreadPoolExecutor(3) as pool:  # two shapes in one batch run as two forward passes
        rs = list(pool.map(lambda x: post(server, "base", json=x), inputs))
    for r, x in zip(rs, inputs):
        assert r.status_code == 200, r.text
        assert r.json() == torch.tensor(x, dtype=torch.float32).mul(2).tolist()
    assert post(server, "base", json={"data": [0.25]}).json() == [0.5]
    assert_400(post(server, "base", json=[[1, 2], [3]]), "rectangular")
    assert_400(post(server, "base", json="hello"), "JSON array")
