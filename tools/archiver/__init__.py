"""modelserve-archiver: packages models in torch-model-archiver 0.12's archive layout."""
from __future__ import annotations

from .cli import main

__all__ = ["main"]
