"""Train the y = 2x - 1 model and package it as simple_linear.mar.

Usage: python examples/simple_linear/build.py --export-path model_store
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from train import train  # noqa: E402

MODEL_NAME = "simple_linear"
VERSION = "1.0"


def archive(serialized: str, export_path: str) -> str:
    """Run modelserve-archiver; return the archive's path or raise RuntimeError with its message."""
    if importlib.util.find_spec("modelserve_archiver") is None:
        raise RuntimeError("modelserve_archiver is not importable; install modelserve (pip install -e .)")
    cmd = [
        sys.executable, "-m", "modelserve_archiver",
        "--model-name", MODEL_NAME,
        "--version", VERSION,
        "--model-file", os.path.join(HERE, "model.py"),
        "--serialized-file", serialized,
        "--handler", os.path.join(HERE, "handler.py"),
        "--config-file", os.path.join(HERE, "model-config.yaml"),
        "--export-path", export_path,
        "--force",  # rebuilding replaces the previous archive
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip() or f"archiver exited with {proc.returncode}")
    return os.path.join(export_path, f"{MODEL_NAME}.mar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-path", default="model_store", help="folder for the .mar (created if missing)")
    args = parser.parse_args(argv)
    export_path = os.path.abspath(args.export_path)
    try:
        os.makedirs(export_path, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="simple_linear-") as tmp:
            path = archive(train(tmp), export_path)
    except Exception as exc:  # noqa: BLE001 - report any failure as one line
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
