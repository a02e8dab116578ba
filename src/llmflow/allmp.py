"""A-LLMP: autoregressive LLM-process samples, digit by digit.

Each sample visits the targets in its own random order; each target's number is drawn unit by
unit (digits, sign, point, terminator) from the LLM conditioned on the context plus the
sample's own earlier draws, which then join the context. Error cascades are the point: this is
the baseline the paper's LLM-NDP improves on.

At each step the categorical is over the grammatically allowed units plus one "other" outcome
holding the remaining mass (tokens that cannot continue the number). Temperature and top-p act
on that categorical; drawing "other" makes the string invalid and it is redrawn from scratch,
up to ``max_retries`` times (all invalid draws are counted; a target that never succeeds is NaN).
The drawn string picks a bin; the value is uniform within it (so samples are continuous and
follow the binned density), and that value, rewritten as the string, joins the context.

Prompt order (``order``): ``query`` rebuilds each draw's prompt in the expert style's order
(context sorted by distance to the query) and runs all of it; ``append`` writes the context in
ascending x, then each drawn point as a new line in draw order, so every prompt extends the
previous one: its KV cache is kept and a draw runs only the query and one token per unit.

The samples' chains run side by side, one target at a time, and their forwards are batched:
rows of different lengths are left-padded to a common end (a row may re-run a few of its last
tokens so that all rows run as many), which is exact. On a CPU a one-token forward costs about
as much for ten rows as for one (the weights are read once). Each sample has its own random
stream, so batching does not change what it draws.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import xarray as xr

from llmflow import expert
from llmflow.config import Section
from llmflow.expert import TERM, UNITS, ExpertConfig, NumberTokens

ORDERS = ("append", "query")


@dataclass(frozen=True)
class AllmpConfig(Section):
    """Settings of the A-LLMP sampler (config section ``allmp``); ``tasks``: shell patterns of
    the tasks it samples (:func:`llmflow.evaluate.allmp_tasks`); ``tasks_per_forward``: tasks
    sampled side by side (:func:`sample_allmp_tasks`)."""

    KEY: ClassVar[str] = "allmp"
    n_samples: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_retries: int = 10
    tasks: tuple[str, ...] = ("*",)
    order: str = "append"
    tasks_per_forward: int = 4

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.n_samples < 1 or self.tasks_per_forward < 1:
            raise ValueError("allmp needs temperature > 0, 0 < top_p <= 1, n_samples >= 1, tasks_per_forward >= 1")
        if self.order not in ORDERS:
            raise ValueError(f"allmp.order must be one of {', '.join(ORDERS)}, got {self.order!r}")


def _draw(logp: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Index drawn from log-probabilities ``logp`` (n,) after temperature and nucleus cut."""
    z = logp / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return int(rng.choice(len(p), p=q / q.sum()))


# ----------------------------------------------------------------------------- batched forwards


