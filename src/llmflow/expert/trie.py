"""The digit trie: every bin of the number the LLM writes after a prompt, with its probability.

The prompt is run once and its KV cache shared; each trie level is one batched forward of the
live prefixes; prefixes whose probability is below ``threshold`` are not refined. A pruned prefix
that already has its integer part (``19.`` or ``19.3``) stays a coarser bin ([19, 20) or
[19.3, 19.4)) carrying its exact probability; pruned mass without an interval (``19`` could
still become 190) is reported as ``lost_pruned``. Mass on tokens that cannot continue a
number is ``lost_invalid``. complete bins + coarse bins + lost mass = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from llmflow.expert.lm import Scorer, first_unit_logprobs, next_unit_logprobs
from llmflow.expert.numbers import TERM, allowed_units, number_interval
from llmflow.expert.tokens import number_tokens

@dataclass
class Bins:
    """Binned distribution of one number, in the LLM's units.

    Arrays have shape (n_bins,), sorted by ``lower``. ``strings``: the number strings (coarse
    bins end mid-number, e.g. ``19.``); ``logp``: natural-log probability, including the lead
    and, for complete bins, the terminator; ``complete``: False for coarse bins.
    ``n_positions``: token positions evaluated by the model (prompt included).
    """

    strings: list[str]
    lower: np.ndarray
    upper: np.ndarray
    logp: np.ndarray
    complete: np.ndarray
    lost_pruned: float
    lost_invalid: float
    n_positions: int

    @property
    def lost_mass(self) -> float:
        return self.lost_pruned + self.lost_invalid

    def log_density(self, y: np.ndarray) -> np.ndarray:
        """log q(y) = log(sum of P_b / width_b over bins holding y); -inf outside every bin."""
        y = np.asarray(y, dtype=float)
        inside = (y[..., None] >= self.lower) & (y[..., None] < self.upper)
        dens = np.where(inside, np.exp(self.logp) / (self.upper - self.lower), 0.0).sum(-1)
        with np.errstate(divide="ignore"):
            return np.log(dens)



def binned_distribution(
    model,
    tokenizer,
    prompt: str,
    decimals: int,
    *,
    lead: str = "",
    threshold: float = 1e-6,
    restricted: bool = True,
    terminator: str = "\n",
    max_int_digits: int = 6,
    allow_negative: bool = True,
    coarse: bool = True,
    rounding: str = "truncate",
    batch_size: int = 64,
) -> Bins:
    """Every bin of the number the LLM writes after ``prompt``, with its log-probability.

    binned_distribution(model, tokenizer, prompt: str, decimals: int, *, lead="",
        threshold=1e-6, restricted=True, terminator="\\n", max_int_digits=6,
        allow_negative=True, coarse=True, rounding="truncate", batch_size=64) -> Bins

    ``model``/``tokenizer``: a loaded Hugging Face causal LM (eval mode) and its tokenizer,
    which must split numbers into one token per character. ``prompt`` ends where the number's
    text starts (``"...\\n3.00,"``); ``lead`` is written before every number and scored with it
    (``" "``: the space after the comma, in the token context it has in the context lines).
    A number is ``[-]`` + integer digits (no leading zeros, at most ``max_int_digits``) +
    (``.`` + exactly ``decimals`` digits if ``decimals`` > 0) + ``terminator``. Its log-prob is
    the sum of the log-probs of the tokens of ``lead + number + terminator``, exactly as when
    ``prompt + lead + number + terminator`` is tokenized and scored as one string (softmax over
    number tokens only if ``restricted``). Prefixes with probability < ``threshold`` are not
    refined: with ``coarse`` those holding their whole integer part become coarser bins, the
    rest count as ``lost_pruned``; mass on tokens that cannot continue a number is
    ``lost_invalid``. ``threshold=0`` enumerates every number (only for tiny ranges).
    Returns ``Bins`` (edges in the prompt's number units, see ``number_interval``) with
    ``exp(logp).sum() + lost_pruned + lost_invalid == 1``.
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    tokens = number_tokens(tokenizer, prompt, lead, terminator)
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    strings: list[str] = []
    logps: list[float] = []
    complete: list[bool] = []
    lost_pruned = lost_invalid = 0.0

    with torch.inference_mode():
        score = Scorer(model, tokens.shared_ids, tokens.vocab, restricted, batch_size)
        first = first_unit_logprobs(score, tokens)
        level: list[tuple[str, float]] = [("", 0.0)]
        while level:
            if level[0][0]:
                unit_lp = next_unit_logprobs(
                    score, tokens, [s for s, _ in level],
                    [allowed_units(s, decimals, max_int_digits, allow_negative) for s, _ in level])
            else:  # the root: all numbers start here
                unit_lp = [{u: first[u] for u in allowed_units("", decimals, max_int_digits,
                                                               allow_negative)}]
            nxt: list[tuple[str, float]] = []
            for (s, lp), children in zip(level, unit_lp):
                kept = 0.0
                for u, ulp in children.items():
                    child_lp = lp + float(ulp)
                    kept += math.exp(child_lp)
                    if u == TERM:
                        strings.append(s), logps.append(child_lp), complete.append(True)
                    elif child_lp >= log_threshold:
                        nxt.append((s + u, child_lp))
                    elif coarse and "." in s + u:
                        strings.append(s + u), logps.append(child_lp), complete.append(False)
                    else:
                        lost_pruned += math.exp(child_lp)
                lost_invalid += max(math.exp(lp) - kept, 0.0)
            level = nxt
        n_positions = score.n_positions

    edges = np.array([number_interval(s, decimals, rounding) for s in strings]).reshape(-1, 2)
    order = np.argsort(edges[:, 0], kind="stable")
    return Bins(
        strings=[strings[i] for i in order],
        lower=edges[order, 0],
        upper=edges[order, 1],
        logp=np.asarray(logps, dtype=float)[order],
        complete=np.asarray(complete, dtype=bool)[order],
        lost_pruned=lost_pruned,
        lost_invalid=lost_invalid,
        n_positions=n_positions,
    )

