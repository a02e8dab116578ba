"""I-LLMP expert: binned predictive densities over numbers from an LLM's digit tokens.

A target's density comes from the prompt ``[text]\\n x_1, y_1\\n ... x_n, y_n\\n x_*, `` and the
LLM's probabilities for the characters of the next number. Every number string (sign, integer
digits, point, exactly ``decimals`` decimals, terminator) is one bin; the bins partition the
line, so the binned distribution is a probability distribution and density = P / bin width.

The distribution is computed on a trie of number strings (``binned_distribution``): the prompt
is run once and its KV cache shared; each trie level is one batched forward of the live
prefixes; prefixes whose probability is below ``threshold`` are not refined. A pruned prefix
that already has its integer part (``19.`` or ``19.3``) stays a coarser bin ([19, 20) or
[19.3, 19.4)) carrying its exact probability; pruned mass without an interval (``19`` could
still become 190) is reported as ``lost_pruned``. Mass on tokens that cannot continue a
number is ``lost_invalid``. complete bins + coarse bins + lost mass = 1.

Bin semantics (``rounding``): ``truncate`` (our default) formats y by truncation toward zero,
so ``12.34`` is [12.34, 12.35) and ``-12.34`` is (-12.35, -12.34]; ``round`` (the LLMP
reference, Python ``f"{y:.2f}"``) makes ``12.34`` [12.335, 12.345). Either way the strings
partition the line and bins of width 10^-decimals meet edge to edge.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from llmflow.io import write_zarr

DIGITS = "0123456789"
TERM = "$"  # internal symbol of the terminator unit (the real terminator is a config string)
UNITS: tuple[str, ...] = (*DIGITS, "-", ".", TERM)  # column order of unit log-probabilities


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptStyle:
    """How numbers and prompts are written.

    ``lead``: text between the query's separator and the number, scored with the number: ``" "``
    (ours: the number keeps the token context it has in the context lines ``x, y``) or ``""``
    (the LLMP reference scores the number right after the comma). ``order``: ``distance``
    (farthest context point first, nearest last) or ``fixed`` (as given, so every target shares
    the context part of the prompt). ``layout``: ``plain`` lines ``x, y`` or ``xy`` lines
    ``x = x, y = y`` (the query ends ``x = x_*, y =``). ``preamble``: a fixed sentence before the
    text. ``text_numbers``: rewrite the numbers of the text in the data's format (``y is 0`` →
    ``y is 0.00``, in the LLM's units). ``rule_before_query``: the text again on the line
    before the query, where the model reads it last. ``chat``: the instructions (preamble and
    text) go into the tokenizer's chat template as the user turn and the data lines open the
    assistant turn (for instruct models).
    """

    name: str
    decimals: int
    x_decimals: int
    lead: str
    order: str
    rounding: str
    restricted: bool
    use_text: bool
    terminator: str = "\n"
    layout: str = "plain"
    preamble: str = ""
    text_numbers: bool = False
    rule_before_query: bool = False
    chat: bool = False

    def __post_init__(self) -> None:
        if self.order not in ("distance", "fixed"):
            raise ValueError(f"expert.order must be distance or fixed, got {self.order!r}")
        if self.rounding not in ("truncate", "round"):
            raise ValueError(f"expert.rounding must be truncate or round, got {self.rounding!r}")
        if self.layout not in ("plain", "xy"):
            raise ValueError(f"expert.layout must be plain or xy, got {self.layout!r}")
        if self.decimals < 0 or self.x_decimals < 0:
            raise ValueError("expert.decimals and expert.x_decimals must be >= 0")


STYLES: dict[str, PromptStyle] = {
    "default": PromptStyle("default", decimals=2, x_decimals=2, lead=" ",
                           order="distance", rounding="truncate", restricted=True, use_text=True),
    # Reproduces the LLMP reference scoring: x with 0 decimals, no space after the query comma,
    # Python rounding, softmax restricted to digits, '-', '.', '\n'; no text by default.
    "llmp": PromptStyle("llmp", decimals=2, x_decimals=0, lead="",
                        order="distance", rounding="round", restricted=True, use_text=False),
}


def prompt_style(name: str = "default", **overrides: Any) -> PromptStyle:
    """The named style with the non-None ``overrides`` applied."""
    if name not in STYLES:
        raise ValueError(f"expert.style must be one of {sorted(STYLES)}, got {name!r}")
    return dataclasses.replace(STYLES[name], **{k: v for k, v in overrides.items() if v is not None})


def format_number(value: float, decimals: int, rounding: str = "truncate") -> str:
    """Fixed-point string of ``value``: never scientific, ``-`` for negatives (also ``-0.00``)."""
    if not math.isfinite(value):
        raise ValueError(f"cannot format non-finite number {value!r}")
    value = float(value) + 0.0  # -0.0 -> 0.0
    if rounding == "round":
        return f"{value:.{decimals}f}"
    # Decimal(repr) truncates the shortest decimal repr, so 0.29 stays 0.29 (not 0.28999...).
    magnitude = Decimal(repr(abs(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)
    return ("-" if value < 0 else "") + format(magnitude, "f")


def number_interval(s: str, decimals: int, rounding: str = "truncate") -> tuple[float, float]:
    """Interval [lower, upper) of all values whose ``decimals``-formatted string starts with ``s``.

    ``s`` must hold its whole integer part: a complete number (``-12.34``, or ``12`` when
    ``decimals`` is 0) or a prefix ending at or after the point (``12.``, ``12.3``).
    """
    negative = s.startswith("-")
    body = s[1:] if negative else s
    int_part, _, frac = body.partition(".")
    if not int_part or not int_part.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a number (prefix) with a complete integer part: {s!r}")
    unit = 10.0 ** -len(frac)
    lo = int(int_part) + (int(frac) * unit if frac else 0.0)
    hi = lo + unit
    if rounding == "round":  # a rounded string covers [v - w/2, v + w/2) for the finest w
        half = 0.5 * 10.0 ** -decimals
        lo, hi = max(lo - half, 0.0), hi - half
    return (-hi, -lo) if negative else (lo, hi)


def check_context(x_context: np.ndarray, y_context: np.ndarray, x_target: np.ndarray) -> None:
    """Raise ValueError (one line, naming the array) on NaN/inf or mismatched shapes."""
    for name, arr in (("x_context", x_context), ("y_context", y_context), ("x_target", x_target)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(arr, dtype=float)).reshape(len(arr), -1).all(1))
        if bad.size:
            raise ValueError(f"{name} has NaN/inf at index {int(bad[0])}")
    if len(x_context) != len(y_context):
        raise ValueError(f"x_context has {len(x_context)} rows but y_context {len(y_context)}")


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_VARIABLE = re.compile(r"\b([xy])\b")


def prepare_text(text: str, style: PromptStyle, scale: float = 1.0, shift: float = 0.0) -> str:
    """The task's text as the LLM reads it: stripped, empty unless ``style.use_text``.

    With ``style.text_numbers`` each number is rewritten in the format of the variable named
    last before it: after ``y`` as a y value (mapped into the LLM's units by ``(v - shift) /
    scale``, ``decimals`` decimals), otherwise as an x value (``x_decimals``). So "If x is
    greater than 30, y is 0." reads "If x is greater than 30.00, y is 0.00." at 2 decimals.
    """
    text = text.strip() if style.use_text else ""
    if not style.text_numbers:
        return text

    def rewrite(m: re.Match) -> str:
        names = _VARIABLE.findall(text, 0, m.start())
        value = float(m.group())
        if names and names[-1] == "y":
            return format_number((value - shift) / scale, style.decimals, style.rounding)
        return format_number(value, style.x_decimals, "round")

    return _NUMBER.sub(rewrite, text)


def chat_wrapper(tokenizer) -> Callable[[str], str]:
    """``message → prompt text`` of ``tokenizer``'s chat template: the user turn, then the
    opening of the assistant turn. A leading BOS that the tokenizer adds itself is dropped."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("expert.chat needs a tokenizer with a chat template (an instruct model)")
    bos = tokenizer.bos_token or ""
    adds_bos = bool(bos) and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]

    def wrap(message: str) -> str:
        out = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                            add_generation_prompt=True)
        return out[len(bos):] if adds_bos and out.startswith(bos) else out

    return wrap


