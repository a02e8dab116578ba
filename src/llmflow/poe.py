"""The product of experts that LLM-NDP samples: the NDP's conditional times the LLM expert.

    π(y_tgt | context) ∝ p_NDP(y_tgt | context) · Π_i q̃_i(y_i),
    q̃_i = q_i^{w_i} / Z_i ∗ N(0, σ²),   w_i = λ · a_i · (1 − e^{−d_i²/(2 s²)}),

with q_i the expert's binned density at target i (:class:`llmflow.binned.BinnedDensity`,
sharpened to ``q^(1/T)`` by a temperature T), raised to its weight w_i and renormalised, then
smoothed by a width σ: λ is the weight, s the fade (d_i is target i's distance to its nearest
context point, so the expert gives way to the data near it; s = 0: no fade) and a_i the
target's share of the weight (1 by default; :func:`llmflow.calibrate.target_shares`). The
paper's product (method ``llm-ndp``) is λ = 1, T = 1, σ = 0, s = 0, a = 1; ``llm-ndp-cal`` fits
λ and σ per task and shares the weight among dependent targets (:mod:`llmflow.calibrate`).

The weight is a power of the density, not a factor on its score: at flow time t the sampler
needs the score of ``q^w ∗ N(0, r_t²)``, which is not ``w`` times the score of
``q ∗ N(0, r_t²)`` (for q = N(a, b²) the first is ``w (a − y)/(b² + w r_t²)``, the second
``w (a − y)/(b² + r_t²)``: scaling the score under-weighs an expert with w < 1 and over-weighs
one with w > 1 until t = 1). :meth:`ExpertTerm.per_target` tempers each target's density by its
weight once, and the samplers use that expert with weight 1 where w > 0 (as w → 0 it tends to
the uniform density on its bins' support; at w = 0 the target has no expert).

The samplers (:func:`llmflow.sampler.sample`, :func:`llmflow.smc.sample_smc`) take one
:class:`ExpertTerm`. They own the flow time: at time t they ask the expert for its score and
log density convolved with ``N(0, r_t²)``, ``r_t² = posterior_var(t)`` (:mod:`llmflow.flow`),
through :meth:`ExpertTerm.score` and :meth:`ExpertTerm.log_density` (the :class:`Expert`
interface, the smoothing added to r_t).
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

    def temper(self, temperature: float | Tensor) -> Expert:
        """The expert with density ``q^(1/temperature)`` renormalised; one temperature or one
        per task and target (T, M)."""
        ...


@dataclass(frozen=True)
class ExpertTerm:
    """An expert with its weight λ, fade s (x units of the sampler's arguments), smoothing
    σ (y units of the expert) and per-target shares a of the weight ((T, m) or (m,); None: 1)."""

    expert: Expert
    weight: float = 1.0
    fade: float = 0.0
    smoothing: float = 0.0
    shares: Tensor | None = None

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
        """w (T, m): λ times the share and the fade factor (:func:`fade_factor`) at valid targets,
        0 at padding."""
        weights = self.weight * (tgt_mask * fade_factor(x_ctx, ctx_mask, x_tgt, self.fade))
        return weights if self.shares is None else weights * self.shares.to(weights)

    def per_target(self, x_ctx: Tensor, ctx_mask: Tensor, x_tgt: Tensor, tgt_mask: Tensor) -> tuple[ExpertTerm, Tensor]:
        """The term the samplers use: each target's density raised to its weight w
        (:meth:`target_weights`, (T, m)) and renormalised, with weight 1 and this smoothing;
        and ``on`` (T, m) float, 1 where w > 0 (the expert acts there, nowhere else)."""
        weights = self.target_weights(x_ctx, ctx_mask, x_tgt, tgt_mask)
        on = weights > 0
        temperature = torch.where(on, 1.0 / weights.clamp_min(torch.finfo(weights.dtype).tiny), 1.0)
        return ExpertTerm(self.expert.temper(temperature), smoothing=self.smoothing), on.float()


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
