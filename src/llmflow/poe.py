"""The LLM expert as a score term for the flow sampler: a binned density convolved with a Gaussian.

At one target the I-LLMP density is piecewise constant: bins ``[a_b, b_b)`` with probabilities
``P_b``. Under the Gaussian approximation ``p(y1 | y_t) ≈ N(ŷ, r_t²)`` the expert's likelihood of
``y_t`` is its convolution with ``N(0, r_t²)``, which is closed form:

    q̃_r(y) = Σ_b P_b / (b_b − a_b) · (Φ((b_b − y)/r) − Φ((a_b − y)/r)),
    d/dy q̃_r(y) = Σ_b P_b / (b_b − a_b) · (φ((a_b − y)/r) − φ((b_b − y)/r)) / r.

Both are evaluated in log space: ``log(Φ(u) − Φ(l))`` from ``log Φ`` of the tail that keeps
precision (differences of Φ deep in a tail underflow), and the derivative as two log-sum-exps
(the φ(a) and φ(b) parts) divided by q̃. Bins of probability 0 and padding drop out as −inf.
No gradient of the LLM is taken: the bins are data.

Bins live in the data's units; :meth:`BinnedExpert.affine` maps them into the NDP's model units
(probabilities are unchanged, edges move with the data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from llmflow.flow import posterior_var

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate near 0 and for very negative x."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_cdf_diff(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Φ(hi) − Φ(lo))`` for ``lo ≤ hi``, using the upper tail when both are positive."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + log1mexp(torch.clamp(torch.special.log_ndtr(a) - log_b, max=0.0))


def log_normal_pdf(z: Tensor) -> Tensor:
    return -0.5 * z**2 - LOG_SQRT_2PI


@dataclass(frozen=True)
class BinnedExpert:
    """Binned densities at the targets of T tasks, padded to M targets and B bins.

    lower, upper (T, M, B): bin edges; log_prob (T, M, B): log P_b (−inf for padding and empty
    bins), normalised over the bins of each target (mass the LLM put outside the format is
    renormalised away; the expert stage records it).
    """

    lower: Tensor
    upper: Tensor
    log_prob: Tensor

    @classmethod
    def from_arrays(cls, lower: np.ndarray, upper: np.ndarray, log_prob: np.ndarray) -> BinnedExpert:
        """From (T, M, B) arrays in which padding has NaN edges and/or −inf log-probability."""
        lower, upper, log_prob = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (lower, upper, log_prob))
        pad = ~(torch.isfinite(lower) & torch.isfinite(upper) & (upper > lower)) | torch.isnan(log_prob)
        # Padding gets harmless finite edges [0, 1) and zero probability, so no NaN propagates.
        lower = torch.where(pad, torch.zeros_like(lower), lower)
        upper = torch.where(pad, torch.ones_like(upper), upper)
        log_prob = torch.where(pad, torch.full_like(log_prob, -math.inf), log_prob)
        log_prob = log_prob - torch.logsumexp(log_prob, dim=-1, keepdim=True)
        return cls(lower, upper, log_prob)

    @classmethod
    def from_datasets(cls, datasets: Sequence[xr.Dataset], n_targets: int | None = None) -> BinnedExpert:
        """Stack the expert stage's per-task stores (variables ``lower``, ``upper``, ``logp``
        over ``(target, bin)``) into one padded expert."""
        m = n_targets or max(ds.sizes["target"] for ds in datasets)
        b = max(ds.sizes["bin"] for ds in datasets)
        shape = (len(datasets), m, b)
        lower, upper = np.full(shape, np.nan), np.full(shape, np.nan)
        logp = np.full(shape, -np.inf)
        for i, ds in enumerate(datasets):
            t, k = ds.sizes["target"], ds.sizes["bin"]
            lower[i, :t, :k] = ds["lower"].values
            upper[i, :t, :k] = ds["upper"].values
            logp[i, :t, :k] = ds["logp"].values
        return cls.from_arrays(lower, upper, logp)

    def affine(self, shift: Tensor | np.ndarray | float, scale: Tensor | np.ndarray | float) -> BinnedExpert:
        """The expert of ``(y − shift) / scale``; shift and scale are scalars or per task (T,)."""
        shift = torch.as_tensor(shift, dtype=torch.float64).reshape(-1, 1, 1)
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1, 1)
        if (scale <= 0).any():
            raise ValueError("scale must be positive")
        return BinnedExpert((self.lower - shift) / scale, (self.upper - shift) / scale, self.log_prob)

    @property
    def log_coef(self) -> Tensor:
        """``log(P_b / (b_b − a_b))``: the log density inside each bin. (T, M, B)"""
        return self.log_prob - torch.log(self.upper - self.lower)

    def log_density(self, y: Tensor, task: Tensor, r: float = 0.0) -> Tensor:
        """``log q̃_r(y)`` at targets; y (N, M) rows belonging to ``task`` (N,). r = 0: the bins."""
        lo, hi, coef = self.lower[task], self.upper[task], self.log_coef[task]
        y = y.to(lo.dtype).unsqueeze(-1)
        if r == 0.0:
            inside = (y >= lo) & (y < hi)
            return torch.logsumexp(torch.where(inside, coef, torch.full_like(coef, -math.inf)), dim=-1)
        return torch.logsumexp(coef + log_normal_cdf_diff((lo - y) / r, (hi - y) / r), dim=-1)

    def grad_log_density(self, y: Tensor, task: Tensor, r: float) -> Tensor:
        """``d/dy log q̃_r(y)``; y (N, M), task (N,), r > 0. Returns (N, M) in y's dtype."""
        lo, hi, coef = self.lower[task], self.upper[task], self.log_coef[task]
        yy = y.to(lo.dtype).unsqueeze(-1)
        z_lo, z_hi = (lo - yy) / r, (hi - yy) / r
        log_q = torch.logsumexp(coef + log_normal_cdf_diff(z_lo, z_hi), dim=-1)
        rise = torch.logsumexp(coef + log_normal_pdf(z_lo), dim=-1)
        fall = torch.logsumexp(coef + log_normal_pdf(z_hi), dim=-1)
        grad = (torch.exp(rise - log_q) - torch.exp(fall - log_q)) / r
        return grad.to(y.dtype)

    def score(self, t: float, yhat: Tensor, task: Tensor) -> Tensor:
        """The sampler's extra score: ``d/dy log q̃_{r_t}(ŷ)`` with ``r_t² = σ_t²/(σ_t² + α_t²)``.

        Matches :data:`llmflow.sampler.ExtraScore`; yhat (N, M) in model units.
        """
        return self.grad_log_density(yhat, task, math.sqrt(posterior_var(t)))