def build_prompt(
    x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray, text: str, style: PromptStyle,
    chat: Callable[[str], str] | None = None,
) -> str:
    """Prompt for one target; it ends where the number starts.

    Shapes: ``x_context (n, D)``, ``y_context (n,)``, ``x_query (D,)``; y already in LLM units,
    ``text`` as :func:`prepare_text` returns it. With ``order='distance'`` the context is sorted
    by Euclidean distance to ``x_query``, farthest first, so the nearest point is the last line
    before the query (stable on ties). ``chat`` (:func:`chat_wrapper`) is required when
    ``style.chat``.
    """
    return "".join(prompt_parts(x_context, y_context, x_query, text, style, chat))


def prompt_parts(
    x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray, text: str, style: PromptStyle,
    chat: Callable[[str], str] | None = None,
) -> tuple[str, str]:
    """:func:`build_prompt` in two parts: (instructions and context lines, up to and including
    the last line's terminator; the rule line if any and the query)."""
    x_context = np.asarray(x_context, dtype=float).reshape(len(y_context), -1)
    x_query = np.asarray(x_query, dtype=float).reshape(-1)
    order = np.arange(len(y_context))
    if style.order == "distance":
        dist = np.linalg.norm(x_context - x_query, axis=1)
        order = np.argsort(-dist, kind="stable")

    def fmt_x(x: np.ndarray) -> str:
        return ", ".join(format_number(v, style.x_decimals, "round") for v in x)

    def line(x: np.ndarray, y: str) -> str:  # a line without its y for the query
        if style.layout == "xy":
            return f"x = {fmt_x(x)}, y ={' ' + y if y else ''}"
        return f"{fmt_x(x)},{' ' + y if y else ''}"

    text = text.strip() if style.use_text else ""
    instructions = " ".join(part for part in (style.preamble.strip(), text) if part)
    lines = "".join(
        line(x_context[i], format_number(y_context[i], style.decimals, style.rounding)) + style.terminator
        for i in order
    )
    rule = f"{text}\n" if style.rule_before_query and text else ""
    query = f"{rule}{line(x_query, '')}"
    if style.chat:
        if chat is None:
            raise ValueError("a chat prompt style needs the tokenizer's chat wrapper")
        return f"{chat(instructions)}{lines}", query
    head = f"{instructions}\n" if instructions else ""
    return f"{head}{lines}", query


