"""Brute-force reference scoring for the expert's tests and benches: each string on its own."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llmflow.expert.lm import _forward_kwargs
from llmflow.expert.tokens import _encode


def _after_prompt(tokenizer, prompt: str, own: list[int], s: str) -> list[int]:
    """Tokens of ``s`` after the prompt's own tokens ``own``: those of ``prompt + s`` after
    ``own``, except that a token merged across the boundary is split there."""
    full = _encode(tokenizer, prompt + s)
    k = 0
    while k < min(len(own), len(full)) and own[k] == full[k]:
        k += 1
    if k == len(own):
        return full[k:]
    merged, tail = tokenizer.decode(full[k:k + 1]), tokenizer.decode(own[k:])
    if not merged.startswith(tail) or len(merged) == len(tail):
        raise ValueError(f"{s!r} changes the prompt's tokens before its last one")
    return _encode_plain(tokenizer, merged[len(tail):]) + full[k + 1:]


def _encode_plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_strings(
    model,
    tokenizer,
    prompt: str,
    strings: Sequence[str],
    *,
    restrict_to: Sequence[int] | None = None,
    batch_size: int = 1,
) -> tuple[np.ndarray, int]:
    """Brute force: log-probability of each continuation ``s`` of ``prompt``, each on its own.

    Each ``prompt + s`` is tokenized as one string and run as its own sequence (no shared
    cache); every token after the prompt's own tokens (the prompt tokenized alone) is scored,
    with the softmax over ``restrict_to`` token ids if given. Where one token merges the
    prompt's last characters with the start of ``s`` (SmolLM2's ``,-``), the sequence is the
    prompt's own tokens, then the merged token's part in ``s`` tokenized alone, then the rest
    (the definition of ``expert.tokens``, written here without offset mappings). Equal-length
    sequences are batched (rows are independent). Returns (logp (n,), token positions
    evaluated).
    """
    restrict = torch.tensor(list(restrict_to), device=model.device) if restrict_to else None
    own = _encode(tokenizer, prompt)
    start = len(own)
    encoded = [own + _after_prompt(tokenizer, prompt, own, s) for s in strings]
    out = np.empty(len(strings))
    n_positions = 0
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    with torch.inference_mode():
        for length, members in groups.items():
            n = length - start
            for first in range(0, len(members), batch_size):
                batch = members[first:first + batch_size]
                ids = torch.tensor([encoded[i] for i in batch], device=model.device)
                keep = {"logits_to_keep": n + 1} if _forward_kwargs(model) else {}
                logits = model(input_ids=ids, use_cache=False, **keep).logits
                logits = logits[:, -(n + 1):-1].double()  # position t predicts token t + 1
                target = ids[:, start:]
                if restrict is not None:
                    if not torch.isin(target, restrict).all():
                        raise ValueError("a scored token is outside restrict_to")
                    lp = torch.log_softmax(logits[..., restrict], -1)
                    col = (target[..., None] == restrict).float().argmax(-1)
                    lp = lp.gather(-1, col[..., None])[..., 0]
                else:
                    lp = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
                out[batch] = lp.double().sum(-1).cpu().numpy()
                n_positions += ids.numel()
    return out, n_positions

