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
many tokens and the prompt is never copied. The searches of several prompts (a task's targets)
run side by side in one batched tree (:func:`binned_distributions`): on a CPU a forward of a
few tokens costs about what one of a few dozen does (the weights are read once), so each step
serves every prompt.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmflow.expert.lm import TokenTree
from llmflow.expert.numbers import TERM, UNITS, allowed_units, prefix_intervals
from llmflow.expert.tokens import NumberTokens, number_tokens


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


def binned_distribution(model, tokenizer, prompt: str, decimals: int, *, truth: str | None = None,
                        **options: Any) -> TrieResult:
    """Binned distribution of the number the LLM writes after ``prompt`` (see the module).

    ``model``/``tokenizer``: a loaded Hugging Face causal LM (eval mode) and its tokenizer,
    which must split numbers into one token per character. ``prompt`` ends where the number's
    text starts (``"...\\n3.00,"``). ``options`` (keyword arguments of
    :func:`binned_distributions`, defaults in brackets): ``lead`` [""] is written before every
    number and scored with it (``" "``: the space after the comma, in the token context it has
    in the context lines). A number is ``[-]`` (``allow_negative`` [True]) + integer digits (no
    leading zeros, at most ``max_int_digits`` [6]) + (``.`` + exactly ``decimals`` digits if
    ``decimals`` > 0) + ``terminator`` ["\\n"]. Its log-prob is the sum of the log-probs of the
    tokens of ``lead + number + terminator``, exactly as when ``prompt + lead + number +
    terminator`` is tokenized and scored as one string (softmax over number tokens only if
    ``restricted`` [True]).

    Search: at most ``max_nodes`` [None: no budget] prefixes are expanded, ``batch_size`` [64]
    per forward, none with probability below ``threshold`` [1e-6] (0: every one, only for tiny
    ranges). With ``coarse`` [True] every prefix left is a coarse bin (or a union of bins, see
    the module); without it, its mass is ``lost_pruned``. ``rounding`` ["truncate"]: how a bin's
    string maps to its interval (``prefix_intervals``). ``truth``: a number string (no lead, no
    terminator) whose exact log-probability is returned as ``truth_logp`` (its prefixes are
    scored without changing the bins).

    Returns ``TrieResult`` (edges in the prompt's number units, see ``prefix_intervals``), sorted by
    edge, with ``exp(logp).sum() + lost_pruned + lost_invalid == 1``. Several prompts at once:
    :func:`binned_distributions`.
    """
    return binned_distributions(model, tokenizer, [prompt], decimals, truths=[truth], **options)[0]


def binned_distributions(
    model,
    tokenizer,
    prompts: Sequence[str],
    decimals: int,
    *,
    truths: Sequence[str | None] | None = None,
    max_int_digits: int | Sequence[int] = 6,
    prompts_per_forward: int | None = None,
    lead: str = "",
    terminator: str = "\n",
    restricted: bool = True,
    done: Callable[[], Any] | None = None,
    **search: Any,
) -> list[TrieResult]:
    """:func:`binned_distribution` of each of ``prompts`` (``truths[i]`` scored after prompt i,
    at most ``max_int_digits[i]`` integer digits, or one count for all), the searches run side
    by side: up to ``prompts_per_forward`` prompts (None: all) share one batched
    :class:`~llmflow.expert.lm.TokenTree`, and each forward extends every one of their tries,
    so the model's weights are read once per step for all of them. Each result is the one its
    prompt gets alone (the rows of a batch do not see each other). ``search``: the search's
    settings (``threshold``, ``max_nodes``, ``allow_negative``, ``coarse``, ``rounding``,
    ``batch_size``; their meaning and defaults: :func:`binned_distribution`). ``done``: called
    as each search finishes."""
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    truths = list(truths) if truths is not None else [None] * len(prompts)
    digits = [max_int_digits] * len(prompts) if isinstance(max_int_digits, int) else list(max_int_digits)
    tokens = [number_tokens(tokenizer, p, lead, terminator) for p in prompts]
    groups: dict[tuple[int, ...], list[int]] = {}  # a batch shares the LM-head rows of its vocab
    for i, t in enumerate(tokens):
        groups.setdefault(t.vocab, []).append(i)
    step = prompts_per_forward or len(prompts)
    results: list[TrieResult | None] = [None] * len(prompts)
    with torch.inference_mode():
        for vocab, members in groups.items():
            for lo in range(0, len(members), step):
                batch = members[lo:lo + step]
                tree = TokenTree(model, [tokens[i].shared_ids for i in batch], vocab, restricted)
                searches = [_search(tokens[i], tree.root[r], tree.column, decimals, truth=truths[i],
                                    max_int_digits=digits[i], **search) for r, i in enumerate(batch)]
                for r, found in _run_side_by_side(tree, searches, done).items():
                    found.n_positions = tree.n_positions[r]
                    results[batch[r]] = found
    return results  # type: ignore[return-value]


Request = list[tuple[int, ...]]  # token paths to add to a trie, each after its parent path


def _run_side_by_side(tree: TokenTree, searches: Sequence[Generator[Request, list[np.ndarray], TrieResult]],
                      done: Callable[[], Any] | None = None) -> dict[int, TrieResult]:
    """Drive the searches (one per row of ``tree``) to their ends; each forward answers every
    search's pending request. A path's parent is a path of an earlier request or one listed
    before it in the same request."""
    node_of: list[dict[tuple[int, ...], int | None]] = [{(): None} for _ in searches]
    pending: dict[int, Request] = {}
    finished: dict[int, TrieResult] = {}

    def advance(r: int, reply: list[np.ndarray] | None) -> None:
        try:
            pending[r] = searches[r].send(reply)  # type: ignore[arg-type]
        except StopIteration as stop:
            finished[r] = stop.value
            if done is not None:
                done()

    for r in range(len(searches)):
        advance(r, None)
    while pending:
        parents: list[list[int | None]] = [[] for _ in searches]
        ids: list[list[int]] = [[] for _ in searches]
        for r, paths in pending.items():
            first = len(tree.positions[r])  # the id the row's next node gets
            for k, path in enumerate(paths):
                parents[r].append(node_of[r][path[:-1]])
                ids[r].append(path[-1])
                node_of[r][path] = first + k
        replies = tree.extend(parents, ids)
        asked, pending = pending, {}
        for r in asked:
            advance(r, list(replies[r][1]))
    return finished


def _search(
    tokens: NumberTokens,
    root: np.ndarray,
    col: dict[int, int],
    decimals: int,
    *,
    max_int_digits: int,
    threshold: float = 1e-6,
    max_nodes: int | None = None,
    allow_negative: bool = True,
    coarse: bool = True,
    rounding: str = "truncate",
    batch_size: int = 64,
    truth: str | None = None,
) -> Generator[Request, list[np.ndarray], TrieResult]:
    """The search of :func:`binned_distribution` after one prompt whose first-token
    log-probabilities are ``root`` (len(vocab),), columns ``col``: it yields the token paths
    it wants scored and receives their next-token rows. ``n_positions`` is left 0 (the
    driver knows it)."""
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    budget = math.inf if max_nodes is None else max_nodes
    bins: list[tuple[str, float, bool]] = []  # (string, logp, complete)
    lost_pruned = lost_invalid = 0.0
    rows: dict[str, np.ndarray] = {}  # next-unit log-probs (len(vocab),) of each expanded prefix

    # The first unit: the products along the lead paths (often two tokens, 'Ġ' '3').
    row_of: dict[tuple[int, ...], np.ndarray] = {(): root}
    inner = sorted({ids[:i] for ids in tokens.leads.values() for i in range(1, len(ids))}, key=len)
    if inner:
        row_of.update(zip(inner, (yield inner)))

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
        rows.update(zip([s for *_, s in batch], (yield [tuple(tokens.ids(s)) for *_, s in batch])))
        n_expanded += len(batch)
        for _, neg_lp, s in batch:
            children(s, -neg_lp)

    truth_logp = math.nan
    if truth is not None:  # score the truth's own string; its prefixes add no bins
        units = [*truth, TERM]
        missing = [truth[:k] for k in range(1, len(units)) if truth[:k] not in rows]
        if missing:  # one request: each prefix after the one before it
            rows.update(zip(missing, (yield [tuple(tokens.ids(s)) for s in missing])))
        truth_logp = sum(unit_lp(truth[:k], u) for k, u in enumerate(units))

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
        n_positions=0,
        mass_union=mass_union,
        n_expanded=n_expanded,
        truth_logp=truth_logp,
    )
