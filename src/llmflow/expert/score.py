"""The exact I-LLMP score of one given number string after a prompt (a truth's probability)."""

from __future__ import annotations

import re

import numpy as np
import torch

from llmflow.expert.lm import rows_only, tail_logits, vocab_logprobs
from llmflow.expert.numbers import TERM
from llmflow.expert.tokens import NumberTokens, number_tokens

_NUMBER_STRING = re.compile(r"-?\d+(?:\.\d+)?")


def number_token_logprobs(
    model, tokenizer, prompt: str, s: str, *, lead: str = "", terminator: str = "\n",
    restricted: bool = True, tokens: NumberTokens | None = None,
) -> tuple[list[int], np.ndarray]:
    """(token ids, log-probabilities (n_tokens,)) of ``lead + s + terminator`` after ``prompt``.

    ``s`` is a complete number string (``-12.34``, as ``format_number`` writes it); its tokens
    are those the digit trie walks (:func:`~llmflow.expert.tokens.number_tokens`: the prompt's
    own tokens are never scored), and each log-probability (natural log) is the trie's: the
    softmax over the number tokens ``tokens.vocab`` when ``restricted``, else over the whole
    vocabulary. One forward of prompt and number, no cache. ``tokens``: the prompt's
    ``number_tokens`` when already at hand. Raises ValueError for a malformed ``s`` or a prompt
    without tokens.
    """
    if not _NUMBER_STRING.fullmatch(s):
        raise ValueError(f"not a number string: {s!r}")
    tokens = tokens if tokens is not None else number_tokens(tokenizer, prompt, lead, terminator)
    if not tokens.shared_ids:
        raise ValueError("an empty prompt gives the first token nothing to be predicted from")
    path = tokens.ids(s + TERM)
    vocab = torch.tensor(tokens.vocab, device=model.device)
    rows = vocab if restricted and rows_only(model) else None  # the LM head's number rows only
    ids = torch.tensor([[*tokens.shared_ids, *path[:-1]]], device=model.device)
    with torch.inference_mode():  # position t predicts token t + 1: the last len(path) positions
        _, logits = tail_logits(model, rows, len(path), input_ids=ids)
    lp = vocab_logprobs(logits[0], vocab, restricted, rows is not None)
    column = {t: j for j, t in enumerate(tokens.vocab)}
    return path, lp[np.arange(len(path)), [column[t] for t in path]]


def number_logprob(
    model, tokenizer, prompt: str, s: str, *, lead: str = "", terminator: str = "\n",
    restricted: bool = True, tokens: NumberTokens | None = None,
) -> float:
    """log P(``lead + s + terminator`` | ``prompt``), natural log: the probability the digit trie
    gives the complete bin of ``s`` (see :func:`number_token_logprobs`). A density in the
    prompt's number units is this minus log(bin width), the width 10^-decimals of ``s``."""
    return float(number_token_logprobs(model, tokenizer, prompt, s, lead=lead, terminator=terminator,
                                       restricted=restricted, tokens=tokens)[1].sum())
