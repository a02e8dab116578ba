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
LOST_MASS = ("renormalise", "flat")
# (rows × targets × bins) elements evaluated at once by the expert: a few MB of temporaries.
ROW_CHUNK_ELEMENTS = 1 << 19


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
    renormalised away or spread flat, see :meth:`from_datasets`).
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
    def from_datasets(cls, datasets: Sequence[xr.Dataset], n_targets: int | None = None,
                      lost: str = "renormalise") -> BinnedExpert:
        """Stack the expert stage's per-task stores (variables ``lower``, ``upper``, ``logp``
        over ``(target, bin)``, ``lost_mass (target)``) into one padded expert.

        ``lost``: what the mass the LLM put outside the number format (and pruned prefixes
        without an interval) becomes. ``renormalise``: dropped, the bins are rescaled to sum to
        one. ``flat``: one extra bin over the hull of the target's bins carries it, so a target
        where the LLM often leaves the format pulls the samples proportionally less.
        """
        if lost not in LOST_MASS:
            raise ValueError(f"lost must be one of {LOST_MASS}, got {lost!r}")
        m = n_targets or max(ds.sizes["target"] for ds in datasets)
        b = max(ds.sizes["bin"] for ds in datasets) + (lost == "flat")
        shape = (len(datasets), m, b)
        lower, upper = np.full(shape, np.nan), np.full(shape, np.nan)
        logp = np.full(shape, -np.inf)
        for i, ds in enumerate(datasets):
            t, k = ds.sizes["target"], ds.sizes["bin"]
            lower[i, :t, :k] = ds["lower"].values
            upper[i, :t, :k] = ds["upper"].values
            logp[i, :t, :k] = ds["logp"].values
            if lost == "flat":
                lower[i, :t, -1] = np.nanmin(ds["lower"].values, axis=1)
                upper[i, :t, -1] = np.nanmax(ds["upper"].values, axis=1)
                with np.errstate(divide="ignore"):
                    logp[i, :t, -1] = np.log(np.clip(ds["lost_mass"].values, 0.0, 1.0))
        return cls.from_arrays(lower, upper, logp)

    def temper(self, temperature: float) -> BinnedExpert:
        """The expert with density ``q^(1/temperature)`` renormalised (bin by bin: densities,
        not bin probabilities, are tempered, so coarse bins are not favoured). temperature < 1
        sharpens the LLM's density towards its modes; 1 returns the expert unchanged."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if temperature == 1.0:
            return self
        log_width = torch.log(self.upper - self.lower)
        log_prob = self.log_coef / temperature + log_width
        return BinnedExpert(self.lower, self.upper, log_prob - torch.logsumexp(log_prob, dim=-1, keepdim=True))

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

    def to(self, dtype: torch.dtype) -> BinnedExpert:
        """The same expert computing in ``dtype`` (float32 halves the sampler's expert cost;
        log-space evaluation keeps it finite in the tails either way)."""
        return BinnedExpert(self.lower.to(dtype), self.upper.to(dtype), self.log_prob.to(dtype))

    def _by_task(self, y: Tensor, task: Tensor, fn) -> Tensor:
        """Apply ``fn(lo, hi, coef, y_rows (c, M, 1)) → (c, M)`` to chunks of rows of one task.

        Rows of a task share its bins, so they broadcast against (M, B) instead of gathering a
        (N, M, B) copy per call; chunks keep the (c, M, B) temporaries small enough for cache.
        """
        out = torch.empty(y.shape, dtype=self.lower.dtype, device=y.device)
        coef_all = self.log_coef
        per_chunk = max(1, ROW_CHUNK_ELEMENTS // max(1, self.lower.shape[1] * self.lower.shape[2]))
        for k in torch.unique(task).tolist():
            idx = torch.nonzero(task == k).squeeze(1)
            for start in range(0, len(idx), per_chunk):
                rows = idx[start:start + per_chunk]
                out[rows] = fn(self.lower[k], self.upper[k], coef_all[k], y[rows].to(out.dtype).unsqueeze(-1))
        return out

    def log_density(self, y: Tensor, task: Tensor, r: float = 0.0) -> Tensor:
        """``log q̃_r(y)`` at targets; y (N, M) rows belonging to ``task`` (N,). r = 0: the bins."""

        def one(lo: Tensor, hi: Tensor, coef: Tensor, yy: Tensor) -> Tensor:
            if r == 0.0:
                inside = (yy >= lo) & (yy < hi)
                return torch.logsumexp(torch.where(inside, coef, torch.full_like(coef, -math.inf)), dim=-1)
            return torch.logsumexp(coef + log_normal_cdf_diff((lo - yy) / r, (hi - yy) / r), dim=-1)

        return self._by_task(y, task, one)

    def grad_log_density(self, y: Tensor, task: Tensor, r: float) -> Tensor:
        """``d/dy log q̃_r(y)``; y (N, M), task (N,), r > 0. Returns (N, M) in y's dtype."""

        def one(lo: Tensor, hi: Tensor, coef: Tensor, yy: Tensor) -> Tensor:
            z_lo, z_hi = (lo - yy) / r, (hi - yy) / r
            log_q = torch.logsumexp(coef + log_normal_cdf_diff(z_lo, z_hi), dim=-1)
            rise = torch.logsumexp(coef + log_normal_pdf(z_lo), dim=-1)
            fall = torch.logsumexp(coef + log_normal_pdf(z_hi), dim=-1)
            return (torch.exp(rise - log_q) - torch.exp(fall - log_q)) / r

        return self._by_task(y, task, one).to(y.dtype)

    def score(self, t: float, yhat: Tensor, task: Tensor) -> Tensor:
        """The sampler's extra score: ``d/dy log q̃_{r_t}(ŷ)`` with ``r_t² = σ_t²/(σ_t² + α_t²)``.

        Matches :data:`llmflow.sampler.ExtraScore`; yhat (N, M) in model units.
        """
        return self.grad_log_density(yhat, task, math.sqrt(posterior_var(t)))
