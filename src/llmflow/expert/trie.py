"""The digit trie: the binned distribution of the number the LLM writes after a prompt.

Every number string (sign, integer digits, point, ``decimals`` decimals, terminator) is a path
in a trie of *units*; a prefix's probability is the product of its units' probabilities, read
off one forward of the prefix's last token. The search spends a budget of expanded prefixes
(``max_nodes``) where the mass is, best first:

1. prefixes whose integer part is not complete (the magnitude: ``1`` may become ``1.``, ``12.``
   or ``123.``), by mass;
2. then prefixes with a complete integer part that still lack decimals (``12.``, ``12.3``), by
   mass;
3. last, full-resolution prefixes that only await the terminator (``12.34``): expanding them
   measures how much of their mass goes to invalid continuations, not where it lies.

No mass is dropped when the budget or ``threshold`` stops the search: a prefix that is not
expanded is a coarse bin carrying its exact probability (``12.`` is [12, 13)); one without its
integer part is a union of intervals, one per possible count of integer digits, each carrying an
equal share of the prefix's mass (``1`` with at most 3 integer digits: [1, 2), [10, 20),
[100, 200), a third each) — the LLM has not said which, and that share is reported as
``mass_union``. Mass on tokens that cannot continue a number (``lost_invalid``) is the model's
own and is measured wherever a prefix is expanded.

All prefixes live in one :class:`~llmflow.expert.lm.TokenTree` (the prompt's KV cache plus one
token per expanded prefix, tree attention), so each batch of prefixes costs one forward of as
many tokens and the prompt is never copied.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from llmflow.expert.lm import TokenTree
from llmflow.expert.numbers import TERM, UNITS, allowed_units, prefix_intervals
from llmflow.expert.tokens import number_tokens


@dataclass
class TrieResult:
    """What the trie found for one number, in the LLM's units: its bins (the expert stage turns
    them into a :class:`llmflow.binned.BinnedDensity` store) with their strings and diagnostics.

    Arrays have shape (n_bins,), sorted by ``lower``. ``strings``: the number strings (coarse
    bins end mid-number, e.g. ``19.``); ``logp``: natural-log probability, including the lead
    and, for complete bins, the terminator; ``complete``: False for coarse bins.
    ``n_positions``: token positions evaluated by the model (prompt included). ``mass_union``:
    mass of prefixes left without their integer part, spread over one bin per possible digit
    count (see the module). ``n_expanded``: prefixes expanded. ``truth_logp``: log-probability
    of the string asked for with ``truth`` (lead, digits and terminator), NaN if none.
    """

    strings: list[str]
    lower: np.ndarray
    upper: np.ndarray
    logp: np.ndarray
    complete: np.ndarray
    lost_pruned: float
    lost_invalid: float
    n_positions: int
    mass_union: float = 0.0
    n_expanded: int = 0
    truth_logp: float = math.nan

    @property
    def lost_mass(self) -> float:
        return self.lost_pruned + self.lost_invalid

    @property
    def widths(self) -> np.ndarray:
        return self.upper - self.lower


_INT, _DECIMALS, _TERMINATOR = 0, 1, 2  # expansion classes, in the order the search serves them


def _expansion_class(s: str, decimals: int) -> int:
    body = s[1:] if s.startswith("-") else s
    if "." not in body and (decimals > 0 or not body):
        return _INT
    return _DECIMALS if len(body.partition(".")[2]) < decimals else _TERMINATOR


def binned_distribution(
    model,
    tokenizer,
    prompt: str,
    decimals: int,
    *,
    lead: str = "",
    threshold: float = 1e-6,
    max_nodes: int | None = None,
    restricted: bool = True,
    terminator: str = "\n",
    max_int_digits: int = 6,
    allow_negative: bool = True,
    coarse: bool = True,
    rounding: str = "truncate",
    batch_size: int = 64,
    truth: str | None = None,
) -> TrieResult:
    """Binned distribution of the number the LLM writes after ``prompt`` (see the module).

    ``model``/``tokenizer``: a loaded Hugging Face causal LM (eval mode) and its tokenizer,
    which must split numbers into one token per character. ``prompt`` ends where the number's
    text starts (``"...\\n3.00,"``); ``lead`` is written before every number and scored with it
    (``" "``: the space after the comma, in the token context it has in the context lines).
    A number is ``[-]`` + integer digits (no leading zeros, at most ``max_int_digits``) +
    (``.`` + exactly ``decimals`` digits if ``decimals`` > 0) + ``terminator``. Its log-prob is
    the sum of the log-probs of the tokens of ``lead + number + terminator``, exactly as when
    ``prompt + lead + number + terminator`` is tokenized and scored as one string (softmax over
    number tokens only if ``restricted``).

    Search: at most ``max_nodes`` prefixes are expanded (None: no budget), ``batch_size`` per
    forward, none with probability below ``threshold`` (0: every one, only for tiny ranges).
    With ``coarse`` every prefix left is a coarse bin (or a union of bins, see the module);
    without it, its mass is ``lost_pruned``. ``truth``: a number string (no lead, no
    terminator) whose exact log-probability is returned as ``truth_logp`` (its prefixes are
    scored without changing the bins).

    Returns ``TrieResult`` (edges in the prompt's number units, see ``prefix_intervals``), sorted by
    edge, with ``exp(logp).sum() + lost_pruned + lost_invalid == 1``.
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    tokens = number_tokens(tokenizer, prompt, lead, terminator)
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    budget = math.inf if max_nodes is None else max_nodes
    bins: list[tuple[str, float, bool]] = []  # (string, logp, complete)
    lost_pruned = lost_invalid = 0.0
    rows: dict[str, np.ndarray] = {}  # next-unit log-probs (len(vocab),) of each expanded prefix

    with torch.inference_mode():
        tree = TokenTree(model, tokens.shared_ids, tokens.vocab, restricted)
        col = tree.column
        node_of: dict[tuple[int, ...], int | None] = {(): None}

        def feed(paths: list[tuple[int, ...]]) -> list[np.ndarray]:
            """Add each path's last token (its parent path already fed); their next-token rows."""
            out: list[np.ndarray] = []
            for i in range(0, len(paths), batch_size):
                chunk = paths[i:i + batch_size]
                ids, lp = tree.extend([node_of[p[:-1]] for p in chunk], [p[-1] for p in chunk])
                node_of.update(zip(chunk, ids))
                out.extend(lp)
            return out

        # The first unit: the products along the lead paths (often two tokens, 'Ġ' '3').
        row_of: dict[tuple[int, ...], np.ndarray] = {(): tree.root}
        inner = sorted({ids[:i] for ids in tokens.leads.values() for i in range(1, len(ids))}, key=len)
        for depth in sorted({len(p) for p in inner}):
            level = [p for p in inner if len(p) == depth]
            row_of.update(zip(level, feed(level)))

        def lead_logp(u: str) -> float:
            ids = tokens.leads[u]
            return float(sum(row_of[ids[:i]][col[t]] for i, t in enumerate(ids)))

        def unit_lp(s: str, u: str) -> float:
            return lead_logp(u) if not s else float(rows[s][col[tokens.unit_ids[UNITS.index(u)]]])

        frontier: list[tuple[int, float, str]] = []  # heap of (class, -logp, prefix)
        left: list[tuple[str, float]] = []  # prefixes below the threshold: never expanded

        def children(s: str, lp: float) -> None:
            nonlocal lost_invalid
            kept = 0.0
            for u in allowed_units(s, decimals, max_int_digits, allow_negative):
                child = lp + unit_lp(s, u)
                kept += math.exp(child)
                if child == -math.inf:  # no mass: no bin
                    continue
                if u == TERM:
                    bins.append((s, child, True))
                elif child < log_threshold:
                    left.append((s + u, child))
                else:
                    heapq.heappush(frontier, (_expansion_class(s + u, decimals), -child, s + u))
            lost_invalid += max(math.exp(lp) - kept, 0.0)

        children("", 0.0)
        n_expanded = 0
        while frontier and n_expanded < budget:
            batch = []
            while frontier and len(batch) < batch_size and n_expanded + len(batch) < budget:
                batch.append(heapq.heappop(frontier))
            rows.update(zip([s for *_, s in batch], feed([tuple(tokens.ids(s)) for *_, s in batch])))
            n_expanded += len(batch)
            for _, neg_lp, s in batch:
                children(s, -neg_lp)

        truth_logp = math.nan
        if truth is not None:  # score the truth's own string; its prefixes add no bins
            units = [*truth, TERM]
            for k in range(1, len(units)):
                s = truth[:k]
                if s not in rows:
                    rows[s] = feed([tuple(tokens.ids(s))])[0]
            truth_logp = sum(unit_lp(truth[:k], u) for k, u in enumerate(units))
        n_positions = tree.n_positions

    mass_union = 0.0
    strings, lower, upper, logps, complete = [], [], [], [], []
    for s, lp in [*left, *((s, -neg_lp) for _, neg_lp, s in frontier)]:
        if coarse:
            bins.append((s, lp, False))
        else:
            lost_pruned += math.exp(lp)
    for s, lp, done in bins:
        pieces = prefix_intervals(s, decimals, max_int_digits, rounding)
        if len(pieces) > 1:
            mass_union += math.exp(lp)
        for lo, hi in pieces:
            strings.append(s), lower.append(lo), upper.append(hi)
            logps.append(lp - math.log(len(pieces))), complete.append(done)
    order = np.argsort(np.asarray(lower, dtype=float), kind="stable")
    return TrieResult(
        strings=[strings[i] for i in order],
        lower=np.asarray(lower, dtype=float)[order],
        upper=np.asarray(upper, dtype=float)[order],
        logp=np.asarray(logps, dtype=float)[order],
        complete=np.asarray(complete, dtype=bool)[order],
        lost_pruned=lost_pruned,
        lost_invalid=lost_invalid,
        n_positions=n_positions,
        mass_union=mass_union,
        n_expanded=n_expanded,
        truth_logp=truth_logp,
    )