# ----------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class NumberTokens:
    """How ``prompt + lead + number + terminator`` tokenizes, for every number.

    ``shared_ids``: the prompt tokens common to every number, run once (KV-cached). A number's
    first unit u (a digit or ``-``) is written by ``leads[u]``: the token path from the shared
    prefix through the token carrying u (with SmolLM2 and lead ``" "``: ``'Ġ' '3'`` for 3 but
    the single token ``'Ġ-'`` for ``-``). Every later unit ``UNITS[j]`` is token
    ``unit_ids[j]``. ``vocab``: the token ids a restricted softmax runs over (units and leads).
    """

    shared_ids: tuple[int, ...]
    leads: dict[str, tuple[int, ...]]
    unit_ids: tuple[int, ...]
    vocab: tuple[int, ...]

    def ids(self, s: str) -> list[int]:
        """Tokens after ``shared_ids`` of the number prefix ``s`` (``TERM`` for the terminator)."""
        return [*self.leads[s[0]], *(self.unit_ids[UNITS.index(c)] for c in s[1:])]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def number_tokens(tokenizer, prompt: str, lead: str = "", terminator: str = "\n") -> NumberTokens:
    """Token view of the numbers written after ``prompt`` (see ``NumberTokens``).

    Probes tokenize ``prompt + lead + number + terminator`` as one string, exactly as brute
    force scores it, for numbers that use every unit in every position. Raises ValueError if a
    number character after the first does not get a token of its own (the digit trie needs a
    digit-splitting tokenizer).
    """
    probes = [f"{d}.5" for d in DIGITS] + ["-0.0", "-1234567890.0123456789", "9876543210", "-7"]
    prompt_ids = _encode(tokenizer, prompt)
    heads: dict[str, list[int]] = {}
    unit_ids: dict[str, int] = {}
    shared = len(prompt_ids)
    for probe in probes:
        ids = _encode(tokenizer, prompt + lead + probe + terminator)
        n_tail = len(probe)  # one token per later character, plus the terminator
        head, tail = ids[: len(ids) - n_tail], ids[len(ids) - n_tail:]
        ok = len(head) > 0 and heads.setdefault(probe[0], head) == head
        for unit, tok in zip([*probe[1:], TERM], tail):
            ok = ok and unit_ids.setdefault(unit, tok) == tok
        if not ok:
            raise ValueError(
                f"tokenizer does not give each character of {lead + probe + terminator!r} after "
                "the prompt its own token; the digit trie needs a digit-splitting tokenizer"
            )
        # Scoring starts where any number's tokens first differ from the prompt's own.
        shared = min(shared, _common(head, prompt_ids))
    for head in heads.values():
        shared = min(shared, len(head) - 1)
    shared_ids = tuple(prompt_ids[:shared])
    leads = {u: tuple(h[shared:]) for u, h in heads.items()}
    if any(tuple(h[:shared]) != shared_ids for h in heads.values()):
        raise ValueError("numbers after the prompt do not share its tokens; cannot score them")
    if len(set(unit_ids.values())) != len(unit_ids):
        raise ValueError("two number characters share a token; cannot score numbers")
    # '-' never follows a digit in a number, but a restricted softmax still offers it there.
    minus = _encode(tokenizer, prompt + lead + "5-" + terminator)
    unit_ids["-"] = minus[-2] if minus[-1] == unit_ids[TERM] else -1
    units = tuple(unit_ids[u] for u in UNITS)
    vocab = tuple(sorted({t for t in units if t >= 0} | {t for h in leads.values() for t in h}))
    return NumberTokens(shared_ids, leads, units, vocab)


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


