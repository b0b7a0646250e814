"""Tokenisation and vocabulary loading for the text handlers (a helper module, not a handler).

Tokenisation, exactly: the text is Unicode-NFKC normalised and lower-cased, then every maximal run of
word characters (Python's ``\\w``: letters, digits, underscore, in any script) is a token; spaces,
punctuation and symbols only separate tokens. With ``ngrams: n`` > 1 the tokens are followed by
every 2-gram ... n-gram, written as the tokens joined by one space (``"not good"``).
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any, Optional

_WORD = re.compile(r"\w+")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _WORD.findall(text)


def with_ngrams(tokens: list[str], n: int) -> list[str]:
    out = list(tokens)
    for size in range(2, n + 1):
        out.extend(" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1))
    return out


def load_vocab(path: str) -> dict[str, int]:
    """``.json``: an object ``{"token": id}`` or a list of tokens (id = position);
    any other name: a text file with one token per line (id = line number, from 0)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            data = {str(tok): i for i, tok in enumerate(data)}
        if not isinstance(data, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()):
            raise ValueError(f"{os.path.basename(path)}: expected a JSON object of token -> non-negative "
                             "integer id, or a JSON list of tokens")
        return {str(k): int(v) for k, v in data.items()}
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def lookup(tokens: list[str], vocab: dict[str, int], unk_id: Optional[int]) -> list[int]:
    """Token ids; an unknown token is ``unk_id``, or dropped when the vocabulary has no unknown token."""
    out = []
    for tok in tokens:
        idx = vocab.get(tok, unk_id)
        if idx is not None:
            out.append(idx)
    return out


def text_of(value: Any) -> str:
    """The text of one request: a str, UTF-8 bytes, or a JSON object's ``text``/``data`` field."""
    from ._common import RequestError

    if isinstance(value, dict):
        for key in ("text", "data", "input"):
            if key in value:
                return text_of(value[key])
        raise RequestError("JSON body must be a string or an object with a `text` field")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request body is not UTF-8 text") from None
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(f"expected text, got a JSON {type(value).__name__}")
    if not value.strip():
        raise RequestError("empty request body: expected text")
    return value
