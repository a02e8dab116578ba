"""The expert stage's driver: I-LLMP bins at every target of a task, in data units, cached."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from llmflow.binned import store_dataset
from llmflow.config import Section
from llmflow.expert.numbers import format_number, to_llm_units
from llmflow.expert.prompt import (PromptStyle, build_prompt, chat_wrapper, check_context,
                                   prepare_text, prompt_style)
from llmflow.expert.trie import TrieResult, binned_distributions


@dataclass(frozen=True)
class ExpertConfig(Section):
    """Settings of the I-LLMP expert (config section ``expert``); see the config schema.

    ``rescale``: ``auto`` (:func:`auto_affine`), ``none``, ``pow10`` (y multiplied by a power of
    ten so that the largest |y| of the context has ``rescale_digits`` integer digits: digits
    keep their meaning, only the point moves); or an explicit ``{"scale": a, "shift": b}`` with
    y_llm = (y - b) / a. ``max_nodes``/``threshold``: the trie's budget of expanded prefixes and
    the least probability worth expanding (:func:`~llmflow.expert.trie.binned_distribution`).
    ``shards``: how many jobs the workflow deals the tasks over (one model load each).
    ``loo_points``: context points held out one at a time and predicted from the rest
    (:func:`task_expert`), for the calibrated product (:mod:`llmflow.calibrate`).
    ``prompts_per_forward``: prompts of a task (targets and held-out points) whose searches
    share each forward (:func:`~llmflow.expert.trie.binned_distributions`); each keeps a KV
    cache of its own, so memory grows with it (:mod:`llmflow.expert.budget`).
    """

    KEY: ClassVar[str] = "expert"
    shards: int = 1
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
    max_context: int | None = None
    threshold: float = 1e-4
    max_nodes: int | None = 128
    coarse: bool = True
    max_int_digits: int | None = None
    allow_negative: bool = True
    rescale: Any = "auto"
    rescale_digits: int = 1
    batch_size: int = 64
    loo_points: int = 5
    prompts_per_forward: int = 32

    def prompt_style(self) -> PromptStyle:
        return prompt_style(self.style, decimals=self.decimals, x_decimals=self.x_decimals,
                            order=self.order, restricted=self.restricted, use_text=self.use_text,
                            layout=self.layout, preamble=self.preamble, text_numbers=self.text_numbers,
                            rule_before_query=self.rule_before_query, chat=self.chat,
                            max_context=self.max_context)


# Context y whose spread is below this fraction of their largest magnitude share their leading
# digits (a pressure of 101,325 ± 150 Pa): written as they are, a few significant digits would
# show no variation at all, so ``auto`` subtracts a round offset first.
OFFSET_SPREAD = 0.05


def auto_affine(y_context: np.ndarray, digits: int = 1) -> tuple[float, float]:
    """(scale, shift) that shows the context's y with a few significant digits.

    The LLMTime/LLMP practice: y_llm = (y - shift) / scale with ``scale`` a power of ten such
    that the largest |y - shift| of the context has ``digits`` integer digits (1e-6 → 1.00,
    101,325 → 1.01, 0.25 → 2.50 at one digit). ``shift`` is 0 unless the context's spread is
    below ``OFFSET_SPREAD`` of its largest |y|; then it is the context's median rounded to the
    spread's power of ten (101,325 ± 150 → shift 101,300, y_llm in [-1.25, 1.75]). Scale and
    shift are exact in decimal, so bins map back to data units exactly.
    """
    y = np.asarray(y_context, dtype=float)
    y = y[np.isfinite(y)]
    top = float(np.max(np.abs(y))) if len(y) else 0.0
    if top == 0.0:
        return 1.0, 0.0
    spread = float(y.max() - y.min())
    shift = 0.0
    if 0.0 < spread < OFFSET_SPREAD * top:
        step = 10.0 ** math.floor(math.log10(spread))
        shift = float(round(float(np.median(y)) / step) * step)
        top = float(np.max(np.abs(y - shift)))
    return 10.0 ** (math.floor(math.log10(top)) + 1 - digits), shift


def affine_for(y_context: np.ndarray, cfg: ExpertConfig) -> tuple[float, float]:
    """(scale, shift) with y_llm = (y - shift) / scale, per ``cfg.rescale``."""
    if cfg.rescale == "auto":
        return auto_affine(y_context, cfg.rescale_digits)
    if cfg.rescale in ("none", None):
        return 1.0, 0.0
    if cfg.rescale == "pow10":
        top = float(np.max(np.abs(y_context))) if len(y_context) else 0.0
        if top == 0.0:
            return 1.0, 0.0
        return 10.0 ** (math.floor(math.log10(top)) + 1 - cfg.rescale_digits), 0.0
    if isinstance(cfg.rescale, dict) and float(cfg.rescale.get("scale", 0)) > 0:
        return float(cfg.rescale["scale"]), float(cfg.rescale.get("shift", 0.0))
    raise ValueError(f"expert.rescale must be auto, none, pow10 or {{scale > 0, shift}}, got {cfg.rescale!r}")


def default_int_digits(y_llm: np.ndarray) -> int:
    """Integer digits a number may have: the context's widest plus one order of magnitude."""
    return max((len(format_number(abs(v), 0, "truncate")) for v in y_llm), default=1) + 1


