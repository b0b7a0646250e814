"""Model archives: the MANIFEST.json layout, safe extraction and opening for the server.

Imports only the stdlib, pyyaml and ``modelserve.errors`` (never torch or aiohttp), so
the archiver command and the HTTP front end can use it cheaply.
"""
from __future__ import annotations

from .extract import safe_extract
from .loader import LoadedArchive, open_archive
from .manifest import (
    ARCHIVER_VERSION,
    DEFAULT_MODEL_VERSION,
    MANIFEST_PATH,
    MODEL_NAME_RE,
    RUNTIMES,
    ArchiveError,
    build_manifest,
    load_model_config,
    manifest_to_json,
    parse_model_config,
    read_manifest,
    validate_model_name,
)

__all__ = [
    "ARCHIVER_VERSION",
    "DEFAULT_MODEL_VERSION",
    "MANIFEST_PATH",
    "MODEL_NAME_RE",
    "RUNTIMES",
    "ArchiveError",
    "LoadedArchive",
    "build_manifest",
    "load_model_config",
    "manifest_to_json",
    "open_archive",
    "parse_model_config",
    "read_manifest",
    "safe_extract",
    "validate_model_name",
]
