"""LM scoring: next-token log-probabilities after a KV-cached prompt, for batches of token paths.

The prompt is run once; every batch of continuations reads its cache through broadcast views. A
restricted softmax (the LLMP reference's) needs only the number tokens' rows of the LM head.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

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


def vocab_logprobs(logits: torch.Tensor, vocab: torch.Tensor, restricted: bool, sliced: bool) -> np.ndarray:
    """Log-probabilities (B, len(vocab)) of the ``vocab`` tokens from logits (B, V), or from
    the logits of the ``vocab`` rows only (B, len(vocab)) when ``sliced`` (restricted softmax)."""
    if sliced:
        return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()
    return token_logprobs(logits, vocab, restricted).cpu().numpy()


class TokenTree:
    """KV cache of a prompt and of every token path expanded after it, in one sequence.

    Tree attention: the prompt (``shared_ids``, P tokens) is run once; each :meth:`extend` call
    appends one token for each of B nodes to the same batch-1 cache, and an explicit mask lets
    node i attend to the prompt, its ancestors and itself only, at the position it would have
    in its own sequence (P + depth - 1). A node's logits are therefore exactly those of
    ``prompt + its token path`` run alone, while the prompt's keys and values are never
    copied (copying them once per row cost more than the rows' own compute). Sliding-window
    layers (Gemma-3) get the window applied by position in their own mask.

    Nodes are numbered 0, 1, ... in the order they were added; ``None`` is the prompt's end.
    ``root``: log-probabilities (len(vocab),) of the first token after the prompt.
    """

    def __init__(self, model, shared_ids: Sequence[int], vocab: Sequence[int], restricted: bool) -> None:
        from transformers import DynamicCache

        self.model, self.restricted = model, restricted
        self.vocab = torch.tensor(list(vocab), device=model.device)
        self.column = {int(t): j for j, t in enumerate(vocab)}
        # A restricted softmax needs only the vocab rows of the LM head.
        self.rows = self.vocab if restricted and rows_only(model) else None
        config = getattr(model, "config", None)
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        types = list(getattr(config, "layer_types", None) or [])
        self.window = getattr(config, "sliding_window", None) if "sliding_attention" in types else None
        self.n_prompt = len(shared_ids)
        self.cache = DynamicCache()  # no config: plain layers, so no sliding layer drops prompt keys
        self.positions: list[int] = []  # of each node
        self.ancestors: list[list[int]] = []  # node slots each node attends to (itself last)
        ids = torch.tensor([list(shared_ids)], device=model.device)
        self.root = self._logprobs(self._forward(input_ids=ids)[-1:])[0]
        self.n_positions = self.n_prompt

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """Logits (B, V) or vocab-row logits (B, len(vocab)) at every input position of row 0."""
        if self.rows is None:
            return self.model(**inputs, past_key_values=self.cache, use_cache=True).logits[0]
        hidden = self.model.base_model(**inputs, past_key_values=self.cache, use_cache=True).last_hidden_state
        return _row_logits(self.model, hidden[0], self.rows)

    def _logprobs(self, logits: torch.Tensor) -> np.ndarray:
        return vocab_logprobs(logits, self.vocab, self.restricted, self.rows is not None)

    def extend(self, parents: Sequence[int | None], tokens: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """Add node ``tokens[i]`` under ``parents[i]``: (new node ids, log-probs (B, len(vocab))
        of the token after each new node)."""
        n_old, b = len(self.positions), len(tokens)
        device = self.model.device
        new = list(range(n_old, n_old + b))
        pos = []
        for node, parent in zip(new, parents):
            up = [] if parent is None else self.ancestors[parent]
            self.ancestors.append([*up, node])
            pos.append(self.n_prompt if parent is None else self.positions[parent] + 1)
        self.positions.extend(pos)
        kv = self.n_prompt + n_old + b
        allowed = torch.zeros(b, kv, dtype=torch.bool, device=device)
        allowed[:, : self.n_prompt] = True
        for i, node in enumerate(new):
            allowed[i, [self.n_prompt + a for a in self.ancestors[node]]] = True
        q_pos = torch.tensor(pos, device=device)
        k_pos = torch.cat([torch.arange(self.n_prompt, device=device),
                           torch.tensor(self.positions, device=device, dtype=torch.long)])
        dtype = next(self.model.parameters()).dtype

        def additive(ok: torch.Tensor) -> torch.Tensor:  # eager and SDPA attention both take it
            mask = torch.zeros(ok.shape, dtype=dtype, device=device)
            return mask.masked_fill(~ok, torch.finfo(dtype).min)[None, None]

        mask: Any = additive(allowed)
        if self.window is not None:  # a model with sliding layers takes one mask per layer type
            mask = {"full_attention": mask,
                    "sliding_attention": additive(allowed & (k_pos[None] > q_pos[:, None] - self.window))}
        logits = self._forward(input_ids=torch.tensor([list(tokens)], device=device),
                               position_ids=q_pos[None], attention_mask=mask)
        self.n_positions += b
        return new, self._logprobs(logits)