def _check_resolution(y_llm: np.ndarray, style: PromptStyle) -> None:
    texts = {format_number(v, style.decimals, style.rounding) for v in y_llm}
    if len(np.unique(y_llm)) > 1 and len(texts) == 1:
        raise ValueError(
            f"decimals={style.decimals} writes every context y (range [{y_llm.min():g}, "
            f"{y_llm.max():g}]) as {texts.pop()!r}; raise expert.decimals or set expert.rescale: auto"
        )


def llm_numbers(y_context: np.ndarray, cfg: ExpertConfig) -> tuple[float, float, np.ndarray, int]:
    """(scale, shift, y_llm, max_int_digits): the context y as the LLM reads them.

    Needs no model, so the workflow runs it on every user task before any job starts. Raises
    ValueError (one line) when the style's decimals write every context y alike, or when
    ``expert.max_int_digits`` is below a context value's digits.
    """
    scale, shift = affine_for(y_context, cfg)
    y_llm = to_llm_units(y_context, scale, shift)
    _check_resolution(y_llm, cfg.prompt_style())
    max_int = cfg.max_int_digits or default_int_digits(y_llm)
    if default_int_digits(y_llm) - 1 > max_int:
        raise ValueError(f"expert.max_int_digits={max_int} is below the digits of a context y")
    return scale, shift, y_llm, max_int


@dataclass(frozen=True)
class TaskPrompts:
    """A task as the LLM reads it. ``prompts[j]`` ends where target j's number starts;
    ``truths[j]`` is the string of its known y (None where unknown); y_llm = (y - shift) / scale;
    ``max_int_digits`` bounds the trie's numbers."""

    style: PromptStyle
    prompts: list[str]
    truths: list[str | None]
    scale: float
    shift: float
    max_int_digits: int


def task_prompts(tokenizer, task: xr.Dataset, cfg: ExpertConfig) -> TaskPrompts:
    """Every target's prompt of ``task`` (an xarray task Dataset) under ``cfg``.

    Raises ValueError (one line) on NaN/inf context, a context the style's decimals cannot tell
    apart, or ``max_int_digits`` below a context value's digits.
    """
    style = cfg.prompt_style()
    x_c = np.asarray(task["x_context"].values, dtype=float)
    y_c = np.asarray(task["y_context"].values, dtype=float)
    x_t = np.asarray(task["x_target"].values, dtype=float)
    y_t = np.asarray(task["y_target"].values, dtype=float)
    check_context(x_c, y_c, x_t)
    scale, shift, y_llm, max_int = llm_numbers(y_c, cfg)
    text = prepare_text(str(task.attrs.get("text", "")), style, scale, shift)
    chat = chat_wrapper(tokenizer) if style.chat else None
    prompts = [build_prompt(x_c, y_llm, x, text, style, chat) for x in x_t]
    truths = [format_number(y, style.decimals, style.rounding) if np.isfinite(y) else None
              for y in to_llm_units(y_t, scale, shift)]
    return TaskPrompts(style, prompts, truths, scale, shift, max_int)


