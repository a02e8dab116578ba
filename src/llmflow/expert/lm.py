"""LM scoring: next-token log-probabilities after a KV-cached prompt, for batches of token paths.

The prompt is run once; every batch of continuations reads its cache through broadcast views. A
restricted softmax (the LLMP reference's) needs only the number tokens' rows of the LM head.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmflow.expert.numbers import UNITS
from llmflow.expert.tokens import NumberTokens

def token_logprobs(logits: torch.Tensor, vocab: torch.Tensor, restricted: bool) -> torch.Tensor:
    """Log-probabilities (B, len(vocab)) of the tokens ``vocab`` from logits (B, V).

    ``restricted``: softmax over ``vocab`` only (the LLMP reference masks every other logit);
    otherwise the full-vocabulary softmax, so other tokens' mass is missing from these columns.
    """
    logits = logits.double()  # log-softmax over a large vocabulary: keep round-off negligible
    picked = logits[:, vocab]
    if restricted:
        return torch.log_softmax(picked, dim=-1)
    return picked - torch.logsumexp(logits, dim=-1, keepdim=True)


def _forward_kwargs(model, keep: int = 1) -> dict[str, Any]:
    # Only the last positions' logits are needed; skipping the LM head elsewhere matters for
    # large vocabularies (Gemma: 262k). Not every model's forward takes the argument.
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": keep} if "logits_to_keep" in params else {}


_HEAD_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _row_logits(model, hidden: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Logits of the ``vocab`` tokens only, from last hidden states (B, H): (B, len(vocab))."""
    head = model.get_output_embeddings()
    logits = hidden @ head.weight[vocab].T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[vocab]
    cap = getattr(model.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def rows_only(model) -> bool:
    """Whether the LM head may be applied to a few vocabulary rows only (restricted softmax).

    The full head costs more than Gemma-3-270M's whole transformer body (262k × 640 weights);
    a restricted softmax needs ~15 of its rows. Checked once per model against the model's own
    forward on a short input, so a model that post-processes logits some other way (a logit
    scale, say) keeps the full head.
    """
    if model not in _HEAD_OK:
        ok = False
        if getattr(model, "base_model", model) is not model and model.get_output_embeddings() is not None:
            ids = torch.arange(1, 9, device=model.device)[None]
            vocab = torch.arange(0, 64, device=model.device)
            with torch.inference_mode():
                full = model(input_ids=ids, use_cache=False).logits[:, -1, vocab]
                hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
                ok = bool(torch.allclose(_row_logits(model, hidden, vocab), full, rtol=1e-4, atol=1e-4))
        _HEAD_OK[model] = ok
    return _HEAD_OK[model]


def tail_logits(model, vocab: torch.Tensor | None, n: int, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """(KV cache, logits of the last ``n`` positions): over the full vocabulary (B, n, V), or
    over ``vocab`` only (B, n, len(vocab)) when given (see :func:`rows_only`)."""
    if vocab is None:
        out = model(**inputs, use_cache=True, **_forward_kwargs(model, n))
        return out.past_key_values, out.logits[:, -n:]
    out = model.base_model(**inputs, use_cache=True)
    return out.past_key_values, _row_logits(model, out.last_hidden_state[:, -n:], vocab)


def _last_logits(model, vocab: torch.Tensor | None, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """(KV cache, last-position logits (B, V), or (B, len(vocab)) when ``vocab`` is given)."""
    cache, logits = tail_logits(model, vocab, 1, **inputs)
    return cache, logits[:, -1]


def prefix_cache(model, prefix_ids: Sequence[int], vocab: torch.Tensor | None = None) -> tuple[Any, torch.Tensor]:
    """Run ``prefix_ids`` once: (KV cache, last-position logits (1, V), or (1, len(vocab)))."""
    ids = torch.tensor([list(prefix_ids)], device=model.device)
    return _last_logits(model, vocab, input_ids=ids)


def extend_logits(model, cache: Any, suffix_ids: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Last-position logits (B, V) of ``prefix + suffix_ids[b]`` for each row b of (B, k) ids
    (B, len(vocab)) when ``vocab`` is given).

    The prefix cache (batch 1) is shared, not copied: each layer of a shallow copy holds
    broadcast views of the prefix keys/values, and the model's cache update concatenates into
    new tensors, so the original stays untouched.
    """
    batch_cache = copy.copy(cache)
    batch_cache.layers = []
    for layer in cache.layers:
        view = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            view.keys = layer.keys.expand(suffix_ids.shape[0], -1, -1, -1)
            view.values = layer.values.expand(suffix_ids.shape[0], -1, -1, -1)
        batch_cache.layers.append(view)
    return _last_logits(model, vocab, input_ids=suffix_ids, past_key_values=batch_cache)[1]


def vocab_logprobs(logits: torch.Tensor, vocab: torch.Tensor, restricted: bool, sliced: bool) -> np.ndarray:
    """Log-probabilities (B, len(vocab)) of the ``vocab`` tokens from logits (B, V), or from
    the logits of the ``vocab`` rows only (B, len(vocab)) when ``sliced`` (restricted softmax)."""
    if sliced:
        return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()
    return token_logprobs(logits, vocab, restricted).cpu().numpy()


class Scorer:
    """Next-token log-probabilities over a vocabulary after ``shared + path``, for many paths."""

    def __init__(self, model, shared_ids: Sequence[int], vocab: Sequence[int], restricted: bool,
                 batch_size: int) -> None:
        self.model, self.restricted, self.batch_size = model, restricted, batch_size
        self.vocab = torch.tensor(list(vocab), device=model.device)
        self.column = {int(t): j for j, t in enumerate(vocab)}
        # A restricted softmax needs only the vocab rows of the LM head.
        self.rows = self.vocab if restricted and rows_only(model) else None
        self.cache, root = prefix_cache(model, shared_ids, self.rows)
        self.root = self._logprobs(root)[0]
        self.n_positions = len(shared_ids)

    def _logprobs(self, logits: torch.Tensor) -> np.ndarray:
        return vocab_logprobs(logits, self.vocab, self.restricted, self.rows is not None)

    def __call__(self, paths: Sequence[Sequence[int]]) -> np.ndarray:
        """Rows (len(paths), len(vocab)); paths of equal length are batched without padding."""
        out = np.empty((len(paths), len(self.vocab)))
        groups: dict[int, list[int]] = {}
        for i, path in enumerate(paths):
            groups.setdefault(len(path), []).append(i)
        for length, members in groups.items():
            if length == 0:
                out[members] = self.root
                continue
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                ids = torch.tensor([list(paths[i]) for i in batch], device=self.model.device)
                out[batch] = self._logprobs(extend_logits(self.model, self.cache, ids, self.rows))
                self.n_positions += ids.numel()
        return out


def first_unit_logprobs(score: Scorer, tokens: NumberTokens) -> dict[str, float]:
    """log P(first unit = u) for each digit and ``-``: the product along u's lead path."""
    paths = sorted({ids[:i] for ids in tokens.leads.values() for i in range(len(ids))}, key=len)
    rows = dict(zip(paths, score(paths)))
    return {u: float(sum(rows[ids[:i]][score.column[t]] for i, t in enumerate(ids)))
            for u, ids in tokens.leads.items()}


def next_unit_logprobs(score: Scorer, tokens: NumberTokens, prefixes: Sequence[str],
                       allowed: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """log P(next unit = u | prefix) for the ``allowed`` units of each non-empty prefix."""
    rows = score([tokens.ids(s) for s in prefixes])
    return [{u: float(row[score.column[tokens.unit_ids[UNITS.index(u)]]]) for u in units}
            for row, units in zip(rows, allowed)]
