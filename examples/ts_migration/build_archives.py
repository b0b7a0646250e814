"""Build the three example archives from scratch with TorchServe's own torch-model-archiver.

No downloads: the weights are made here (seeded, so every build is identical).

    python examples/ts_migration/build_archives.py [--out DIR]

writes DIR/model_store/{iris,c2f,tinycnn}.mar, DIR/sample.png and DIR/config.properties
(DIR defaults to examples/ts_migration/build, which git ignores). ``torch-model-archiver`` is
looked up next to this Python, then on PATH; ``modelserve-archiver`` (same flags) is the fallback.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent


class TinyCNN(nn.Module):
    """32x32 RGB -> 10 classes; plenty for a demo, a few kB on disk."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def archiver() -> list[str]:
    for name in ("torch-model-archiver", "modelserve-archiver"):
        local = Path(sys.executable).parent / name
        if local.exists():
            return [str(local)]
        found = shutil.which(name)
        if found:
            return [found]
    sys.exit("neither torch-model-archiver nor modelserve-archiver is installed")


def script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in recent torch
        torch.jit.script(model.eval()).save(str(path))
    return path


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "build")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    weights, store = out / "weights", out / "model_store"
    weights.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    tma = archiver()
    torch.manual_seed(0)

    # 1. class-based handler + eager model: --model-file and a state dict
    sys.dont_write_bytecode = True  # keep the example folder clean
    sys.path.insert(0, str(HERE / "iris"))
    from iris_model import IrisNet  # noqa: E402

    torch.save(IrisNet().state_dict(), weights / "iris.pt")
    run(tma + ["--model-name", "iris", "--version", "1.0", "--model-file", str(HERE / "iris" / "iris_model.py"),
               "--serialized-file", str(weights / "iris.pt"), "--handler", str(HERE / "iris" / "iris_handler.py"),
               "--extra-files", str(HERE / "iris" / "index_to_name.json"),
               "--config-file", str(HERE / "iris" / "model-config.yaml"), "--export-path", str(store), "--force"])

    # 2. function-based handler + a TorchScript model (exact weights: Celsius -> Fahrenheit)
    c2f = nn.Linear(1, 1)
    with torch.no_grad():
        c2f.weight.fill_(1.8)
        c2f.bias.fill_(32.0)
    script(c2f, weights / "c2f.pt")
    run(tma + ["--model-name", "c2f", "--version", "1.0", "--serialized-file", str(weights / "c2f.pt"),
               "--handler", str(HERE / "c2f" / "c2f_handler.py"), "--export-path", str(store), "--force"])

    # 3. the built-in image_classifier by name + a TorchScript CNN + index_to_name.json
    script(TinyCNN(), weights / "tinycnn.pt")
    run(tma + ["--model-name", "tinycnn", "--version", "1.0", "--serialized-file", str(weights / "tinycnn.pt"),
               "--handler", "image_classifier", "--extra-files", str(HERE / "tinycnn" / "index_to_name.json"),
               "--config-file", str(HERE / "tinycnn" / "model-config.yaml"), "--export-path", str(store), "--force"])

    try:
        from PIL import Image

        img = Image.new("RGB", (64, 48), (30, 90, 200))
        img.paste((240, 200, 40), (16, 12, 48, 36))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        (out / "sample.png").write_bytes(buf.getvalue())
    except ImportError:
        print("Pillow is not installed: no sample.png (any JPEG/PNG will do)")

    (out / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8080\n"
        "management_address=http://127.0.0.1:8081\n"
        "metrics_address=http://127.0.0.1:8082\n"
        f"model_store={store}\n"
        "load_models=iris.mar,c2f.mar,tinycnn.mar\n"
        "default_workers_per_model=1\n")
    print(f"\narchives in {store}:", ", ".join(sorted(p.name for p in store.glob("*.mar"))))


if __name__ == "__main__":
    main()