# ----------------------------------------------------------------------------- trie


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


def allowed_units(s: str, decimals: int, max_int_digits: int, allow_negative: bool) -> list[str]:
    """Units that may follow the prefix ``s`` of a number string."""
    body = s[1:] if s.startswith("-") else s
    if not body:
        return [*DIGITS, "-"] if allow_negative and not s else list(DIGITS)
    int_part, has_point, frac = body.partition(".")
    if has_point:
        return list(DIGITS) if len(frac) < decimals else [TERM]
    end = ["."] if decimals > 0 else [TERM]
    if int_part == "0" or len(int_part) >= max_int_digits:  # no leading zeros, bounded range
        return end
    return [*DIGITS, *end]


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


def score_strings(
    model,
    tokenizer,
    prompt: str,
    strings: Sequence[str],
    *,
    start: int,
    restrict_to: Sequence[int] | None = None,
    batch_size: int = 1,
) -> tuple[np.ndarray, int]:
    """Brute force: log-probability of each continuation ``s`` of ``prompt``, each on its own.

    Each ``prompt + s`` is tokenized as one string and run as its own sequence (no shared
    cache); every token from index ``start`` on is scored (``start``: the tokens shared by all
    numbers, ``len(NumberTokens.shared_ids)``), with the softmax over ``restrict_to`` token ids
    if given. Equal-length sequences are batched (rows are independent). Returns (logp (n,),
    token positions evaluated).
    """
    restrict = torch.tensor(list(restrict_to), device=model.device) if restrict_to else None
    prefix = _encode(tokenizer, prompt)[:start]
    encoded = [_encode(tokenizer, prompt + s) for s in strings]
    for s, ids in zip(strings, encoded):
        if ids[:start] != prefix or len(ids) <= start:
            raise ValueError(f"{s!r} changes the first {start} tokens of the prompt")
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


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class ExpertConfig:
    """Settings of the I-LLMP expert (config section ``expert``); see the config schema.

    ``rescale``: ``none``; ``pow10`` (y multiplied by a power of ten so that the largest |y| of
    the context has ``rescale_digits`` integer digits: digits keep their meaning, only the point
    moves); or an explicit ``{"scale": a, "shift": b}`` with y_llm = (y - b) / a.
    """

    style: str = "default"
    decimals: int | None = None
    x_decimals: int | None = None
    order: str | None = None
    restricted: bool | None = None
    use_text: bool | None = None
    layout: str | None = None
    preamble: str | None = None
    text_numbers: bool | None = None
    rule_before_query: bool | None = None
    chat: bool | None = None
    threshold: float = 1e-3
    coarse: bool = True
    max_int_digits: int | None = None
    allow_negative: bool = True
    rescale: Any = "none"
    rescale_digits: int = 2
    batch_size: int = 64

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ExpertConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})

    def prompt_style(self) -> PromptStyle:
        return prompt_style(self.style, decimals=self.decimals, x_decimals=self.x_decimals,
                            order=self.order, restricted=self.restricted, use_text=self.use_text,
                            layout=self.layout, preamble=self.preamble, text_numbers=self.text_numbers,
                            rule_before_query=self.rule_before_query, chat=self.chat)


