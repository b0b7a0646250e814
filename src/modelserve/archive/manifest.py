"""MAR-INF/MANIFEST.json and model-config.yaml: build, read, validate.

The layout matches torch-model-archiver 0.12 so archives move freely between TorchServe
and modelserve. Imports only the stdlib, pyyaml and ``modelserve.errors``.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any

import yaml

from ..errors import BadRequestError

MANIFEST_DIR = "MAR-INF"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_PATH = MANIFEST_DIR + "/" + MANIFEST_NAME

# The manifest's archiverVersion names the torch-model-archiver layout we write, so tools
# that branch on it treat our archives like 0.12 ones.
ARCHIVER_VERSION = "0.12.0"
DEFAULT_MODEL_VERSION = "1.0"
RUNTIMES = ("python", "python3")

# torch-model-archiver's own rule for model names.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")

# Manifests and configs are small; a cap keeps a hostile archive from making us parse gigabytes.
_MAX_TEXT_BYTES = 4 * 1024 * 1024

# Manifest keys that name a file inside the model directory.
_FILE_KEYS = ("serializedFile", "modelFile", "requirementsFile", "configFile")


class ArchiveError(BadRequestError):
    """An invalid or unsafe model archive (HTTP 400); the message says why in one line."""

    type_name = "InvalidModelException"


def validate_model_name(name: str) -> None:
    """Raise ArchiveError unless ``name`` is letters, digits, ``_ - .``, starting alnum."""
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise ArchiveError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def _base(path: str | None) -> str | None:
    # torch-model-archiver keeps only the base name; empty values count as "not given".
    if not path:
        return None
    return os.path.basename(path.rstrip("/"))


def build_manifest(
    model_name: str,
    model_version: str,
    serialized_file: str | None = None,
    handler: str | None = None,
    model_file: str | None = None,
    requirements_file: str | None = None,
    config_file: str | None = None,
    runtime: str = "python",
) -> dict[str, Any]:
    """Return a manifest dict laid out exactly as torch-model-archiver 0.12 writes it.

    File arguments may be paths; only base names are stored. Keys for files not given
    are omitted, as torch-model-archiver does.
    """
    validate_model_name(model_name)
    if not isinstance(model_version, str) or not model_version:
        raise ArchiveError("model version must be a non-empty string")
    if not handler:
        raise ArchiveError("a handler is required")
    if runtime not in RUNTIMES:
        raise ArchiveError(f"unsupported runtime {runtime!r} (use one of {', '.join(RUNTIMES)})")
    # Key order follows torch-model-archiver so the JSON text diffs cleanly against its output.
    model: dict[str, Any] = {"modelName": model_name}
    if _base(serialized_file):
        model["serializedFile"] = _base(serialized_file)
    model["handler"] = os.path.basename(handler)
    if _base(model_file):
        model["modelFile"] = _base(model_file)
    model["modelVersion"] = model_version
    if _base(requirements_file):
        model["requirementsFile"] = _base(requirements_file)
    if _base(config_file):
        model["configFile"] = _base(config_file)
    return {
        "createdOn": datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }


def manifest_to_json(manifest: dict[str, Any]) -> str:
    """Serialize a manifest the way torch-model-archiver does (2-space indent, no newline)."""
    return json.dumps(manifest, indent=2)


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise ArchiveError(f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > _MAX_TEXT_BYTES:
        raise ArchiveError(f"{what} is larger than {_MAX_TEXT_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ArchiveError(f"{what} is not valid UTF-8") from None


def _inner_path(model_dir: str, rel: str, key: str) -> str:
    # Files named by the manifest must stay inside the model directory.
    if not isinstance(rel, str) or not rel:
        raise ArchiveError(f"manifest model.{key} must be a non-empty string")
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel) or ".." in parts:
        raise ArchiveError(f"manifest model.{key} {rel!r} points outside the model directory")
    root = os.path.realpath(model_dir)
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != root:
        raise ArchiveError(f"manifest model.{key} {rel!r} points outside the model directory")
    return full


def read_manifest(model_dir: str) -> dict[str, Any]:
    """Read and check ``model_dir``/MAR-INF/MANIFEST.json; return it with defaults filled.

    Required, as TorchServe requires: a ``model`` object with ``modelName``; we also need
    ``handler``. ``modelVersion`` defaults to "1.0" and ``runtime`` to "python". Files the
    manifest names (serializedFile, modelFile, requirementsFile, configFile) must exist.
    """
    path = os.path.join(model_dir, MANIFEST_DIR, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ArchiveError(f"{model_dir} has no {MANIFEST_PATH}")
    text = _read_text(path, MANIFEST_PATH)
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise ArchiveError(f"{MANIFEST_PATH} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ArchiveError(f"{MANIFEST_PATH} must be a JSON object")
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise ArchiveError(f"{MANIFEST_PATH} has no 'model' object")
    name = model.get("modelName")
    if not isinstance(name, str) or not name:
        raise ArchiveError(f"{MANIFEST_PATH} has no model.modelName")
    validate_model_name(name)
    handler = model.get("handler")
    if not isinstance(handler, str) or not handler.strip():
        raise ArchiveError(f"{MANIFEST_PATH} has no model.handler")

    model = dict(model)
    version = model.get("modelVersion")
    if version is None or version == "":
        model["modelVersion"] = DEFAULT_MODEL_VERSION
    elif isinstance(version, (int, float)) and not isinstance(version, bool):
        model["modelVersion"] = str(version)  # hand-written manifests sometimes say 2 or 1.0
    elif not isinstance(version, str):
        raise ArchiveError(f"{MANIFEST_PATH} model.modelVersion must be a string")
    runtime = manifest.get("runtime", "python")
    if not isinstance(runtime, str) or not runtime:
        raise ArchiveError(f"{MANIFEST_PATH} runtime must be a non-empty string")

    for key in _FILE_KEYS:
        if key in model and model[key] is not None:
            full = _inner_path(model_dir, model[key], key)
            if not os.path.isfile(full):
                raise ArchiveError(f"manifest names {key} {model[key]!r} but the archive has no such file")
    module = handler.split(":", 1)[0]
    if module.endswith(".py"):
        full = _inner_path(model_dir, module, "handler")
        if not os.path.isfile(full):
            raise ArchiveError(f"manifest names handler {module!r} but the archive has no such file")

    out = dict(manifest)
    out["runtime"] = runtime
    out["model"] = model
    return out


def parse_model_config(text: str, source: str = "model-config.yaml") -> dict[str, Any]:
    """Parse model-config.yaml text; an empty file is {}; anything but a mapping is an error."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())
        raise ArchiveError(f"{source} is not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArchiveError(f"{source} must be a YAML mapping, not {type(data).__name__}")
    return data


def load_model_config(model_dir: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the parsed configFile named by ``manifest``, or {} when it names none."""
    rel = manifest.get("model", {}).get("configFile")
    if not rel:
        return {}
    full = _inner_path(model_dir, rel, "configFile")
    if not os.path.isfile(full):
        raise ArchiveError(f"manifest names configFile {rel!r} but the archive has no such file")
    return parse_model_config(_read_text(full, rel), rel)