def target_bins(model, tokenizer, items: Sequence[tuple[TaskPrompts, int]], cfg: ExpertConfig,
                done: Callable[[], Any] | None = None) -> list[TrieResult]:
    """The trie's bins (LLM units) of target j of ``tp`` for each ``(tp, j)`` of ``items``, with
    its truth's string scored; up to ``cfg.prompts_per_forward`` searches side by side. The
    items share the prompt style. ``done``: called as each search finishes (a progress bar)."""
    style = items[0][0].style
    return binned_distributions(
        model, tokenizer, [tp.prompts[j] for tp, j in items], style.decimals,
        truths=[tp.truths[j] for tp, j in items], max_int_digits=[tp.max_int_digits for tp, _ in items],
        prompts_per_forward=cfg.prompts_per_forward, lead=style.lead, terminator=style.terminator,
        restricted=style.restricted, threshold=cfg.threshold, max_nodes=cfg.max_nodes,
        allow_negative=cfg.allow_negative, coarse=cfg.coarse, rounding=style.rounding,
        batch_size=cfg.batch_size, done=done)


def task_expert(model, tokenizer, task: xr.Dataset, cfg: ExpertConfig, model_name: str,
                progress: bool = True) -> xr.Dataset:
    """I-LLMP bins at every target of ``task`` (an xarray task Dataset), in the data's units.

    Returns a Dataset with ``lower, upper, logp, complete (target, bin)`` (padded with NaN edges,
    -inf logp, False) and per target: ``lost_mass, lost_pruned, lost_invalid``; ``mass_coarse``
    (probability in bins wider than the data's resolution, ``10^-decimals · scale``) and
    ``mass_union`` (in prefixes left without their integer part, see ``trie``);
    ``nll_target`` = -log of the truth string's own probability + log(resolution in data
    units), the LLMP reference's NLL (NaN where y_target is unknown); ``n_positions``,
    ``n_expanded``; ``x_target (target, x_dim)``, ``y_target (target)``. attrs record the model,
    the prompt settings, the affine map and one example prompt.
    """
    from tqdm.auto import tqdm

    tp = task_prompts(tokenizer, task, cfg)
    style, scale, shift = tp.style, tp.scale, tp.shift
    x_t = np.asarray(task["x_target"].values, dtype=float)
    y_t = np.asarray(task["y_target"].values, dtype=float)
    held, loo_tps = loo_prompts(tokenizer, task, cfg)
    items = [(tp, j) for j in range(len(x_t))] + [(one, 0) for one in loo_tps]
    with tqdm(total=len(items), desc=f"expert {task.attrs.get('name', '')}", disable=not progress) as bar:
        found = target_bins(model, tokenizer, items, cfg, done=bar.update)
    results, loo_bins = found[:len(x_t)], found[len(x_t):]

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
    resolution = 10.0 ** -style.decimals
    for j, b in enumerate(results):
        n = len(b.logp)
        lower[j, :n], upper[j, :n] = b.lower * scale + shift, b.upper * scale + shift
        logp[j, :n], complete[j, :n] = b.logp, b.complete
    nll = np.array([-b.truth_logp + math.log(resolution * scale) for b in results])
    coarse = np.array([float(np.exp(b.logp[b.widths > resolution * (1 + 1e-9)]).sum()) for b in results])
    attrs = {
        "task": str(task.attrs.get("name", "")), "model": model_name, "style": style.name,
        "decimals": style.decimals, "x_decimals": style.x_decimals, "order": style.order,
        "rounding": style.rounding, "restricted": int(style.restricted),
        "use_text": int(style.use_text), "lead": style.lead, "layout": style.layout,
        "preamble": style.preamble, "text_numbers": int(style.text_numbers),
        "rule_before_query": int(style.rule_before_query), "chat": int(style.chat),
        "terminator": style.terminator, "threshold": cfg.threshold, "coarse": int(cfg.coarse),
        "max_nodes": -1 if cfg.max_nodes is None else cfg.max_nodes,
        "max_int_digits": tp.max_int_digits, "scale": scale, "shift": shift,
        "prompt_example": tp.prompts[0] if tp.prompts else "",
    }
    loo = loo_arrays(task, held, loo_tps, loo_bins) if cfg.loo_points else None
    per_target = {
        "lost_pruned": np.array([b.lost_pruned for b in results]),
        "lost_invalid": np.array([b.lost_invalid for b in results]),
        "lost_mass": np.array([b.lost_mass for b in results]),
        "mass_coarse": coarse,
        "mass_union": np.array([b.mass_union for b in results]),
        "nll_target": nll,
        "n_positions": np.array([b.n_positions for b in results], dtype=np.int64),
        "n_expanded": np.array([b.n_expanded for b in results], dtype=np.int64),
    }
    return store_dataset(x_t, y_t, lower, upper, logp, complete, per_target, attrs, loo)


