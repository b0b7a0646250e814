"""Where a model URL may point (``allowed_urls``), and downloading allowed http(s) archives."""
from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Sequence

from .errors import BadRequestError, InternalError

CHUNK = 1 << 20


def compile_patterns(allowed_urls: str) -> list[re.Pattern[str]]:
    return [re.compile(p.strip()) for p in allowed_urls.split(",") if p.strip()]


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def allowed(url: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(p.fullmatch(url) for p in patterns)


def inside(folder: str, path: str) -> bool:
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def download(url: str, store: Optional[str], max_bytes: int, timeout: float = 60.0) -> str:
    """Fetch ``url`` into the model store under its file name; the caller checked ``allowed_urls``."""
    if not store:
        raise BadRequestError("A model store is needed to download models into")
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name or name in (".", ".."):
        raise BadRequestError(f"Cannot tell the archive's file name from URL {url}")
    target = os.path.join(store, name)
    if os.path.exists(target):
        raise InternalError(f"Model file already exists {name}")  # TorchServe's status and words
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            total = 0
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise BadRequestError(f"Download of {url} exceeds archive_max_bytes ({max_bytes})")
                out.write(chunk)
        os.replace(tmp, target)
    except urllib.error.HTTPError as exc:
        raise BadRequestError(f"Failed to download model from {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BadRequestError(f"Failed to download model from {url}: {getattr(exc, 'reason', exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
