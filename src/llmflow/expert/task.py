"""The expert stage's driver: I-LLMP bins at every target of a task, in data units, cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from llmflow.expert.numbers import format_number
from llmflow.expert.prompt import (PromptStyle, build_prompt, chat_wrapper, check_context,
                                   prepare_text, prompt_style)
from llmflow.expert.trie import binned_distribution
from llmflow.io import write_zarr

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
    max_context: int | None = None
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
                            rule_before_query=self.rule_before_query, chat=self.chat,
                            max_context=self.max_context)


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
