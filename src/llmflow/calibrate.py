"""The calibrated product (method ``llm-ndp-cal``): the expert's weight and smoothing per task,
fitted to the task's own context by leave-one-out scores.

The paper's product ``p_NDP(y | D) · q(y | D, text)`` counts the context twice and takes a small
LLM's spiky density at face value; on this project's tasks it covers less than the NDP alone.
A log-linear pool with a fitted exponent (Genest & Zidek, 1986; stacking by held-out scores,
Yao et al., 2018) lets the data decide how much of the expert to keep:

    π_{λ,w}(y) ∝ p(y) · q̃_{λ,w}(y),   q̃_{λ,w} = q^λ / Z ∗ N(0, w²)

where at a held-out context point (x_k, y_k) p is the NDP's leave-one-out predictive (a Gaussian
fitted to its samples given the other points, mean m_k, std s_k) and q the LLM's leave-one-out
binned density (:func:`llmflow.expert.task.loo_arrays`). The score of (λ, w) is the mean over
the K held-out points of

    log π_{λ,w}(y_k) = log N(y_k; m_k, s_k²) + log q̃_{λ,w}(y_k) − log Z_k,
    Z_k = ∫ N(y; m_k, s_k²) q̃_{λ,w}(y) dy = ∫ q^λ/Z (u) N(u; m_k, s_k² + w²) du
        = Σ_b c_b [Φ((b_b − m_k)/σ_k) − Φ((a_b − m_k)/σ_k)],   σ_k² = s_k² + w²,

in closed form over the bins [a_b, b_b) of q^λ/Z (density c_b inside bin b): the two Gaussians
merge into one, and a Gaussian's mass in a bin is a difference of normal CDFs

(the expert raised to λ, then smoothed: the product the samplers draw exactly, :mod:`llmflow.poe`),
and the best (λ, w) on the grid of the config's ``sample.calibration`` is used if it beats the
NDP alone (λ = 0) by more than the standard error of the paired per-point difference (the
one-standard-error rule: a gain within noise is no gain), else λ = 0; so where the LLM knows
nothing about the task the fit falls back to the NDP. The smoothing
is chosen in units of the NDP's leave-one-out std (median over k), so one grid serves tasks of
any scale. A task with one held-out point cannot show a gain beyond noise, nor one with none
(a one-point context, ``expert.loo_points: 0``): both get λ = 0.

The fit scores a product at one point at a time, but the sampler draws the joint product over
all m targets, ``p(y_1..m) Π_i q_i(y_i)^λ``. Where the NDP ties targets together (neighbours
that share one value), the LLM's marginals at those targets are one belief stated m times, and
the joint product counts it m times: its marginals come out sharper than the fitted pool. So
each target gets a share ``a_i = 1 / n_i`` of the weight, ``n_i = Σ_k ρ_ik²`` the effective
number of targets that carry target i's information under the NDP (ρ the correlation of the
NDP's samples at the targets) — the magnitude adjustment of a composite likelihood (Varin,
Reid & Firth, 2011, §5): m tied targets give ``p · q^λ`` again, independent ones are unchanged
(:func:`target_shares`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from scipy import stats

from llmflow.binned import BinnedDensity
from llmflow.config import Section


@dataclass(frozen=True)
class CalibrationConfig(Section):
    """``config["sample"]["calibration"]``: candidate weights λ and smoothing widths w (units of
    the NDP's leave-one-out std)."""

    KEY: ClassVar[str] = "sample.calibration"
    weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    smoothing: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class ProductFit:
    """The chosen weight λ and smoothing w (data units), their mean leave-one-out log score
    (nats per held-out point), the NDP's alone (λ = 0), and the score table (λ, w/s, score) of
    every candidate; n_held the held-out points it rests on."""

    weight: float
    smoothing: float
    score: float
    ndp_score: float
    n_held: int
    table: list[tuple[float, float, float]] = field(default_factory=list)


def log_pool_scores(mean: np.ndarray, std: np.ndarray, y: np.ndarray, expert: BinnedDensity,
                    weight: float, smoothing: float) -> np.ndarray:
    """log π_{λ,w}(y_k) (K,) for Gaussian p_k = N(mean_k, std_k²) (K,) and the expert's K
    held-out densities (T = 1, M = K); all in data units. Z_k in closed form (module
    docstring)."""
    gauss = stats.norm.logpdf(y, mean, std)
    if weight == 0.0:
        return gauss
    expert = expert.temper(1.0 / weight)
    row = torch.zeros(1, dtype=torch.long)
    log_q_y = expert.log_density(torch.as_tensor(y[None]), row, smoothing).numpy()[0]
    # Z_k: the mass of N(m_k, s_k² + w²) under the bins, i.e. the bins smoothed by that width at m_k
    log_z = expert.log_density(torch.as_tensor(mean[None]), row, torch.as_tensor(np.sqrt(std**2 + smoothing**2))).numpy()[0]
    return gauss + log_q_y - log_z


def target_shares(samples: np.ndarray) -> np.ndarray:
    """Each target's share ``a_i = 1 / n_i`` (m,) in (0, 1] of the expert's weight (module
    docstring), ``n_i = max(1, 1 + Σ_{k≠i} (ρ_ik² − 1/(S − 1)))`` from the correlations ρ of the
    NDP's samples (S, m) at the targets: ``1/(S − 1)`` is the mean of ρ² between independent
    targets, so their shares stay near 1. A target whose samples do not vary has share 1; fewer
    than 3 samples give all shares 1."""
    n_samples, m = samples.shape
    if m < 2 or n_samples < 3:
        return np.ones(m)
    live = samples.std(axis=0) > 0
    excess = np.zeros((m, m))
    excess[np.ix_(live, live)] = np.corrcoef(samples[:, live], rowvar=False) ** 2 - 1.0 / (n_samples - 1)
    np.fill_diagonal(excess, 0.0)
    return 1.0 / np.maximum(1.0, 1.0 + excess.sum(axis=1))


def fit_product(ndp_loo: np.ndarray, y: np.ndarray, expert: BinnedDensity,
                cfg: CalibrationConfig = CalibrationConfig()) -> ProductFit:
    """The (λ, w) of ``cfg``'s grid with the best mean leave-one-out log score, kept only if it
    beats the NDP alone by more than the standard error of the paired difference (module).

    ndp_loo (K, S): the NDP's samples at each held-out point given the others; y (K,): the
    held-out values; expert: the LLM's held-out densities (T = 1, M = K), data units. Ties go to
    the smaller λ, then the wider w (the more cautious product).
    """
    if len(y) == 0:
        return ProductFit(0.0, 0.0, float("nan"), float("nan"), 0)
    mean, std = ndp_loo.mean(axis=1), np.maximum(ndp_loo.std(axis=1, ddof=1), 1e-12)
    unit = float(np.median(std))
    ndp = log_pool_scores(mean, std, y, expert, 0.0, 0.0)
    best, best_scores = (float(np.mean(ndp)), 0.0, 0.0), ndp
    table = [(0.0, 0.0, best[0])]
    for weight in sorted(w for w in cfg.weights if w > 0):
        for width in sorted(cfg.smoothing, reverse=True):
            scores = log_pool_scores(mean, std, y, expert, weight, width * unit)
            table.append((weight, width, float(np.mean(scores))))
            if table[-1][2] > best[0]:
                best, best_scores = (table[-1][2], weight, width * unit), scores
    diff = best_scores - ndp
    se = float(np.std(diff, ddof=1) / np.sqrt(len(y))) if len(y) > 1 else float("inf")
    if not np.mean(diff) > se:
        best = (float(np.mean(ndp)), 0.0, 0.0)
    return ProductFit(best[1], best[2], best[0], float(np.mean(ndp)), len(y), table)