def affine_for(y_context: np.ndarray, cfg: ExpertConfig) -> tuple[float, float]:
    """(scale, shift) with y_llm = (y - shift) / scale, per ``cfg.rescale``."""
    if cfg.rescale in ("none", None):
        return 1.0, 0.0
    if cfg.rescale == "pow10":
        top = float(np.max(np.abs(y_context))) if len(y_context) else 0.0
        if top == 0.0:
            return 1.0, 0.0
        return 10.0 ** (math.floor(math.log10(top)) + 1 - cfg.rescale_digits), 0.0
    if isinstance(cfg.rescale, dict) and float(cfg.rescale.get("scale", 0)) > 0:
        return float(cfg.rescale["scale"]), float(cfg.rescale.get("shift", 0.0))
    raise ValueError(f"expert.rescale must be none, pow10 or {{scale > 0, shift}}, got {cfg.rescale!r}")


def default_int_digits(y_llm: np.ndarray) -> int:
    """Integer digits a number may have: the context's widest plus one order of magnitude."""
    return max((len(format_number(abs(v), 0, "truncate")) for v in y_llm), default=1) + 1


def _check_resolution(y_llm: np.ndarray, style: PromptStyle) -> None:
    texts = {format_number(v, style.decimals, style.rounding) for v in y_llm}
    if len(np.unique(y_llm)) > 1 and len(texts) == 1:
        raise ValueError(
            f"decimals={style.decimals} writes every context y (range [{y_llm.min():g}, "
            f"{y_llm.max():g}]) as {texts.pop()!r}; raise expert.decimals or set expert.rescale"
        )


def task_expert(model, tokenizer, task: xr.Dataset, cfg: ExpertConfig, model_name: str,
                progress: bool = True) -> xr.Dataset:
    """I-LLMP bins at every target of ``task`` (an xarray task Dataset), in the data's units.

    Returns a Dataset with ``lower, upper, logp, complete (target, bin)`` (padded with NaN edges,
    -inf logp, False), ``lost_mass, lost_pruned, lost_invalid, nll_target, n_positions
    (target)``, ``x_target (target, x_dim)``, ``y_target (target)``; attrs record the model, the
    prompt settings, the affine map and one example prompt. ``nll_target`` is -log q(y_target)
    with q the binned density (NaN where y_target is unknown).
    """
    from tqdm.auto import tqdm

    style = cfg.prompt_style()
    x_c = np.asarray(task["x_context"].values, dtype=float)
    y_c = np.asarray(task["y_context"].values, dtype=float)
    x_t = np.asarray(task["x_target"].values, dtype=float)
    y_t = np.asarray(task["y_target"].values, dtype=float)
    check_context(x_c, y_c, x_t)
    scale, shift = affine_for(y_c, cfg)
    y_llm = (y_c - shift) / scale
    _check_resolution(y_llm, style)
    max_int = cfg.max_int_digits or default_int_digits(y_llm)
    if default_int_digits(y_llm) - 1 > max_int:
        raise ValueError(f"expert.max_int_digits={max_int} is below the digits of a context y")
    text = prepare_text(str(task.attrs.get("text", "")), style, scale, shift)
    chat = chat_wrapper(tokenizer) if style.chat else None

    results, prompts = [], []
    for j in tqdm(range(len(x_t)), desc=f"expert {task.attrs.get('name', '')}", disable=not progress):
        prompt = build_prompt(x_c, y_llm, x_t[j], text, style, chat)
        prompts.append(prompt)
        results.append(binned_distribution(
            model, tokenizer, prompt, style.decimals, lead=style.lead, threshold=cfg.threshold,
            restricted=style.restricted, terminator=style.terminator, max_int_digits=max_int,
            allow_negative=cfg.allow_negative, coarse=cfg.coarse, rounding=style.rounding,
            batch_size=cfg.batch_size))

    for j, b in enumerate(results):
        if not len(b.logp):  # no density to offer: stop here rather than write an empty one
            raise ValueError(
                f"task {task.attrs.get('name', '')!r}, target {j} (x = {', '.join(f'{v:g}' for v in x_t[j])}): "
                f"the LLM gave no valid number ({b.lost_invalid:.0%} of the probability on other tokens, "
                f"{b.lost_pruned:.0%} pruned)")
    n_bin = max((len(b.logp) for b in results), default=0)
    lower = np.full((len(results), n_bin), np.nan)
    upper = np.full((len(results), n_bin), np.nan)
    logp = np.full((len(results), n_bin), -np.inf)
    complete = np.zeros((len(results), n_bin), dtype=bool)
    nll = np.full(len(results), np.nan)
    for j, b in enumerate(results):
        n = len(b.logp)
        lower[j, :n], upper[j, :n] = b.lower * scale + shift, b.upper * scale + shift
        logp[j, :n], complete[j, :n] = b.logp, b.complete
        if np.isfinite(y_t[j]):
            nll[j] = -float(b.log_density(np.array((y_t[j] - shift) / scale))) + math.log(scale)
    attrs = {
        "task": str(task.attrs.get("name", "")), "model": model_name, "style": style.name,
        "decimals": style.decimals, "x_decimals": style.x_decimals, "order": style.order,
        "rounding": style.rounding, "restricted": int(style.restricted),
        "use_text": int(style.use_text), "lead": style.lead, "layout": style.layout,
        "preamble": style.preamble, "text_numbers": int(style.text_numbers),
        "rule_before_query": int(style.rule_before_query), "chat": int(style.chat),
        "terminator": style.terminator, "threshold": cfg.threshold, "coarse": int(cfg.coarse),
        "max_int_digits": max_int, "scale": scale, "shift": shift,
        "prompt_example": prompts[0] if prompts else "",
    }
    return xr.Dataset(
        {
            "x_target": (("target", "x_dim"), x_t),
            "y_target": (("target",), y_t),
            "lower": (("target", "bin"), lower),
            "upper": (("target", "bin"), upper),
            "logp": (("target", "bin"), logp),
            "complete": (("target", "bin"), complete),
            "lost_pruned": (("target",), np.array([b.lost_pruned for b in results])),
            "lost_invalid": (("target",), np.array([b.lost_invalid for b in results])),
            "lost_mass": (("target",), np.array([b.lost_mass for b in results])),
            "nll_target": (("target",), nll),
            "n_positions": (("target",), np.array([b.n_positions for b in results], dtype=np.int64)),
        },
        attrs=attrs,
    )


