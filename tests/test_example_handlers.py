"""The examples' handlers run in-process (no server): built from examples/*/ into tmp_path.

Handler tests need only torch (and Pillow for images); archive tests also need
modelserve_archiver and are skipped, with a reason, when it cannot be imported.
"""
from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import pytest
import torch

from modelserve import BaseHandler, Context, PredictionException

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LINEAR = EXAMPLES / "simple_linear"
IMAGE = EXAMPLES / "image_classifier"

# TorchScript's own deprecation warnings (torch.jit.load in BaseHandler and here) are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

HAVE_ARCHIVER = importlib.util.find_spec("modelserve_archiver") is not None
needs_archiver = pytest.mark.skipif(not HAVE_ARCHIVER, reason="modelserve_archiver is not importable yet")


# -- helpers ------------------------------------------------------------------------------------

def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an example script with this interpreter; fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def load_module(path: Path, name: str) -> ModuleType:
    """Import a handler file under a unique module name (both examples' files are handler.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handler_class(module: ModuleType) -> type[BaseHandler]:
    """The module's handler class; the worker requires exactly one class defined in it."""
    classes = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    assert len(classes) == 1, f"{module.__name__} must define exactly one class, found {classes}"
    assert issubclass(classes[0], BaseHandler)
    return classes[0]


def read_config(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def run_batch(handler: BaseHandler, ctx: Context, data: list[dict[str, Any]]) -> list[Any]:
    """What a worker does for one batch: fresh per-batch context state, then handle()."""
    ctx.begin_batch([f"req-{i}" for i in range(len(data))], [{} for _ in data])
    out = handler.handle(data, ctx)
    assert isinstance(out, list) and len(out) == len(data)
    json.dumps(out)  # every answer must be JSON-serialisable
    return out


def png_bytes(width: int = 40, height: int = 24, seed: int = 1, fmt: str = "PNG") -> bytes:
    """A small deterministic noise image, encoded by Pillow."""
    pil = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g)
    img = pil.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist()))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def json_image(seed: int = 2) -> list[Any]:
    """A normalised-looking [3, 32, 32] input as nested lists."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 32, 32, generator=g).tolist()


# -- simple_linear ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_dir laid out like the archive: model.py, handler.py, config and trained model.pth."""
    d = tmp_path_factory.mktemp("simple_linear")
    proc = run_script(LINEAR / "train.py", "--output-dir", str(d))
    assert Path(proc.stdout.strip()) == d / "model.pth"
    for name in ("model.py", "handler.py", "model-config.yaml"):
        shutil.copy(LINEAR / name, d / name)
    return d


@pytest.fixture()
def linear(linear_dir: Path) -> tuple[BaseHandler, Context]:
    manifest = {"model": {"modelName": "simple_linear", "modelVersion": "1.0", "serializedFile": "model.pth",
                          "modelFile": "model.py", "handler": "handler.py"}}
    cfg = read_config(linear_dir / "model-config.yaml")
    ctx = Context("simple_linear", str(linear_dir), manifest, cfg["batchSize"], model_yaml_config=cfg)
    handler = handler_class(load_module(linear_dir / "handler.py", "example_simple_linear_handler"))()
    handler.initialize(ctx)
    return handler, ctx


def test_linear_config() -> None:
    cfg = read_config(LINEAR / "model-config.yaml")
    assert cfg == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 50, "responseTimeout": 120}


def test_linear_trained_weights(linear: tuple[BaseHandler, Context]) -> None:
    handler, _ = linear
    # The model learnt y = 2x - 1.
    assert handler.model.linear.weight.item() == pytest.approx(2.0, abs=0.01)
    assert handler.model.linear.bias.item() == pytest.approx(-1.0, abs=0.05)


@pytest.mark.parametrize("body", ["5.0", " 5 \n", b"5.0", 5.0, 5, [5.0]], ids=repr)
def test_linear_predicts_nine(linear: tuple[BaseHandler, Context], body: Any) -> None:
    handler, ctx = linear
    (out,) = run_batch(handler, ctx, [{"body": body}])
    assert isinstance(out, list) and len(out) == 1
    assert out[0] == pytest.approx(9.0, abs=0.1)


def test_linear_list_and_batch(linear: tuple[BaseHandler, Context]) -> None:
    handler, ctx = linear
    # A list gives one prediction per value; each request of a batch keeps its own list.
    out = run_batch(handler, ctx, [{"body": [0.0, 5.0, -1.5]}, {"data": b"2"}, {"body": "[1, 3]"}])
    assert [len(o) for o in out] == [3, 1, 2]
    expected = [[-1.0, 9.0, -4.0], [3.0], [1.0, 5.0]]
    for got, want in zip(out, expected):
        assert got == pytest.approx(want, abs=0.1)