class _Kv:
    """The KV cache of a token sequence, as a linked list of segments: a segment holds its
    tokens' ``ids``, ``keys`` and ``values`` (layers, KV heads, tokens, head dim) and points
    to the segment before it. Segments are immutable; a sequence's prefix shares them. A
    first segment made by :meth:`flat` views a ``store`` with room to grow."""

    __slots__ = ("parent", "ids", "keys", "values", "n", "store")

    def __init__(self, parent: _Kv | None, ids: tuple[int, ...], keys: torch.Tensor,
                 values: torch.Tensor, store: _Store | None = None) -> None:
        self.parent, self.ids, self.keys, self.values, self.store = parent, ids, keys, values, store
        self.n = len(ids) + (parent.n if parent is not None else 0)  # tokens in the sequence

    def segments(self) -> list[_Kv]:
        """The segments, first to last."""
        out, kv = [], self
        while kv is not None:
            out.append(kv)
            kv = kv.parent
        return out[::-1]

    def prefix(self, n: int) -> _Kv:
        """The sequence's first ``n`` tokens; ``n`` within the last segment (views, no copy)."""
        k = n - (self.n - len(self.ids))
        return _Kv(self.parent, self.ids[:k], self.keys[:, :, :k], self.values[:, :, :k], self.store)

    def last_ids(self, m: int) -> tuple[int, ...]:
        """The last ``m`` token ids."""
        out: tuple[int, ...] = ()
        kv = self
        while len(out) < m and kv is not None:
            out = kv.ids + out
            kv = kv.parent
        return out[len(out) - m:] if m else ()

    def flat(self) -> _Kv:
        """The same sequence in one segment. The later segments are copied behind the first
        one in its store when nothing was written there since (a chain's own history), else
        everything goes to a new store with room for more."""
        segs = self.segments()
        root, store = segs[0], segs[0].store
        if store is None or store.end != root.n or store.keys.shape[2] < self.n:
            store = _Store(root.keys, root.values, self.n + self.n // 2)
        at = root.n
        for seg in segs[1:]:
            store.keys[:, :, at:at + len(seg.ids)] = seg.keys
            store.values[:, :, at:at + len(seg.ids)] = seg.values
            at += len(seg.ids)
        store.end = self.n
        ids = tuple(itertools.chain.from_iterable(s.ids for s in segs))
        return _Kv(None, ids, store.keys[:, :, :self.n], store.values[:, :, :self.n], store)


class _Store:
    """Keys and values (layers, KV heads, ``capacity`` tokens, head dim) of which the first
    ``end`` are written, starting with copies of ``keys`` and ``values``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        shape = (*keys.shape[:2], capacity, keys.shape[3])
        self.keys, self.values = keys.new_empty(shape), values.new_empty(shape)
        self.keys[:, :, :keys.shape[2]] = keys
        self.values[:, :, :values.shape[2]] = values
        self.end = keys.shape[2]


# A chain's forward request: (the KV cache to extend, or None; token ids to run; how many last
# positions' logits it wants; LM-head rows to compute, or None for all of them); the reply:
# (the cache extended by those ids, logits (n, V) or (n, len(rows))). A chain yields None when
# it has finished a target.
Request = tuple[_Kv | None, tuple[int, ...], int, tuple[int, ...] | None]
Reply = tuple[_Kv, torch.Tensor]


class _Workspace:
    """Memory for the batched caches of one sampling run, reused from forward to forward (a
    fresh tensor of this size would be page-faulted in every time)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def take(self, like: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Uninitialised keys and values of ``shape`` (layers, B, heads, tokens, head dim)."""
        have = self.keys
        if have is None or have.dtype != like.dtype or have.device != like.device or any(
                n > c for n, c in zip(shape, have.shape)):
            cap = [max(n, c) for n, c in zip(shape, have.shape if have is not None else shape)]
            cap[3] = max(cap[3], shape[3] * 5 // 4)  # prompts grow: leave some room
            self.keys, self.values = like.new_empty(cap), like.new_empty(cap)
        index = tuple(slice(0, n) for n in shape)
        return self.keys[index], self.values[index]


@functools.cache
def _room_layer_class() -> type:
    """A full cache layer over (B, heads, tokens, head dim) buffers ``room_keys`` and
    ``room_values`` that already have room for the forward's tokens: its update writes them in
    place (the model's own layer would concatenate, copying the whole cache)."""
    from transformers.cache_utils import DynamicLayer

    class RoomLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int) -> None:
            super().__init__()
            self.lazy_initialization(keys, values)
            self.room_keys, self.room_values = keys, values
            self.keys, self.values = keys[:, :, :n], values[:, :, :n]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]
            self.room_keys[:, :, start:end] = key_states
            self.room_values[:, :, start:end] = value_states
            self.keys, self.values = self.room_keys[:, :, :end], self.room_values[:, :, :end]
            return self.keys, self.values

    return RoomLayer


def _forward(model, requests: Sequence[Request], workspace: _Workspace) -> list[Reply]:
    """Answer ``requests`` (all with a cache, or all without one and running equally many
    tokens; same LM-head rows) with one forward.

    All rows run K tokens, K the longest request: a shorter request also re-runs the last of
    its cached tokens (so a cache must hold at least K - k). Rows are left-padded with zeros
    to a common end and get their own positions and an attention mask, so each computes what
    it would alone. Every layer's cache is a full one (the model's mask applies a sliding
    window).
    """
    from transformers.cache_utils import DynamicCache

    width = max(len(ids) for _, ids, _, _ in requests)
    n_max = max(n for _, _, n, _ in requests)
    rows = requests[0][3]
    kept = [kv.n - (width - len(ids)) if kv is not None else 0 for kv, ids, _, _ in requests]
    span = max(kept)
    ids = torch.tensor([(kv.last_ids(width - len(run)) if kv is not None else ()) + run
                        for kv, run, _, _ in requests], device=model.device)
    past = DynamicCache()
    if span:  # stack the rows' cached tokens, right-aligned
        like = requests[0][0].keys
        keys, values = workspace.take(like, (like.shape[0], len(requests), like.shape[1],
                                             span + width, like.shape[3]))
        for r, ((kv, _, _, _), n) in enumerate(zip(requests, kept)):
            at = span - n
            keys[:, r, :, :at] = 0
            values[:, r, :, :at] = 0
            for seg in kv.segments():
                k = min(len(seg.ids), span - at)
                if k <= 0:
                    break
                keys[:, r, :, at:at + k] = seg.keys[:, :, :k]
                values[:, r, :, at:at + k] = seg.values[:, :, :k]
                at += k
        past.layers = [_room_layer_class()(k, v, span) for k, v in zip(keys, values)]
    mask = torch.tensor([[0] * (span - t) + [1] * (t + width) for t in kept], device=model.device)
    positions = torch.tensor([list(range(t, t + width)) for t in kept], device=model.device)
    vocab = None if rows is None else torch.tensor(rows, device=model.device)
    cache, logits = expert.tail_logits(model, vocab, n_max, input_ids=ids, attention_mask=mask,
                                       position_ids=positions, past_key_values=past)
    new_keys = torch.stack([layer.keys[:, :, -width:] for layer in cache.layers])  # (L, B, H, K, D)
    new_values = torch.stack([layer.values[:, :, -width:] for layer in cache.layers])
    return [(_Kv(kv, run, new_keys[:, r, :, width - len(run):], new_values[:, r, :, width - len(run):]),
             logits[r, n_max - n:])
            for r, (kv, run, n, _) in enumerate(requests)]


def _run(model, chains: Sequence[Generator[Request | None, Reply | None, None]]) -> None:
    """Run ``chains`` (generators of forward requests) to their end.

    A chain that yields None (it finished a target) waits until every chain has, so the
    chains stay in step. Each round answers the largest group of waiting requests that one
    forward takes: those without a cache running equally many tokens, or those with a cache
    running one token, 2-3, 4-7, ... (a longer run's rows re-run up to half their tokens).
    """
    waiting: dict[int, Request] = {}
    parked: list[int] = []
    workspace = _Workspace()

    def resume(i: int, reply: Reply | None) -> None:
        try:
            request = chains[i].send(reply)
        except StopIteration:
            return
        if request is None:
            parked.append(i)
        else:
            waiting[i] = request

    for i in range(len(chains)):
        resume(i, None)
    while waiting or parked:
        if not waiting:
            again, parked[:] = sorted(parked), []
            for i in again:
                resume(i, None)
            continue
        groups: dict[tuple, list[int]] = {}
        for i, (kv, ids, _, rows) in waiting.items():
            groups.setdefault((kv is None, len(ids) if kv is None else len(ids).bit_length(), rows), []).append(i)
        members = max(groups.values(), key=len)
        width = max(len(waiting[i][1]) for i in members)
        members = [i for i in members if waiting[i][0] is None or waiting[i][0].n >= width - len(waiting[i][1])]
        for i, reply in zip(members, _forward(model, [waiting.pop(i) for i in members], workspace)):
            resume(i, reply)


# ----------------------------------------------------------------------------- one draw


class _Tree:
    """Next-token log-probabilities after a draw's prompt plus token paths (the number so far).

    The prompt is ``start`` (a KV cache, or None) followed by the tokens ``ext``. :meth:`row`
    requests the forward a path needs: its last token on its parent's cache, or ``ext`` and
    the path on ``start`` when no prefix has one yet. Rows (len(vocab),) and caches of every
    prefix a forward covers are kept, so redrawn strings reuse them.
    """

    def __init__(self, start: _Kv | None, ext: tuple[int, ...], vocab: Sequence[int],
                 restricted: bool, sliced: bool) -> None:
        self.start, self.ext, self.restricted = start, ext, restricted
        self.vocab = torch.tensor(list(vocab))
        self.column = {int(t): j for j, t in enumerate(vocab)}
        self.rows = tuple(int(t) for t in vocab) if sliced else None  # LM-head rows to compute
        self.logp: dict[tuple[int, ...], np.ndarray] = {}
        self.caches: dict[tuple[int, ...], _Kv] = {}

    def row(self, path: tuple[int, ...]) -> Generator[Request, Reply, np.ndarray]:
        """Log-probabilities (len(vocab),) of the token after ``path``."""
        if path not in self.logp:
            done = max((len(p) for p in self.caches if path[:len(p)] == p), default=None)
            if done is None:  # the query and the path on the prompt's start; rows from the root
                base, run, first = self.start, self.ext + path, 0
            else:
                base, run, first = self.caches[path[:done]], path[done:], done + 1
            kv, logits = yield base, run, len(path) + 1 - first, self.rows
            rows = expert.vocab_logprobs(logits, self.vocab.to(logits.device), self.restricted,
                                         self.rows is not None)
            for i, r in zip(range(first, len(path) + 1), rows):
                self.logp.setdefault(path[:i], r)
                self.caches.setdefault(path[:i], kv.prefix(kv.n - len(path) + i))
        return self.logp[path]


def _draw_number(tree: _Tree, tokens: NumberTokens, decimals: int, max_int_digits: int,
                 allow_negative: bool, cfg: AllmpConfig, rng: np.random.Generator
                 ) -> Generator[Request, Reply, tuple[str | None, int]]:
    """One number string (None if every try was invalid) and its invalid tries. The first
    forward runs the query with the tokens that the leads share (``' '`` of ``' 3'``)."""
    yield from tree.row(max((ids[:-1] for ids in tokens.leads.values()), key=len))
    first = {}
    for u, ids in tokens.leads.items():  # log P(first unit = u): the product along u's lead
        first[u] = 0.0
        for i, t in enumerate(ids):
            first[u] += (yield from tree.row(ids[:i]))[tree.column[t]]
    for attempt in range(cfg.max_retries + 1):
        s = ""
        while True:
            units = expert.allowed_units(s, decimals, max_int_digits, allow_negative)
            if s:
                row = yield from tree.row(tuple(tokens.ids(s)))
                logp = np.array([row[tree.column[tokens.unit_ids[UNITS.index(u)]]] for u in units])
            else:
                logp = np.array([first[u] for u in units])
            other = 1.0 - float(np.exp(logp).sum())
            k = _draw(np.append(logp, math.log(other) if other > 1e-12 else -np.inf),
                      cfg.temperature, cfg.top_p, rng)
            if k == len(units):
                break  # invalid: redraw the whole string
            if units[k] == TERM:
                return s, attempt
            s += units[k]
    return None, cfg.max_retries + 1


def _grow(tree: _Tree, tokens: NumberTokens, s: str, ids: list[int], new_ids: list[int]
          ) -> Generator[Request, Reply, tuple[_Kv, list[int]]]:
    """(cache, ids) of an ``append`` chain whose prompt ``ids`` (the tokens up to its last
    data line; ``tree.start`` holds all or all but the last) gained the data line of the drawn
    ``s``; ``new_ids`` tokenises the longer prompt in full. When the draw's own tokens are
    that line (no rule line before the query) their cache is kept and the terminator is left
    to the next draw's forward; otherwise the line is run on ``tree.start``.
    """
    if new_ids[:len(ids)] != ids:
        raise ValueError("the tokenizer merges two data lines; use allmp.order: query")
    path = tuple(tokens.ids(s))
    if list(tokens.shared_ids) + tokens.ids(s + TERM) == new_ids and path in tree.caches:
        return tree.caches[path].flat(), new_ids
    start_n = tree.start.n if tree.start is not None else 0
    kv, _ = yield tree.start, tuple(new_ids[start_n:]), 1, tree.rows
    return kv.flat(), new_ids


# ----------------------------------------------------------------------------- tasks


def sample_allmp(model, tokenizer, task: xr.Dataset, expert_cfg: ExpertConfig, cfg: AllmpConfig,
                 model_name: str, seed: int = 0, progress: bool = True) -> xr.Dataset:
    """A-LLMP samples ``y (sample, target)`` in the data's units, with ``x_target``.

    Prompts follow ``expert_cfg`` (style, decimals, rescaling), so A-LLMP and I-LLMP read the
    same lines; ``cfg.order`` decides their order (see the module doc). ``n_invalid (sample)``
    counts redrawn strings. ``seed``: the root of the samples' random streams. Raises
    ValueError (naming the task and target) when no sample drew a valid number at a target.
    Several tasks at once: :func:`sample_allmp_tasks`.
    """
    return sample_allmp_tasks(model, tokenizer, [task], expert_cfg, cfg, model_name, [seed], progress)[0]


def sample_allmp_tasks(model, tokenizer, tasks: Sequence[xr.Dataset], expert_cfg: ExpertConfig,
                       cfg: AllmpConfig, model_name: str, seeds: Sequence[int],
                       progress: bool = True) -> list[xr.Dataset]:
    """:func:`sample_allmp` of each of ``tasks`` (``seeds[i]`` the root of task i's streams),
    their samples' chains run side by side: each forward serves the rows of every task that
    waits for one, so on a CPU the weights are read once for all of them. A task's samples
    are those it gets alone (each sample keeps its own random stream and cache)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.n_samples * sum(t.sizes["target"] for t in tasks),
               desc=f"a-llmp {', '.join(str(t.attrs.get('name', '')) for t in tasks)}", disable=not progress)
    with torch.inference_mode():
        draws = [_TaskDraws(model, tokenizer, task, expert_cfg, cfg, bar) for task in tasks]
        _run(model, [chain for d, seed in zip(draws, seeds) for chain in d.chains(seed)])
    bar.close()
    return [d.dataset(model_name, seed) for d, seed in zip(draws, seeds)]


class _TaskDraws:
    """One task's A-LLMP state: its prompt settings, the samples' chains and their draws."""

    def __init__(self, model, tokenizer, task: xr.Dataset, expert_cfg: ExpertConfig, cfg: AllmpConfig, bar) -> None:
        self.task, self.expert_cfg, self.cfg, self.tokenizer, self.bar = task, expert_cfg, cfg, tokenizer, bar
        style = expert_cfg.prompt_style()
        x_c = np.asarray(task["x_context"].values, dtype=float)
        y_c = np.asarray(task["y_context"].values, dtype=float)
        self.x_t = np.asarray(task["x_target"].values, dtype=float)
        expert.check_context(x_c, y_c, self.x_t)
        self.scale, self.shift = expert.affine_for(y_c, expert_cfg)
        y_llm = expert.to_llm_units(y_c, self.scale, self.shift)
        self.max_int = expert_cfg.max_int_digits or expert.default_int_digits(y_llm)
        self.text = expert.prepare_text(str(task.attrs.get("text", "")), style, self.scale, self.shift)
        self.chat = expert.chat_wrapper(tokenizer) if style.chat else None
        self.sliced = style.restricted and expert.rows_only(model)
        self.append = cfg.order == "append"
        if self.append:  # context in ascending x (first coordinate first), every point: the prompt grows
            style = dataclasses.replace(style, order="fixed", max_context=None)
            ascending = np.lexsort(x_c.reshape(len(x_c), -1).T[::-1])
            x_c, y_llm = x_c[ascending], y_llm[ascending]
        self.style, self.x_c, self.y_llm = style, x_c, y_llm
        self.y = np.full((cfg.n_samples, len(self.x_t)), np.nan)
        self.n_invalid = np.zeros(cfg.n_samples, dtype=np.int64)
        self.start = None
        if self.append:  # every sample starts from the context lines
            head = self.encode(expert.prompt_parts(x_c, y_llm, self.x_t[0], self.text, style, self.chat)[0])
            self.start = _forward(model, [(None, tuple(head), 1, None)], _Workspace())[0][0] if head else None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def chains(self, seed: int) -> list[Generator[Request | None, Reply | None, None]]:
        """One chain per sample, each with its own random stream from ``seed``."""
        seeds = np.random.SeedSequence(seed).spawn(self.cfg.n_samples)
        return [self.chain(i, np.random.default_rng(s)) for i, s in enumerate(seeds)]

    def chain(self, i: int, rng: np.random.Generator) -> Generator[Request | None, Reply | None, None]:
        """Sample i. append: ``ids`` are the prompt's tokens up to its last data line, ``kv``
        holds all of them or all but the last (which the next draw runs); query: both stay
        empty and every draw runs its whole prompt."""
        style, cfg = self.style, self.cfg
        xs, ys = list(self.x_c), list(self.y_llm)
        kv = self.start
        ids = list(kv.ids) if kv is not None else []
        for j in rng.permutation(len(self.x_t)):
            head, query = expert.prompt_parts(np.array(xs), np.array(ys), self.x_t[j], self.text, style, self.chat)
            tokens = expert.number_tokens(self.tokenizer, head + query, style.lead, style.terminator)
            shared = tokens.shared_ids
            if list(shared[:len(ids)]) != ids:
                raise ValueError("the tokenizer merges a data line with the query; use allmp.order: query")
            tree = _Tree(kv, shared[kv.n if kv is not None else 0:], tokens.vocab, style.restricted, self.sliced)
            s, bad = yield from _draw_number(tree, tokens, style.decimals, self.max_int,
                                             self.expert_cfg.allow_negative, cfg, rng)
            self.n_invalid[i] += bad
            self.bar.update()
            if s is not None:
                value = rng.uniform(*expert.number_interval(s, style.decimals, style.rounding))
                self.y[i, j] = value * self.scale + self.shift
                xs.append(self.x_t[j])
                ys.append(value)
                if self.append:
                    head = expert.prompt_parts(np.array(xs), np.array(ys), self.x_t[j], self.text, style, self.chat)[0]
                    kv, ids = yield from _grow(tree, tokens, s, ids, self.encode(head))
            yield None  # wait for the other samples

    def dataset(self, model_name: str, seed: int) -> xr.Dataset:
        """The samples as a Dataset; ValueError where a target never got a valid number."""
        name, cfg, style = self.task.attrs.get("name", ""), self.cfg, self.style
        never = np.flatnonzero(np.isnan(self.y).all(axis=0))
        if len(never):  # one invalid draw leaves a NaN sample; no valid draw at all is an error
            j = int(never[0])
            raise ValueError(
                f"task {name!r}, target {j} (x = {', '.join(f'{v:g}' for v in self.x_t[j])}): "
                f"the LLM gave no valid number in {cfg.max_retries + 1} draws for any of {cfg.n_samples} samples")
        return xr.Dataset(
            {
                "y": (("sample", "target"), self.y),
                "x_target": (("target", "x_dim"), self.x_t),
                "n_invalid": (("sample",), self.n_invalid),
            },
            attrs={"task": str(name), "method": "a-llmp", "model": model_name,
                   "style": style.name, "decimals": style.decimals, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "max_retries": cfg.max_retries, "seed": seed,
                   "order": cfg.order, "scale": self.scale, "shift": self.shift},
        )
