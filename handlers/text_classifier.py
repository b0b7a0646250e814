"""Built-in ``text_classifier``: text in, a probability for every class out.

Input, per request: UTF-8 text as the raw body (``text/plain`` or bytes), the multipart field
``data``, a JSON string, or a JSON object with a ``text`` field.

Vocabulary: a file shipped with the archive (``--extra-files vocab.json``), by default
``vocab.json``: a JSON object mapping token -> integer id (or a JSON list of tokens, id = position;
a non-JSON file is read as one token per line). Tokens not in the vocabulary map to the id of
``unk_token`` (default ``<unk>``) when the vocabulary has it, else they are dropped.

Tokenisation: NFKC + lower-case, tokens are the runs of word characters (see
``modelserve_handlers._text``), plus n-grams when ``ngrams`` > 1.

Model call, ``input: offsets`` (default, for ``nn.EmbeddingBag`` models, TorchServe's text
classifier convention)::

    logits = model(token_ids, offsets)   # token_ids: LongTensor [total tokens of the batch]
                                         # offsets: LongTensor [N], where each request starts

``input: padded``: ``logits = model(ids)`` with ids a LongTensor ``[N, L]`` right-padded with the id
of ``pad_token`` (default ``<pad>``; 0 when the vocabulary has none). ``logits`` is ``[N, classes]``.

Output, per request: ``{"label": probability}`` for every class in index order (TorchServe's
format); with ``topk: k`` only the k most probable, most probable first. Labels from
``index_to_name.json``, else the class index as a string.

model-config.yaml, under ``handler:``: ``vocab`` (file name), ``ngrams`` (1), ``lowercase`` (true),
``unk_token``, ``pad_token``, ``input`` (offsets | padded), ``max_tokens`` (truncate; null: no
limit), ``topk`` (null: all classes).
"""
from __future__ import annotations

import os
from typing import Any

from ._common import BatchHandler, label_for, primary_output, request_payload
from ._text import load_vocab, lookup, text_of, tokenize, with_ngrams

INPUTS = ("offsets", "padded")


class TextClassifier(BatchHandler):
    handler_name = "text_classifier"

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        model_dir = context.system_properties["model_dir"]
        vocab_name = str(self.option("vocab", "vocab.json"))
        path = os.path.join(model_dir, vocab_name)
        if not os.path.isfile(path):
            raise RuntimeError(f"the text_classifier handler needs its vocabulary {vocab_name} in the archive "
                               "(--extra-files vocab.json: a JSON object of token -> id)")
        self.vocab = load_vocab(path)
        self.unk_id = self.vocab.get(str(self.option("unk_token", "<unk>")))
        self.pad_id = self.vocab.get(str(self.option("pad_token", "<pad>")), 0)
        self.ngrams = int(self.option("ngrams", 1))
        self.lowercase = bool(self.option("lowercase", True))
        self.input_mode = self.option("input", "offsets")
        if self.input_mode not in INPUTS:
            raise ValueError(f"handler.input must be one of {INPUTS}, got {self.input_mode!r}")
        max_tokens = self.option("max_tokens", None)
        self.max_tokens = int(max_tokens) if max_tokens else None
        topk = self.option("topk", None)
        self.topk = int(topk) if topk else None
        if self.ngrams < 1:
            raise ValueError("handler.ngrams must be at least 1")

    def effective_config(self) -> dict[str, Any]:
        out = super().effective_config()
        out.update(vocab_size=len(self.vocab), ngrams=self.ngrams, input=self.input_mode,
                   unk_id=self.unk_id, pad_id=self.pad_id, max_tokens=self.max_tokens, topk=self.topk)
        return out

    def token_ids(self, text: str) -> list[int]:
        ids = lookup(with_ngrams(tokenize(text, self.lowercase), self.ngrams), self.vocab, self.unk_id)
        return ids[: self.max_tokens] if self.max_tokens else ids

    def preprocess_one(self, row: Any, idx: int) -> Any:
        import torch

        return torch.tensor(self.token_ids(text_of(request_payload(row))), dtype=torch.long)

    def run(self, items: list[Any]) -> list[Any]:
        import torch

        if self.input_mode == "offsets":
            lengths = torch.tensor([len(t) for t in items], dtype=torch.long)
            offsets = torch.cumsum(lengths, 0) - lengths
            inputs: tuple[Any, ...] = (torch.cat(items).to(self.device), offsets.to(self.device))
        else:
            width = max(1, max(len(t) for t in items))
            ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
            for row, t in enumerate(items):
                ids[row, : len(t)] = t
            inputs = (ids.to(self.device),)
        outputs = self.postprocess(self.inference(*inputs))
        if len(outputs) != len(items):
            raise RuntimeError(f"the model returned {len(outputs)} rows for a batch of {len(items)}")
        return outputs

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        import torch

        logits = primary_output(data)
        if logits.dim() == 1:
            logits = logits.unsqueeze(0)
        probs = torch.softmax(logits.float(), dim=1)
        if self.topk:
            values, classes = torch.topk(probs, min(self.topk, probs.shape[1]), dim=1)
            return [{label_for(self.mapping, c): p for c, p in zip(cr, vr)}
                    for cr, vr in zip(classes.tolist(), values.tolist())]
        return [{label_for(self.mapping, c): p for c, p in enumerate(row)} for row in probs.tolist()]