def fingerprint(task: xr.Dataset, settings: dict[str, Any]) -> str:
    """Short hash of a task's data and text plus ``settings``: the key of a cached result."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in ("x_context", "y_context", "x_target"):
        digest.update(np.ascontiguousarray(task[name].values, dtype=np.float64).tobytes())
    digest.update(str(task.attrs.get("text", "")).encode())
    return digest.hexdigest()[:16]


def run_cached(task_paths: Sequence[str], out_paths: Sequence[str], settings: dict[str, Any],
               compute, cache_dir: str | Path, log=None) -> None:
    """For each task, write ``compute(task)`` to its output, reusing ``cache_dir`` results.

    Snakemake deletes all outputs of a job before rerunning it, so finished tasks are kept in
    ``cache_dir`` under a fingerprint of (task data, settings) and copied out on a rerun: a
    job killed half-way recomputes only the tasks it had not finished.
    """
    cache_dir = Path(cache_dir)
    for task_path, out_path in zip(task_paths, out_paths):
        task = xr.open_zarr(task_path).load()
        cached = cache_dir / f"{task.attrs.get('name', Path(task_path).stem)}-{fingerprint(task, settings)}.zarr"
        if not cached.exists():
            write_zarr(compute(task), cached)
        elif log is not None:
            log.info("reusing %s", cached)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        write_zarr(xr.open_zarr(cached).load(), out_path)
        if log is not None:
            log.info("wrote %s", out_path)


__all__ = [
    "Bins", "ExpertConfig", "Scorer", "allowed_units", "first_unit_logprobs",
    "next_unit_logprobs", "NumberTokens", "PromptStyle", "STYLES", "UNITS", "binned_distribution",
    "build_prompt", "chat_wrapper", "check_context", "prepare_text", "default_int_digits", "format_number", "number_interval", "number_tokens",
    "prompt_parts", "tail_logits", "vocab_logprobs",
    "prompt_style", "run_cached", "score_strings", "task_expert", "token_logprobs",
]
