"""Open a model archive (.mar, .tar.gz or a no-archive folder) for the server."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .extract import safe_extract
from .manifest import MANIFEST_DIR, MANIFEST_NAME, MANIFEST_PATH, ArchiveError, load_model_config, read_manifest


@dataclass
class LoadedArchive:
    """An opened archive: where its files are, its manifest and its model-config.yaml."""

    model_dir: str
    manifest: dict[str, Any]
    source: str
    model_config: dict[str, Any] = field(default_factory=dict)
    # True when model_dir is a fresh extraction the caller owns (and should delete);
    # False for a no-archive folder used in place.
    extracted: bool = False


def _has_manifest(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MANIFEST_DIR, MANIFEST_NAME))


def _hoist_single_folder(root: str) -> None:
    """Move the contents of a lone top folder up into ``root``.

    torch-model-archiver's tgz puts everything under ``<model-name>/``, and hand-zipped
    folders often look the same; hoisting keeps model_dir equal to the extraction dir.
    """
    names = os.listdir(root)
    if len(names) != 1:
        return
    top = os.path.join(root, names[0])
    if os.path.islink(top) or not os.path.isdir(top) or not _has_manifest(top):
        return
    # Rename first so a child with the same name as the folder cannot collide.
    staging = tempfile.mkdtemp(dir=root, prefix=".hoist-")
    os.rmdir(staging)
    os.rename(top, staging)
    for name in os.listdir(staging):
        os.rename(os.path.join(staging, name), os.path.join(root, name))
    os.rmdir(staging)


def _prefix_for(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    base = re.sub(r"(\.tar\.gz|\.tgz|\.mar|\.zip|\.tar)$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:64] or "model"
    return base + "-"


def open_archive(
    path: str,
    work_dir: str,
    max_bytes: int = 8 * 1024**3,
    max_files: int = 10_000,
) -> LoadedArchive:
    """Open ``path`` (archive file or no-archive folder) and read its manifest and config.

    A folder is used in place. A file is safely extracted into a new unique folder under
    ``work_dir``, which is removed again if anything about the archive is invalid.
    """
    source = os.path.abspath(path)
    if os.path.isdir(path):
        if not _has_manifest(path):
            raise ArchiveError(f"{os.path.basename(source)} has no {MANIFEST_PATH}")
        manifest = read_manifest(path)
        return LoadedArchive(path, manifest, source, load_model_config(path, manifest), False)
    if not os.path.isfile(path):
        raise ArchiveError(f"{os.path.basename(source) or path} is not an archive file or folder")

    os.makedirs(work_dir, exist_ok=True)
    model_dir = tempfile.mkdtemp(dir=work_dir, prefix=_prefix_for(path))
    try:
        safe_extract(path, model_dir, max_bytes=max_bytes, max_files=max_files)
        if not _has_manifest(model_dir):
            _hoist_single_folder(model_dir)
        if not _has_manifest(model_dir):
            raise ArchiveError(f"{os.path.basename(source)} has no {MANIFEST_PATH}")
        manifest = read_manifest(model_dir)
        config = load_model_config(model_dir, manifest)
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return LoadedArchive(model_dir, manifest, source, config, True)
