"""``ts.torch_handler.text_handler.TextHandler``: base of the text handlers, with TorchServe's
text clean-up helpers and its source vocabulary.

The vocabulary is the manifest's ``sourceVocab`` or ``source_vocab.pt`` in the model folder. It may
be a ``torch.save``-d dict of token -> id (loaded with ``weights_only=True``), a TorchText vocabulary
object (needs torchtext installed; unpickled from the archive, which is trusted like its handler
code), or -- modelserve's own format -- ``vocab.json``, a JSON object of token -> id.
"""
from __future__ import annotations

import abc
import logging
import os
import re
import string
import unicodedata
from typing import Any, Optional

from modelserve_handlers._text import load_vocab

from .base_handler import BaseHandler

logger = logging.getLogger(__name__)

CLEANUP_REGEX = re.compile(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")

# Common English contractions (lower case); the longest forms first so they match first.
CONTRACTION_MAP = {
    "can't": "cannot", "won't": "will not", "shan't": "shall not", "ain't": "is not",
    "n't": " not", "'re": " are", "'ve": " have", "'ll": " will", "'d": " would", "'m": " am",
    "let's": "let us", "it's": "it is", "that's": "that is", "what's": "what is", "there's": "there is",
    "he's": "he is", "she's": "she is", "who's": "who is", "here's": "here is",
}
CONTRACTIONS_PATTERN = re.compile("|".join(re.escape(k) for k in sorted(CONTRACTION_MAP, key=len, reverse=True)),
                                  flags=re.IGNORECASE)
_BASIC_SPLIT = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


class _DictVocab:
    """Index access with a default, like a TorchText vocabulary."""

    def __init__(self, mapping: dict[str, int], unk: str = "<unk>") -> None:
        self.stoi = mapping
        self.default = mapping.get(unk, 0)

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.default)

    def __len__(self) -> int:
        return len(self.stoi)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi


class TextHandler(BaseHandler, abc.ABC):
    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: Any = None
        self.tokenizer = self._basic_english

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.initialized = False
        model_dir = context.system_properties.get("model_dir")
        source_vocab = (self.manifest or {}).get("model", {}).get("sourceVocab")
        path = os.path.join(model_dir, source_vocab) if source_vocab else self.get_source_vocab_path(context)
        self.source_vocab = self._load_vocab(path)
        self.initialized = True

    def get_source_vocab_path(self, ctx: Any) -> str:
        model_dir = ctx.system_properties.get("model_dir")
        for name in ("source_vocab.pt", "vocab.json"):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                return path
        raise Exception("Missing the source_vocab file (source_vocab.pt, or vocab.json: a JSON object of "
                        "token -> id). Refer to docs/handlers.md.")

    @staticmethod
    def _load_vocab(path: str) -> Any:
        import torch

        if not path.endswith(".pt"):
            return _DictVocab(load_vocab(path))
        try:
            vocab = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a pickled TorchText vocabulary object
            logger.info("%s is not a plain token -> id dict; unpickling it (needs the library that made it)", path)
            vocab = torch.load(path, weights_only=False)
        if isinstance(vocab, dict):
            return _DictVocab({str(k): int(v) for k, v in vocab.items()})
        if isinstance(vocab, list):
            return _DictVocab({str(tok): i for i, tok in enumerate(vocab)})
        return vocab

    # -- TorchServe's clean-up helpers ---------------------------------------------------------------
    def _expand_contractions(self, text: str) -> str:
        def expand(match: "re.Match[str]") -> str:
            found = match.group(0)
            expanded = CONTRACTION_MAP[found.lower()]
            if found[0].isupper() and expanded[:1].isalpha():
                expanded = expanded[0].upper() + expanded[1:]
            return expanded

        return CONTRACTIONS_PATTERN.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")

    def _remove_html_tags(self, text: str) -> str:
        return CLEANUP_REGEX.sub("", text)

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(str.maketrans("", "", string.punctuation))

    def _remove_puncutation(self, *args: Any, **kwargs: Any) -> str:
        """TorchServe's original (misspelled) name."""
        return self._remove_punctuation(*args, **kwargs)

    def _tokenize(self, text: str) -> list[str]:
        return self.tokenizer(text)

    @staticmethod
    def _basic_english(text: str) -> list[str]:
        """Lower-case; words, numbers and single punctuation marks are tokens."""
        return _BASIC_SPLIT.findall(text.lower())

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        return list(input_tokens)

    def summarize_attributions(self, attributions: Any) -> Any:
        import torch

        attributions = attributions.sum(dim=-1).squeeze(0)
        return attributions / torch.norm(attributions)

    def get_vocab_id(self, token: str) -> Optional[int]:
        return self.source_vocab[token]
