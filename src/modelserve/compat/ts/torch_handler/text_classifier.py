"""``ts.torch_handler.text_classifier.TextClassifier``: TorchServe's default text classifier.

Text is cleaned (HTML tags, case, contractions, accents, punctuation), tokenised, extended with
n-grams (``ngrams = 2``) and looked up in the source vocabulary; the model is called as
``model(token_ids, offsets)`` (an ``nn.EmbeddingBag`` model). The response per request is
``{"label": probability}`` for every class. Unlike TorchServe's, this one serves whole batches
(TorchServe's handles only the first request of a batch).
"""
from __future__ import annotations

from typing import Any

from modelserve_handlers._common import request_payload
from modelserve_handlers._text import with_ngrams

from ..handler_utils.timer import timed
from ..utils.util import PredictionException, map_class_to_label
from .text_handler import TextHandler


def ngrams_iterator(tokens: list[str], ngrams: int) -> list[str]:
    """The tokens, then every 2-gram ... n-gram joined by spaces."""
    return with_ngrams(list(tokens), ngrams)


class TextClassifier(TextHandler):
    ngrams = 2

    def _clean(self, text: Any) -> list[str]:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise PredictionException(f"expected text, got {type(text).__name__}", 400)
        text = self._remove_html_tags(text)
        text = text.lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        text = self._remove_punctuation(text)
        return self._tokenize(text)

    @timed
    def preprocess(self, data: list[Any]) -> Any:
        import torch

        token_lists = []
        try:
            token_lists = [self._clean(request_payload(row)) for row in data]
        except UnicodeDecodeError:
            raise PredictionException("request body is not UTF-8 text", 400) from None
        ids = [[self.source_vocab[tok] for tok in ngrams_iterator(tokens, self.ngrams)] for tokens in token_lists]
        lengths = torch.as_tensor([len(row) for row in ids], dtype=torch.long)
        self._offsets = (torch.cumsum(lengths, 0) - lengths).to(self.device)
        text_tensor = torch.as_tensor([i for row in ids for i in row], dtype=torch.long, device=self.device)
        return text_tensor, token_lists[0] if len(token_lists) == 1 else token_lists

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        text_tensor, _ = data
        offsets = getattr(self, "_offsets", None)
        if offsets is None:
            offsets = torch.as_tensor([0], device=self.device)
        return super().inference(text_tensor, offsets)

    @timed
    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch.nn.functional as F

        if data.dim() == 1:
            data = data.unsqueeze(0)
        return map_class_to_label(F.softmax(data, dim=1).tolist(), self.mapping)
