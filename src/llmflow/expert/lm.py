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
    """KV cache of R prompts and of every token path expanded after each, in one batch.

    Tree attention: the prompts (``prompts[r]``, P_r tokens, right-padded to the longest) run
    once, one per batch row; each :meth:`extend` call appends to every row the tokens of that
    row's new nodes (padded to the call's widest row), and an explicit mask lets node i of row
    r attend to prompt r, its ancestors and itself only, at the position it would have in its
    own sequence (P_r + depth - 1). A node's logits are therefore exactly those of ``prompt +
    its token path`` run alone, while no prompt's keys and values are ever copied; the rows
    share each forward, so the model's weights are read once per call for all R prompts (on a
    CPU a forward of a few tokens costs about as much as one of one token). Sliding-window
    layers (Gemma-3) get the window applied by position in their own mask.

    Nodes are numbered 0, 1, ... per row in the order they were added (row r has
    ``len(positions[r])``); ``None`` is the prompt's end. ``root``: log-probabilities (R, len(vocab)) of the first token after each prompt;
    ``n_positions[r]``: token positions row r has evaluated (its prompt and nodes, no padding).
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], vocab: Sequence[int], restricted: bool) -> None:
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
        # The bookkeeping (which slots each node sees, their positions) stays on the CPU; only a
        # forward's inputs and mask go to the model's device.
        device = model.device
        self.n_prompt = [len(p) for p in prompts]
        width = max(self.n_prompt)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        self.prompt_slots = torch.zeros(len(prompts), width, dtype=torch.bool)  # every node sees these
        for r, p in enumerate(prompts):
            ids[r, :len(p)] = torch.tensor(list(p))
            self.prompt_slots[r, :len(p)] = True
        self.k_pos = torch.arange(width).expand(len(prompts), width)  # position of each slot
        self.cache = DynamicCache()  # no config: plain layers, so no sliding layer drops prompt keys
        self.positions: list[list[int]] = [[] for _ in prompts]  # position of each node, per row
        self.ancestors: list[list[list[int]]] = [[] for _ in prompts]  # slots each node attends to (itself last)
        mask = None if self.prompt_slots.all() else self.prompt_slots.long().to(device)
        logits = self._forward(input_ids=ids.to(device), **({} if mask is None else {"attention_mask": mask}))
        last = torch.tensor(self.n_prompt, device=device) - 1
        self.root = self._logprobs(logits[torch.arange(len(prompts), device=device), last])
        self.n_positions = list(self.n_prompt)

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """Logits (R, n, V) or vocab-row logits (R, n, len(vocab)) at every input position."""
        if self.rows is None:
            return self.model(**inputs, past_key_values=self.cache, use_cache=True).logits
        hidden = self.model.base_model(**inputs, past_key_values=self.cache, use_cache=True).last_hidden_state
        return _row_logits(self.model, hidden, self.rows)

    def _logprobs(self, logits: torch.Tensor) -> np.ndarray:
        return vocab_logprobs(logits, self.vocab, self.restricted, self.rows is not None)

    def extend(self, parents: Sequence[Sequence[int | None]], tokens: Sequence[Sequence[int]]
               ) -> list[tuple[list[int], np.ndarray]]:
        """Add, in each row r, node ``tokens[r][i]`` under ``parents[r][i]`` (a node of an earlier
        call or one listed before it). Per row: (new node ids, log-probs (len(tokens[r]),
        len(vocab)) of the token after each new node)."""
        n_rows, device = len(tokens), self.model.device
        width = max(len(t) for t in tokens)
        if width == 0:
            return [([], np.zeros((0, len(self.vocab)))) for _ in tokens]
        base = self.k_pos.shape[1]  # the slots this call writes: base .. base + width - 1
        ids = torch.zeros(n_rows, width, dtype=torch.long)
        q_pos = torch.zeros(n_rows, width, dtype=torch.long)
        allowed = torch.zeros(n_rows, width, base + width, dtype=torch.bool)
        allowed[:, :, :base] = self.prompt_slots[:, None, :]
        new: list[list[int]] = []
        for r, (row_parents, row_tokens) in enumerate(zip(parents, tokens)):
            ids[r, :len(row_tokens)] = torch.tensor(list(row_tokens), dtype=torch.long)
            new.append(list(range(len(self.positions[r]), len(self.positions[r]) + len(row_tokens))))
            for i, parent in enumerate(row_parents):
                up = [] if parent is None else self.ancestors[r][parent]
                self.ancestors[r].append([*up, base + i])
                self.positions[r].append(self.n_prompt[r] if parent is None else self.positions[r][parent] + 1)
                q_pos[r, i] = self.positions[r][-1]
                allowed[r, i, self.ancestors[r][-1]] = True
            for i in range(len(row_tokens), width):  # padding attends to itself only; never read
                allowed[r, i, base + i] = True
            self.n_positions[r] += len(row_tokens)
        self.prompt_slots = torch.cat([self.prompt_slots, torch.zeros_like(ids, dtype=torch.bool)], dim=1)
        self.k_pos = torch.cat([self.k_pos, q_pos], dim=1)
        dtype = next(self.model.parameters()).dtype

        def additive(ok: torch.Tensor) -> torch.Tensor:  # eager and SDPA attention both take it
            mask = torch.zeros(ok.shape, dtype=dtype)
            return mask.masked_fill(~ok, torch.finfo(dtype).min)[:, None].to(device)

        mask: Any = additive(allowed)
        if self.window is not None:  # a model with sliding layers takes one mask per layer type
            near = self.k_pos[:, None, :] > q_pos[:, :, None] - self.window
            mask = {"full_attention": mask, "sliding_attention": additive(allowed & near)}
        logits = self._forward(input_ids=ids.to(device), position_ids=q_pos.to(device), attention_mask=mask)
        lp = self._logprobs(logits.reshape(n_rows * width, -1)).reshape(n_rows, width, -1)
        return [(new[r], lp[r, :len(t)]) for r, t in enumerate(tokens)]
