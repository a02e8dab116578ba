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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from llmflow import expert
from llmflow.expert import TERM, ExpertConfig, Scorer


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the A-LLMP sampler (config section ``allmp``)."""

    n_samples: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_retries: int = 10
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict) -> SamplerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.n_samples < 1:
            raise ValueError("allmp needs temperature > 0, 0 < top_p <= 1, n_samples >= 1")


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


def draw_number(model, tokenizer, prompt: str, style: expert.PromptStyle, *, max_int_digits: int,
                allow_negative: bool, cfg: SamplerConfig, rng: np.random.Generator
                ) -> tuple[str | None, int]:
    """One number string after ``prompt`` (None if every try was invalid), and invalid tries."""
    tokens = expert.number_tokens(tokenizer, prompt, style.lead, style.terminator)
    with torch.inference_mode():
        score = Scorer(model, tokens.shared_ids, tokens.vocab, style.restricted, batch_size=1)
        first = expert.first_unit_logprobs(score, tokens)
        for attempt in range(cfg.max_retries + 1):
            s = ""
            while True:
                units = expert.allowed_units(s, style.decimals, max_int_digits, allow_negative)
                lp = ({u: first[u] for u in units} if not s else
                      expert.next_unit_logprobs(score, tokens, [s], [units])[0])
                names = list(lp)
                logp = np.array([lp[u] for u in names])
                other = 1.0 - float(np.exp(logp).sum())
                logp = np.append(logp, math.log(other) if other > 1e-12 else -np.inf)
                k = _draw(logp, cfg.temperature, cfg.top_p, rng)
                if k == len(names):
                    break  # invalid: redraw the whole string
                if names[k] == TERM:
                    return s, attempt
                s += names[k]
    return None, cfg.max_retries + 1


def sample_task(model, tokenizer, task: xr.Dataset, expert_cfg: ExpertConfig, cfg: SamplerConfig,
                model_name: str, progress: bool = True) -> xr.Dataset:
    """A-LLMP samples ``y (sample, target)`` in the data's units, with ``x_target``.

    Prompts follow ``expert_cfg`` (style, decimals, order, rescaling), so A-LLMP and I-LLMP
    read the same prompt. ``n_invalid (sample)`` counts redrawn strings.
    """
    from tqdm.auto import tqdm

    style = expert_cfg.prompt_style()
    x_c = np.asarray(task["x_context"].values, dtype=float)
    y_c = np.asarray(task["y_context"].values, dtype=float)
    x_t = np.asarray(task["x_target"].values, dtype=float)
    expert.check_context(x_c, y_c, x_t)
    scale, shift = expert.affine_for(y_c, expert_cfg)
    y_llm = (y_c - shift) / scale
    max_int = expert_cfg.max_int_digits or expert.default_int_digits(y_llm)
    text = expert.prepare_text(str(task.attrs.get("text", "")), style, scale, shift)
    chat = expert.chat_wrapper(tokenizer) if style.chat else None
    rng = np.random.default_rng(cfg.seed)

    y = np.full((cfg.n_samples, len(x_t)), np.nan)
    n_invalid = np.zeros(cfg.n_samples, dtype=np.int64)
    bar = tqdm(total=cfg.n_samples * len(x_t), desc=f"a-llmp {task.attrs.get('name', '')}",
               disable=not progress)
    for i in range(cfg.n_samples):
        xs, ys = list(x_c), list(y_llm)
        for j in rng.permutation(len(x_t)):
            prompt = expert.build_prompt(np.array(xs), np.array(ys), x_t[j], text, style, chat)
            s, bad = draw_number(model, tokenizer, prompt, style, max_int_digits=max_int,
                                 allow_negative=expert_cfg.allow_negative, cfg=cfg, rng=rng)
            n_invalid[i] += bad
            bar.update()
            if s is None:
                continue
            lo, hi = expert.number_interval(s, style.decimals, style.rounding)
            value = rng.uniform(lo, hi)
            y[i, j] = value * scale + shift
            xs.append(x_t[j])
            ys.append(value)
    bar.close()
    never = np.flatnonzero(np.isnan(y).all(axis=0))
    if len(never):  # one invalid draw leaves a NaN sample; no valid draw at all is an error
        j = int(never[0])
        raise ValueError(
            f"task {task.attrs.get('name', '')!r}, target {j} (x = {', '.join(f'{v:g}' for v in x_t[j])}): "
            f"the LLM gave no valid number in {cfg.max_retries + 1} draws for any of {cfg.n_samples} samples")
    return xr.Dataset(
        {
            "y": (("sample", "target"), y),
            "x_target": (("target", "x_dim"), x_t),
            "n_invalid": (("sample",), n_invalid),
        },
        attrs={"task": str(task.attrs.get("name", "")), "method": "a-llmp", "model": model_name,
               "style": style.name, "decimals": style.decimals, "temperature": cfg.temperature,
               "top_p": cfg.top_p, "max_retries": cfg.max_retries, "seed": cfg.seed,
               "scale": scale, "shift": shift},
    )