@pytest.mark.parametrize(
    "body, reason",
    [("abc", "not a number"), (b"\xff\xfe", "UTF-8"), ("", "empty"), ([], "empty list"), (["x"], "expected a number"),
     (True, "expected a number"), ({"x": 1}, "expected a number"), ("nan", "finite"), ([1.0, None], "expected a number")],
    ids=repr,
)
def test_linear_bad_input(linear: tuple[BaseHandler, Context], body: Any, reason: str) -> None:
    handler, ctx = linear
    with pytest.raises(PredictionException) as info:
        run_batch(handler, ctx, [{"body": body}])
    assert info.value.status_code == 400
    assert reason in info.value.message


def test_linear_form_encoded(linear: tuple[BaseHandler, Context]) -> None:
    handler, ctx = linear
    # curl -d 5.0 (no Content-Type) is parsed as a form with one empty field named "5.0".
    (out,) = run_batch(handler, ctx, [{"5.0": ""}])
    assert out == pytest.approx([9.0], abs=0.1)


def test_linear_no_body(linear: tuple[BaseHandler, Context]) -> None:
    handler, ctx = linear
    with pytest.raises(PredictionException) as info:
        run_batch(handler, ctx, [{"a": "1", "b": "2"}])
    assert info.value.status_code == 400 and "no body" in info.value.message


# -- image_classifier ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model_dir laid out like the archive: TorchScript model.pt, handler, mapping and config."""
    d = tmp_path_factory.mktemp("image_classifier")
    proc = run_script(IMAGE / "model.py", "--output-dir", str(d))
    assert Path(proc.stdout.strip()) == d / "model.pt"
    for name in ("handler.py", "index_to_name.json", "model-config.yaml"):
        shutil.copy(IMAGE / name, d / name)
    return d


@pytest.fixture(scope="module")
def labels() -> dict[str, str]:
    return json.loads((IMAGE / "index_to_name.json").read_text())


def make_image_handler(model_dir: Path, cfg: Optional[dict[str, Any]] = None) -> tuple[BaseHandler, Context]:
    manifest = {"model": {"modelName": "image_classifier", "modelVersion": "1.0", "serializedFile": "model.pt",
                          "handler": "handler.py"}}
    if cfg is None:
        cfg = read_config(model_dir / "model-config.yaml")
    ctx = Context("image_classifier", str(model_dir), manifest, cfg.get("batchSize", 1), model_yaml_config=cfg)
    handler = handler_class(load_module(model_dir / "handler.py", "example_image_classifier_handler"))()
    handler.initialize(ctx)
    return handler, ctx


@pytest.fixture()
def image(image_dir: Path) -> tuple[BaseHandler, Context]:
    return make_image_handler(image_dir)


def check_topk(result: Any, labels: dict[str, str], k: int = 3) -> list[float]:
    """k single-entry {label: prob} dicts, sorted, known labels, probabilities summing to <= 1."""
    assert isinstance(result, list) and len(result) == k
    assert all(isinstance(r, dict) and len(r) == 1 for r in result)
    names = [next(iter(r)) for r in result]
    probs = [next(iter(r.values())) for r in result]
    assert set(names) <= set(labels.values()) and len(set(names)) == k
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-6
    return probs