def loo_indices(x_context: np.ndarray, k: int) -> np.ndarray:
    """Up to k context indices spread evenly over the context sorted by its first x coordinate
    (both ends included); none where no other point would remain to predict from."""
    n = len(x_context)
    if k <= 0 or n < 2:
        return np.zeros(0, dtype=int)
    order = np.argsort(x_context[:, 0], kind="stable")
    return np.unique(order[np.round(np.linspace(0, n - 1, min(k, n))).astype(int)])


def loo_prompts(tokenizer, task: xr.Dataset, cfg: ExpertConfig) -> tuple[np.ndarray, list[TaskPrompts]]:
    """(held-out context indices (K,), their prompts): each of ``cfg.loo_points`` context
    points (:func:`loo_indices`) as the one target of the task without it, with the task's
    prompt settings (its own rescaling of the remaining context)."""
    x_c = np.asarray(task["x_context"].values, dtype=float)
    y_c = np.asarray(task["y_context"].values, dtype=float)
    held = loo_indices(x_c, cfg.loo_points)
    prompts = []
    for i in held:
        keep = np.arange(len(x_c)) != i
        sub = xr.Dataset({"x_context": (("context", "x_dim"), x_c[keep]), "y_context": (("context",), y_c[keep]),
                          "x_target": (("target", "x_dim"), x_c[i:i + 1]), "y_target": (("target",), y_c[i:i + 1])},
                         attrs=task.attrs)
        prompts.append(task_prompts(tokenizer, sub, cfg))
    return held, prompts


def loo_arrays(task: xr.Dataset, held: np.ndarray, prompts: Sequence[TaskPrompts],
               bins: Sequence[TrieResult]) -> dict[str, np.ndarray]:
    """The LLM's densities at the held-out context points ``held`` (K,) from their prompts'
    bins, in data units: ``x`` (K, D), ``y`` (K,), ``lower``, ``upper``, ``logp`` (K, B) padded
    like the targets' bins, ``nll`` (K,) the held-out truth's exact NLL. The workflow stores
    them as the ``loo_*`` variables."""
    x_c = np.asarray(task["x_context"].values, dtype=float)
    y_c = np.asarray(task["y_context"].values, dtype=float)
    n_bin = max((len(b.logp) for b in bins), default=0)
    lower, upper = np.full((len(bins), n_bin), np.nan), np.full((len(bins), n_bin), np.nan)
    logp = np.full((len(bins), n_bin), -np.inf)
    for k, (b, tp) in enumerate(zip(bins, prompts)):
        lower[k, :len(b.logp)], upper[k, :len(b.logp)] = b.lower * tp.scale + tp.shift, b.upper * tp.scale + tp.shift
        logp[k, :len(b.logp)] = b.logp
    nll = np.array([-b.truth_logp + math.log(10.0 ** -tp.style.decimals * tp.scale) for b, tp in zip(bins, prompts)])
    return {"x": x_c[held], "y": y_c[held], "lower": lower, "upper": upper, "logp": logp, "nll": nll}
