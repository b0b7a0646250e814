"""Token authorization (TorchServe 0.12's scheme): a key file with management, inference and API keys.

Keys are compared in constant time; a failed check is a 401. The API key rotates the other two
(``GET /token?type=management|inference`` on the management port).
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from .errors import BadRequestError, UnauthorizedError

KINDS = ("management", "inference")


@dataclass
class _Key:
    key: str
    expires: Optional[float]  # epoch seconds; None: never (the API key)


class TokenAuth:
    def __init__(self, key_file: str, expiration_min: float) -> None:
        self.key_file = os.path.abspath(key_file)
        self.ttl = max(0.01, expiration_min) * 60
        now = time.time()
        self._keys = {kind: _Key(_new_key(), now + self.ttl) for kind in KINDS}
        self._keys["API"] = _Key(_new_key(), None)
        self.save()

    def save(self) -> None:
        """Write the key file atomically with mode 0600 (only its owner may read it)."""
        doc = {}
        for kind, k in self._keys.items():
            entry: dict[str, object] = {"key": k.key}
            if k.expires is not None:
                entry["expiration time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.expires))
            doc[kind] = entry
        folder = os.path.dirname(self.key_file) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".key_file-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
            os.replace(tmp, self.key_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def key(self, kind: str) -> str:
        return self._keys[kind].key

    def check(self, kind: str, authorization: Optional[str]) -> None:
        """Raise UnauthorizedError unless ``authorization`` carries the current ``kind`` key."""
        token = _bearer(authorization)
        if token is None:
            raise UnauthorizedError(f"Token authorization failed: missing 'Authorization: Bearer <{kind} key>' header "
                                    f"(keys are in {self.key_file})")
        entry = self._keys[kind]
        if not hmac.compare_digest(token.encode(), entry.key.encode()):
            raise UnauthorizedError(f"Token authorization failed: invalid {kind} key")
        if entry.expires is not None and time.time() > entry.expires:
            raise UnauthorizedError(f"Token authorization failed: the {kind} key has expired; "
                                    "get a new one with GET /token?type=" + kind)

    def rotate(self, kind: Optional[str], authorization: Optional[str]) -> dict[str, str]:
        """A new ``kind`` key (API key required); returns it and writes the key file."""
        self.check("API", authorization)
        if kind not in KINDS:
            raise BadRequestError(f"Invalid token type: {kind!r}; use management or inference")
        self._keys[kind] = _Key(_new_key(), time.time() + self.ttl)
        self.save()
        return {kind: self._keys[kind].key}


def _new_key() -> str:
    return secrets.token_urlsafe(24)


def _bearer(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