def assert_same_topk(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    """Same labels in the same order, probabilities equal up to float noise from batch size."""
    assert [next(iter(r)) for r in a] == [next(iter(r)) for r in b]
    assert [next(iter(r.values())) for r in a] == pytest.approx([next(iter(r.values())) for r in b], abs=1e-5)


def test_image_config(labels: dict[str, str]) -> None:
    cfg = read_config(IMAGE / "model-config.yaml")
    assert cfg["batchSize"] == 8 and cfg["maxBatchDelay"] == 50
    assert cfg["minWorkers"] == cfg["maxWorkers"] == 1
    assert cfg["handler"] == {"topk": 3}
    assert sorted(labels, key=int) == [str(i) for i in range(10)]


def test_image_model_is_torchscript_and_seeded(image_dir: Path, tmp_path: Path) -> None:
    # Exporting twice gives the same weights: torch.manual_seed(0) makes the example reproducible.
    run_script(IMAGE / "model.py", "--output-dir", str(tmp_path))
    a = torch.jit.load(str(image_dir / "model.pt"))
    b = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert a(x).shape == (2, 10)
    assert torch.equal(a(x), b(x))


def test_image_png(image: tuple[BaseHandler, Context], labels: dict[str, str]) -> None:
    handler, ctx = image
    (out,) = run_batch(handler, ctx, [{"body": png_bytes()}])
    check_topk(out, labels)
    assert ctx.get_response_status(0) is None
    assert ctx.get_response_headers(0) == {"x-batch-size": "1"}


def test_image_json_matches_model(image: tuple[BaseHandler, Context], image_dir: Path,
                                  labels: dict[str, str]) -> None:
    handler, ctx = image
    arr = json_image()
    nested, flat = run_batch(handler, ctx, [{"body": arr}, {"body": torch.tensor(arr).flatten().tolist()}])
    probs = check_topk(nested, labels)
    assert_same_topk(nested, flat)  # [3, 32, 32] and 3072 flat values are the same input
    # The answer is the model's own softmax top-3 for that tensor.
    model = torch.jit.load(str(image_dir / "model.pt"))
    want = torch.softmax(model(torch.tensor([arr])), dim=1)[0]
    top = torch.topk(want, 3)
    assert [next(iter(r)) for r in nested] == [labels[str(i)] for i in top.indices.tolist()]
    assert probs == pytest.approx(top.values.tolist(), abs=1e-5)


def test_image_batch_of_three_mixed(image: tuple[BaseHandler, Context], labels: dict[str, str]) -> None:
    handler, ctx = image
    png, jpeg, arr = png_bytes(seed=3), png_bytes(64, 64, seed=4, fmt="JPEG"), json_image(5)
    calls: list[int] = []
    model = handler.model
    handler.model = lambda x: (calls.append(x.shape[0]), model(x))[1]  # count model calls
    out = run_batch(handler, ctx, [{"body": png}, {"data": jpeg}, {"body": arr}])
    assert calls == [3]  # one model call for the whole batch
    for idx, result in enumerate(out):
        check_topk(result, labels)
        assert ctx.get_response_status(idx) is None
        assert ctx.get_response_headers(idx)["x-batch-size"] == "3"
    # Batched answers equal the same inputs sent one at a time.
    handler.model = model
    singles = [run_batch(handler, ctx, [row])[0] for row in ({"body": png}, {"data": jpeg}, {"body": arr})]
    for batched, single in zip(out, singles):
        assert_same_topk(batched, single)


def test_image_other_encodings(image: tuple[BaseHandler, Context], labels: dict[str, str]) -> None:
    import base64

    handler, ctx = image
    png = png_bytes(seed=6)
    raw, field, b64, b64_obj, json_text = run_batch(handler, ctx, [
        {"body": png},
        {"data": png},  # multipart field
        {"body": base64.b64encode(png).decode()},  # text/plain base64
        {"body": {"data": base64.b64encode(png).decode()}},  # JSON {"data": "<b64>"}
        {"body": json.dumps(json_image(7)).encode()},  # JSON array sent as octet-stream
    ])
    check_topk(raw, labels)
    for other in (field, b64, b64_obj):
        assert_same_topk(other, raw)
    check_topk(json_text, labels)
    # The same array posted as a form (curl -d @arr.json, no Content-Type): one empty field named by it.
    (form,) = run_batch(handler, ctx, [{json.dumps(json_image(7)): ""}])
    assert_same_topk(form, json_text)


@pytest.mark.parametrize(
    "body, reason",
    [(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "cannot decode image"),
     (b"not an image at all", "cannot decode image"),
     (b"", "empty body"),
     ([1.0, 2.0, 3.0], "shape"),
     ([[["a"]]], "not a numeric array"),
     ("%%% not base64 %%%", "base64"),
     (b"[1, 2", "not valid JSON"),
     (42, "unsupported input")],
    ids=["corrupt-png", "text-bytes", "empty", "short-array", "strings", "bad-b64", "bad-json", "number"],
)
def test_image_bad_item_rejected_alone(image: tuple[BaseHandler, Context], labels: dict[str, str],
                                       body: Any, reason: str) -> None:
    handler, ctx = image
    good, bad = run_batch(handler, ctx, [{"body": png_bytes()}, {"body": body}])
    check_topk(good, labels)
    assert ctx.get_response_status(0) is None
    status = ctx.get_response_status(1)
    assert status is not None and status[0] == 400 and reason in status[1]
    assert bad == status[1]  # the error text is also the item's answer
    assert ctx.get_response_headers(0)["x-batch-size"] == "1"  # only the good request ran


def test_image_truncated_png(image: tuple[BaseHandler, Context]) -> None:
    handler, ctx = image
    png = png_bytes(64, 64)
    (out,) = run_batch(handler, ctx, [{"body": png[: len(png) // 2]}])
    status = ctx.get_response_status(0)
    assert status is not None and status[0] == 400 and "cannot decode image" in out


def test_image_all_bad_skips_model(image: tuple[BaseHandler, Context]) -> None:
    handler, ctx = image
    handler.model = None  # would fail if called
    out = run_batch(handler, ctx, [{"body": b"junk"}, {"body": [0.0]}])
    assert [ctx.get_response_status(i)[0] for i in range(2)] == [400, 400]  # type: ignore[index]
    assert all(isinstance(o, str) and o for o in out)
    assert ctx.get_response_headers(1)["x-batch-size"] == "0"


def test_image_topk_default_and_custom(image_dir: Path, labels: dict[str, str]) -> None:
    arr = json_image()
    handler, ctx = make_image_handler(image_dir, {})  # no handler section: top 5
    check_topk(run_batch(handler, ctx, [{"body": arr}])[0], labels, k=5)
    handler, ctx = make_image_handler(image_dir, {"handler": {"topk": 50}})  # capped at 10 classes
    probs = check_topk(run_batch(handler, ctx, [{"body": arr}])[0], labels, k=10)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="topk"):
        make_image_handler(image_dir, {"handler": {"topk": 0}})


def test_image_without_pillow(image_dir: Path, labels: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    png = png_bytes()
    # Make "import PIL" fail: the module still imports, JSON input still works, images fail clearly.
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)
    handler, ctx = make_image_handler(image_dir)
    check_topk(run_batch(handler, ctx, [{"body": json_image()}])[0], labels)
    with pytest.raises(PredictionException) as info:
        run_batch(handler, ctx, [{"body": png}])
    assert info.value.status_code == 500 and "pip install pillow" in info.value.message


# -- build.py: archives through modelserve-archiver ---------------------------------------------

@pytest.fixture()
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker imports the archive's handler.py / model.py by plain name; undo that afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = {k: sys.modules.pop(k) for k in ("handler", "model") if k in sys.modules}
    yield
    for k in ("handler", "model"):
        sys.modules.pop(k, None)
    sys.modules.update(saved)


def open_built(script: Path, name: str, tmp_path: Path) -> Any:
    """Run build.py into tmp_path/store and open the archive as the server does."""
    from modelserve.archive import open_archive

    store = tmp_path / "store"
    proc = run_script(script, "--export-path", str(store))
    mar = store / f"{name}.mar"
    assert Path(proc.stdout.strip()) == mar and mar.is_file()
    return open_archive(str(mar), str(tmp_path / "work"))


def worker_load(loaded: Any, name: str) -> tuple[Any, Context]:
    """Load the archive's handler with the worker's own loader (checks the one-class rule too)."""
    from modelserve.worker.loader import load_handler

    cfg = loaded.model_config
    ctx = Context(name, loaded.model_dir, loaded.manifest, cfg.get("batchSize", 1), model_yaml_config=cfg)
    return load_handler(loaded.manifest["model"]["handler"], ctx), ctx


@needs_archiver
def test_build_simple_linear(tmp_path: Path, clean_imports: None) -> None:
    loaded = open_built(LINEAR / "build.py", "simple_linear", tmp_path)
    model = loaded.manifest["model"]
    assert model["modelName"] == "simple_linear" and model["modelVersion"] == "1.0"
    assert (model["modelFile"], model["serializedFile"], model["handler"]) == ("model.py", "model.pth", "handler.py")
    assert loaded.model_config["batchSize"] == 1
    assert sorted(p.name for p in Path(loaded.model_dir).iterdir() if p.is_file()) == [
        "handler.py", "model-config.yaml", "model.pth", "model.py"]
    handler, ctx = worker_load(loaded, "simple_linear")
    ctx.begin_batch(["r0"], [{"content-type": "text/plain"}])
    (out,) = handler.entry([{"body": "5.0"}], ctx)
    assert out[0] == pytest.approx(9.0, abs=0.1)


@needs_archiver
def test_build_image_classifier(tmp_path: Path, labels: dict[str, str], clean_imports: None) -> None:
    loaded = open_built(IMAGE / "build.py", "image_classifier", tmp_path)
    model = loaded.manifest["model"]
    assert model["modelVersion"] == "1.0" and model["serializedFile"] == "model.pt"
    assert not model.get("modelFile")
    assert (Path(loaded.model_dir) / "index_to_name.json").is_file()
    assert loaded.model_config["handler"] == {"topk": 3}
    handler, ctx = worker_load(loaded, "image_classifier")
    ctx.begin_batch(["r0", "r1"], [{}, {}])
    out = handler.entry([{"body": png_bytes()}, {"body": json_image()}], ctx)
    for result in out:
        check_topk(result, labels)
    assert ctx.get_response_headers(1)["x-batch-size"] == "2"


def test_build_reports_failure(tmp_path: Path) -> None:
    # An export path that is a file cannot be used: non-zero exit and one clear line, no traceback.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, str(LINEAR / "build.py"), "--export-path", str(blocker)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "build failed" in proc.stderr and "Traceback" not in proc.stderr
