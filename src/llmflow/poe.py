"""The product of experts that LLM-NDP samples: the NDP's conditional times the LLM expert.

    π(y_tgt | context) ∝ p_NDP(y_tgt | context) · Π_i q̃_i(y_i)^{w_i},   w_i = λ · (1 − e^{−d_i²/(2 s²)}),

with q_i the expert's binned density at target i (:class:`llmflow.binned.BinnedDensity`,
sharpened to ``q^(1/T)`` by a temperature T, smoothed to ``q̃ = q ∗ N(0, σ²)`` by a width σ),
λ its weight and s the fade: d_i is target i's distance to its nearest context point, so the
expert gives way to the data near it (s = 0: no fade). The paper's product (method
``llm-ndp``) is λ = 1, T = 1, σ = 0, s = 0; ``llm-ndp-cal`` fits λ and σ per task
(:mod:`llmflow.calibrate`).

The samplers (:func:`llmflow.sampler.sample`, :func:`llmflow.smc.sample_smc`) take one
:class:`ExpertTerm`. They own the flow time: at time t they ask the expert for its score and
log density convolved with ``N(0, r_t²)``, ``r_t² = posterior_var(t)`` (:mod:`llmflow.flow`),
through :meth:`ExpertTerm.score` and :meth:`ExpertTerm.log_density` (the :class:`Expert`
interface, the smoothing added to r_t), and weigh it by :meth:`ExpertTerm.target_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import xarray as xr
from torch import Tensor

from llmflow.binned import BinnedDensity
from llmflow.tasks import Task

if TYPE_CHECKING:  # the sample stage's config; predict imports this module
    from llmflow.predict import SampleConfig


class Expert(Protocol):
    """What a sampler needs of an expert, in model units: y (N, M) rows of tasks ``task`` (N,)
    long, r ≥ 0 the std of the Gaussian it is convolved with (r = 0: the density itself)."""

    def score(self, y: Tensor, task: Tensor, r: float) -> Tensor:
        """``d/dy log q̃_r(y)`` (N, M), r > 0."""
        ...

    def log_density(self, y: Tensor, task: Tensor, r: float = 0.0) -> Tensor:
        """``log q̃_r(y)`` (N, M)."""
        ...


@dataclass(frozen=True)
class ExpertTerm:
    """An expert with its weight λ, fade s (x units of the sampler's arguments) and smoothing
    σ (y units of the expert)."""

    expert: Expert
    weight: float = 1.0
    fade: float = 0.0
    smoothing: float = 0.0

    @classmethod
    def from_store(cls, store: xr.Dataset | str | Path, task: Task, cfg: SampleConfig) -> ExpertTerm:
        """The expert of ``task`` as the ``sample`` section sets it up, in data units: its store's
        bins with the lost mass policy (``lost_mass``) and temperature (``expert_temperature``),
        weight ``expert_weight`` and fade ``expert_fade``."""
        density = BinnedDensity.from_store(store, task, cfg.lost_mass).temper(cfg.expert_temperature)
        return cls(density, cfg.expert_weight, cfg.expert_fade)

    def map_y(self, shift: float, scale: float, dtype: torch.dtype = torch.float32) -> ExpertTerm:
        """The term of ``(y − shift) / scale`` computing in ``dtype`` (float32 like the network);
        the expert must be a :class:`~llmflow.binned.BinnedDensity`."""
        return replace(self, expert=self.expert.affine(shift, scale).to(dtype), smoothing=self.smoothing / scale)

    def score(self, y: Tensor, task: Tensor, r: float) -> Tensor:
        """``d/dy log (q̃ ∗ N(0, r²))(y)`` (N, M): the smoothed expert at the sampler's r."""
        return self.expert.score(y, task, math.hypot(r, self.smoothing))

    def log_density(self, y: Tensor, task: Tensor, r: float = 0.0) -> Tensor:
        """``log (q̃ ∗ N(0, r²))(y)`` (N, M)."""
        return self.expert.log_density(y, task, math.hypot(r, self.smoothing))

    def target_weights(self, x_ctx: Tensor, ctx_mask: Tensor, x_tgt: Tensor, tgt_mask: Tensor) -> Tensor:
        """w (T, m): λ times the fade factor (:func:`fade_factor`) at valid targets, 0 at padding."""
        return self.weight * (tgt_mask * fade_factor(x_ctx, ctx_mask, x_tgt, self.fade))


def fade_factor(x_ctx: Tensor, ctx_mask: Tensor, x_tgt: Tensor, scale: float) -> Tensor:
    """``1 − exp(−d² / (2 s²))`` per target (T, m), d its distance to the nearest valid context
    point, s = ``scale`` (both in the x units of the arguments); ones when s = 0 or a task has
    no context.

    Near the context the NDP's conditional already pins y down, and an expert that is off there
    (a sharpened LLM density's mode can be) would pull the samples away from the data; far from
    it the expert carries the text.
    """
    ones = torch.ones(x_tgt.shape[:2], device=x_tgt.device)
    if scale == 0 or x_ctx.shape[1] == 0:
        return ones
    dist = torch.cdist(x_tgt.float(), x_ctx.float())  # (T, m, n)
    nearest = dist.masked_fill(~ctx_mask[:, None, :], float("inf")).amin(dim=2)
    fade = -torch.expm1(-0.5 * (nearest / scale) ** 2)
    return torch.where(ctx_mask.any(dim=1, keepdim=True), fade, ones)
