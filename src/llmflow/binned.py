"""Binned densities: the one type for the LLM expert's per-target densities, and its store.

At one target the I-LLMP density is piecewise constant: bins ``[a_b, b_b)`` with probabilities
``P_b`` (:class:`BinnedDensity`, T tasks × M targets × B bins). Evaluation reads it directly
(quantiles, mass in an interval, mean, log density); the flow sampler reads it convolved with a
Gaussian. Under the approximation ``p(y1 | y_t) ≈ N(ŷ, r_t²)`` the expert's likelihood of
``y_t`` is the convolution with ``N(0, r²)``, closed form:

    q̃_r(y) = Σ_b P_b / (b_b − a_b) · (Φ((b_b − y)/r) − Φ((a_b − y)/r)),
    d/dy q̃_r(y) = Σ_b P_b / (b_b − a_b) · (φ((a_b − y)/r) − φ((b_b − y)/r)) / r.

Exact path: both in log space, ``log(Φ(u) − Φ(l))`` from ``log Φ`` of the tail that keeps
precision (differences of Φ deep in a tail underflow), and the derivative as two log-sum-exps
(the φ(a) and φ(b) parts) divided by q̃. Bins of probability 0 and padding drop out as −inf.
It costs O(bins) transcendentals per sample and target.

Fast path (:meth:`BinnedDensity.score`), a fast Gauss transform: cut the line into cells of
width ``γ r`` (centres m_c) and expand the kernel about each centre in Hermite polynomials,
``φ(u − s) = Σ_j s^j/j! He_j(u) φ(u)`` with ``u = (y − m_c)/r``, ``s = (x − m_c)/r``:

    q̃_r(y) = (1/r) Σ_c φ(u_c) Σ_{j≤p} A_cj He_j(u_c),
    d/dy q̃_r(y) = −(1/r²) Σ_c φ(u_c) Σ_{j≤p} A_cj He_{j+1}(u_c),
    A_cj = (1/j!) ∫_cell f(x) s^j dx   (closed form: f is piecewise constant).

Only the cells within ``K r`` of y enter, so a sample costs O((2K/γ + 1)·p) whatever the bins.
Each sample and target carries a bound on what was left out (Cramér's ``|He_j(u)| ≤ 1.09
√(j!) e^{u²/4}`` for the orders above p, the mass beyond K r, rounding of the cell densities);
where it is not below ``FGT_TOLERANCE`` × q̃ (far tails, gaps, densities below float range)
the exact path is used instead, so the score's error stays below about ``FGT_TOLERANCE ·
(1 + |score|·r) / r`` everywhere. The cells are rebuilt per call (O(targets × bins × p)).
No gradient of the LLM is taken: the bins are data.

Bins live in the data's units; :meth:`BinnedDensity.affine` maps them into the NDP's model
units (probabilities are unchanged, edges move with the data).

The expert store (``results/expert/<model>/shard-<k>/<task>.zarr``) is written by :func:`store_dataset`
and read by :meth:`BinnedDensity.from_store`, which refuses a store whose targets are not its
task's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from llmflow.tasks import Task

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
LOST_MASS = ("renormalise", "flat")
# (rows × targets × bins) elements evaluated at once by the expert: a few MB of temporaries.
ROW_CHUNK_ELEMENTS = 1 << 19
# Fast Gauss transform: Hermite order p, cell width γ (units of r), window half-width K (units
# of r), the accepted bound on the left-out part relative to q̃, and the most cells per target
# (smaller r: exact path).
FGT_ORDER = 9
FGT_CELL = 1.0
FGT_WINDOW = 6.0
FGT_TOLERANCE = 1e-4
FGT_MAX_CELLS = 4096


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


def exact_grad_log_q(lo: Tensor, hi: Tensor, coef: Tensor, y: Tensor, r: float) -> Tensor:
    """The exact path: ``d/dy log q̃_r(y)`` in log space; bins lo, hi, log_coef (..., B), y
    (..., 1) broadcasting against them → (...)."""
    z_lo, z_hi = (lo - y) / r, (hi - y) / r
    log_q = torch.logsumexp(coef + log_normal_cdf_diff(z_lo, z_hi), dim=-1)
    rise = torch.logsumexp(coef + log_normal_pdf(z_lo), dim=-1)
    fall = torch.logsumexp(coef + log_normal_pdf(z_hi), dim=-1)
    return (torch.exp(rise - log_q) - torch.exp(fall - log_q)) / r


def hermite_to_monomial(order: int) -> Tensor:
    """H (p+1, p+1) float64 with ``He_j(u) = Σ_i H[j, i] u^i`` (probabilists' Hermite)."""
    h = torch.zeros(order + 1, order + 1, dtype=torch.float64)
    h[0, 0] = 1.0
    if order:
        h[1, 1] = 1.0
    for j in range(1, order):  # He_{j+1} = u He_j − j He_{j−1}
        h[j + 1, 1:] = h[j, :-1]
        h[j + 1] -= j * h[j - 1]
    return h


@dataclass(frozen=True)
class HermiteCells:
    """The fast-path form of an expert at one r: per target, uniform cells of width γ r.

    origin (T, M): left end of the first real cell in y units (float32-exact); coef (T, M, C,
    p+2): per cell the polynomial ``P_c(u) = Σ_j A_cj He_j(u)`` of the module docstring as
    monomial coefficients ``u^0 … u^p``, then the cell's mass A_c0, for the expert's density
    scaled to a maximum of 1 per target; ``2w + 1`` empty cells pad both ends (cell c starts at
    ``origin + (c − 2w − 1)·γ r``). floor (T, M): bound on the mass beyond K r and the rounding
    of cell densities, in the units of ``Q = Σ_c e^{−u_c²/2} P_c(u_c)`` (``q̃ = Q/(r √(2π))``).
    """

    r: float
    origin: Tensor
    coef: Tensor
    floor: Tensor

    @staticmethod
    def half_window() -> int:
        """w: cells on each side of the sample's cell that enter its sum (they cover K r)."""
        return math.ceil(FGT_WINDOW / FGT_CELL)

    @staticmethod
    def truncation() -> float:
        """ε with |left-out orders of Q or of its derivative| ≤ ε Σ_c A_c0 e^{−u_c²/4}: Cramér's
        bound on the orders above p, plus float32 rounding of the monomial form."""
        half, p = FGT_CELL / 2, FGT_ORDER
        return 2.18 * half ** (p + 1) * math.sqrt(p + 2) / math.sqrt(math.factorial(p + 1)) + 3e-6

    def score(self, y: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """(d/dy log q̃_r(y), trusted), both (N, M), for y (N, M) of tasks ``task`` (N,); the
        score is only meaningful where ``trusted``: left-out part ≤ FGT_TOLERANCE · q̃."""
        w = self.half_window()
        n_tgt, n_cells, width = y.shape[1], self.coef.shape[2], self.coef.shape[3]
        offsets = torch.arange(-w, w + 1, device=y.device)  # (W,)
        v = (y.float() - self.origin[task]) / (FGT_CELL * self.r)  # position in cells (N, M)
        cell = torch.clamp(torch.floor(v), -w - 1, n_cells - 3 * w - 2) + (2 * w + 1)  # padded index
        # each sample's window is one contiguous block of W cells × (p+2) coefficients
        n_windows = self.coef.numel() // width - len(offsets) + 1
        windows = self.coef.view(-1).as_strided((n_windows, len(offsets) * width), (width, 1))
        first = (task[:, None] * n_tgt + torch.arange(n_tgt, device=y.device)) * n_cells + cell.long() - w
        a = windows[first].view(*y.shape, len(offsets), width).permute(3, 0, 1, 2)  # (p+2, N, M, W)
        u = (v - cell + 2 * w + 0.5)[..., None] * FGT_CELL - offsets * FGT_CELL  # (N, M, W)
        poly, slope = a[width - 2], torch.zeros_like(u)  # Horner for P_c and P_c'
        for i in range(width - 3, -1, -1):
            slope = torch.addcmul(poly, slope, u)
            poly = torch.addcmul(a[i], poly, u)
        e4 = torch.exp(-0.25 * u * u)
        e2 = e4 * e4
        q = (e2 * poly).sum(-1)
        # d/du [e^{−u²/2} P(u)] = −e^{−u²/2} (u P − P')
        dq = (e2 * (u * poly - slope)).sum(-1)
        bound = self.truncation() * (a[width - 1] * e4).sum(-1) + self.floor[task]
        return -dq / (self.r * q), q * FGT_TOLERANCE > bound


@dataclass(frozen=True)
class BinnedDensity:
    """Binned densities at the targets of T tasks, padded to M targets and B bins.

    lower, upper (T, M, B): bin edges; log_prob (T, M, B): log P_b (−inf for padding and empty
    bins), normalised over the bins of each target (the mass the LLM put outside the number
    format is renormalised away or spread flat, see :meth:`from_store`). nll_target (T, M):
    where the expert scored each truth's own string, the exact NLL of the truth (nats; NaN
    where unknown), else None: an NLL is then read off the bins.
    """

    lower: Tensor
    upper: Tensor
    log_prob: Tensor
    nll_target: np.ndarray | None = None  # dropped by temper, affine and to: it scores this density only

    @classmethod
    def from_arrays(cls, lower: np.ndarray, upper: np.ndarray, log_prob: np.ndarray,
                    nll_target: np.ndarray | None = None) -> BinnedDensity:
        """From (T, M, B) arrays in which padding has NaN edges and/or −inf log-probability."""
        lower, upper, log_prob = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (lower, upper, log_prob))
        pad = ~(torch.isfinite(lower) & torch.isfinite(upper) & (upper > lower)) | torch.isnan(log_prob)
        # Padding gets harmless finite edges [0, 1) and zero probability, so no NaN propagates.
        lower = torch.where(pad, torch.zeros_like(lower), lower)
        upper = torch.where(pad, torch.ones_like(upper), upper)
        log_prob = torch.where(pad, torch.full_like(log_prob, -math.inf), log_prob)
        log_prob = log_prob - torch.logsumexp(log_prob, dim=-1, keepdim=True)
        return cls(lower, upper, log_prob, nll_target)

    @classmethod
    def from_store(cls, store: xr.Dataset | str | Path, task: Task | None = None,
                   lost: str = "renormalise") -> BinnedDensity:
        """One task's density (T = 1) from its expert store (a Dataset or a zarr path).

        ``task``: the task the store must belong to; ValueError, naming the store, where its
        targets (x, and y where known) are not the task's. ``lost``: what the mass the LLM put
        outside the number format becomes. ``renormalise``: dropped, the bins are rescaled to
        sum to one. ``flat``: one extra bin over the hull of the target's bins carries it, so a
        target where the LLM often leaves the format pulls the samples proportionally less.
        """
        if lost not in LOST_MASS:
            raise ValueError(f"lost must be one of {LOST_MASS}, got {lost!r}")
        where = str(store) if isinstance(store, (str, Path)) else str(store.attrs.get("task", "expert store"))
        ds = xr.open_zarr(store) if isinstance(store, (str, Path)) else store
        if task is not None:
            check_store_targets(ds, task, where)
        lower, upper, logp = (ds[k].values[None] for k in ("lower", "upper", "logp"))
        if lost == "flat":
            hull_lo = np.nanmin(lower, axis=2, keepdims=True)
            hull_hi = np.nanmax(upper, axis=2, keepdims=True)
            with np.errstate(divide="ignore"):
                lost_logp = np.log(np.clip(ds["lost_mass"].values, 0.0, 1.0))[None, :, None]
            lower, upper = np.concatenate([lower, hull_lo], 2), np.concatenate([upper, hull_hi], 2)
            logp = np.concatenate([logp, lost_logp], 2)
        nll = ds["nll_target"].values[None] if "nll_target" in ds else None
        return cls.from_arrays(lower, upper, logp, nll)

    @classmethod
    def loo_from_store(cls, store: xr.Dataset | str | Path, lost: str = "renormalise"
                       ) -> tuple[BinnedDensity, np.ndarray, np.ndarray]:
        """The store's leave-one-out densities (T = 1, M = K held-out context points) with their
        x (K, D) and y (K,); K = 0 where the store has none. ``lost`` as in :meth:`from_store`."""
        ds = xr.open_zarr(store) if isinstance(store, (str, Path)) else store
        if "loo_x" not in ds or ds.sizes["loo"] == 0:
            empty = np.zeros((1, 0, 1))
            return cls.from_arrays(empty, empty + 1, empty), np.zeros((0, ds.sizes.get("x_dim", 1))), np.zeros(0)
        held = xr.Dataset({"lower": ds["loo_lower"], "upper": ds["loo_upper"], "logp": ds["loo_logp"],
                           "lost_mass": 1.0 - np.exp(ds["loo_logp"]).sum("loo_bin"), "nll_target": ds["loo_nll"]})
        held = held.rename({"loo": "target", "loo_bin": "bin"})
        return cls.from_store(held, lost=lost), ds["loo_x"].values, ds["loo_y"].values

    @classmethod
    def stack(cls, densities: Sequence[BinnedDensity]) -> BinnedDensity:
        """One density of all tasks of ``densities``, padded to their most targets and bins."""
        m = max(d.lower.shape[1] for d in densities)
        b = max(d.lower.shape[2] for d in densities)

        def pad(a: Tensor, value: float) -> Tensor:
            return torch.nn.functional.pad(a, (0, b - a.shape[2], 0, m - a.shape[1]), value=value)

        nll = None
        if all(d.nll_target is not None for d in densities):
            nll = np.concatenate([np.pad(d.nll_target, ((0, 0), (0, m - d.nll_target.shape[1])),
                                         constant_values=np.nan) for d in densities])
        return cls(torch.cat([pad(d.lower, 0.0) for d in densities]), torch.cat([pad(d.upper, 1.0) for d in densities]),
                   torch.cat([pad(d.log_prob, -math.inf) for d in densities]), nll)

    def targets(self, keep: np.ndarray) -> BinnedDensity:
        """The density at the targets ``keep`` ((M,) bool or indices) of every task."""
        keep = torch.as_tensor(np.asarray(keep))
        nll = None if self.nll_target is None else self.nll_target[:, keep.numpy()]
        return BinnedDensity(self.lower[:, keep], self.upper[:, keep], self.log_prob[:, keep], nll)

    @property
    def prob(self) -> np.ndarray:
        """P_b (T, M, B) as numpy; 0 for padding."""
        return self.log_prob.exp().numpy()

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        """(T, M, L) quantiles at ``levels`` (L,), the CDF linear inside bins; gaps between bins
        hold no mass; NaN at padded targets."""
        lower, upper, prob = self.lower.numpy(), self.upper.numpy(), self.prob
        out = np.full((*prob.shape[:2], len(levels)), np.nan)
        for k, i in np.ndindex(*prob.shape[:2]):
            keep = prob[k, i] > 0
            if not keep.any():
                continue
            order = np.argsort(lower[k, i, keep])
            lo, hi, p = lower[k, i, keep][order], upper[k, i, keep][order], prob[k, i, keep][order]
            # The CDF is piecewise linear through (lo_b, F_{b-1}) and (hi_b, F_b); bins may leave gaps.
            knots_y = np.concatenate([[lo[0]], np.ravel(np.column_stack([hi, np.append(lo[1:], hi[-1])]))])[:-1]
            cdf = np.cumsum(p)
            knots_f = np.concatenate([[0.0], np.repeat(cdf, 2)])[:-1]
            out[k, i] = np.interp(levels, knots_f, knots_y)
        return out

    def mass_inside(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(T, M) probability of ``[lo, hi]`` (T, M) or (M,) at each target (uniform within bins)."""
        lower, upper, prob = self.lower.numpy(), self.upper.numpy(), self.prob
        width = np.where(prob > 0, upper - lower, 1.0)
        overlap = np.clip(np.minimum(upper, np.asarray(hi)[..., None]) - np.maximum(lower, np.asarray(lo)[..., None]), 0.0, None)
        return np.where(prob > 0, prob * np.minimum(overlap, width) / width, 0.0).sum(axis=-1)

    def mean(self) -> np.ndarray:
        """(T, M) mean of each target's density."""
        return (self.prob * 0.5 * (self.lower + self.upper).numpy()).sum(axis=-1)

    def nll(self, y: np.ndarray) -> np.ndarray:
        """(T, M) NLL of truths y (T, M) in nats: the scored strings' ``nll_target`` where the
        store has them, else −log of the bins' density (inf outside every bin)."""
        if self.nll_target is not None:
            return self.nll_target
        task = torch.arange(self.lower.shape[0])
        return -self.log_density(torch.as_tensor(np.asarray(y, dtype=np.float64)), task).numpy()

    def temper(self, temperature: float | Tensor) -> BinnedDensity:
        """The expert with density ``q^(1/temperature)`` renormalised (bin by bin: densities,
        not bin probabilities, are tempered, so coarse bins are not favoured). temperature < 1
        sharpens the LLM's density towards its modes; 1 returns the expert unchanged. One
        temperature for all, or one per task and target (T, M). ValueError unless positive."""
        temperature = torch.as_tensor(temperature, dtype=self.log_prob.dtype, device=self.log_prob.device)
        if (temperature <= 0).any():
            raise ValueError(f"temperature must be positive, got {temperature.min().item()}")
        if (temperature == 1.0).all():
            return self
        log_prob = self.log_coef / temperature[..., None] + torch.log(self.upper - self.lower)
        return BinnedDensity(self.lower, self.upper, log_prob - torch.logsumexp(log_prob, dim=-1, keepdim=True))

    def affine(self, shift: Tensor | np.ndarray | float, scale: Tensor | np.ndarray | float) -> BinnedDensity:
        """The expert of ``(y − shift) / scale``; shift and scale are scalars or per task (T,)."""
        shift = torch.as_tensor(shift, dtype=torch.float64).reshape(-1, 1, 1)
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1, 1)
        if (scale <= 0).any():
            raise ValueError("scale must be positive")
        return BinnedDensity((self.lower - shift) / scale, (self.upper - shift) / scale, self.log_prob)

    @property
    def log_coef(self) -> Tensor:
        """``log(P_b / (b_b − a_b))``: the log density inside each bin. (T, M, B)"""
        return self.log_prob - torch.log(self.upper - self.lower)

    def to(self, dtype: torch.dtype) -> BinnedDensity:
        """The same expert computing in ``dtype`` (float32 halves the sampler's expert cost;
        log-space evaluation keeps it finite in the tails either way)."""
        return BinnedDensity(self.lower.to(dtype), self.upper.to(dtype), self.log_prob.to(dtype))

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

    def log_density(self, y: Tensor, task: Tensor, r: float | Tensor = 0.0) -> Tensor:
        """``log q̃_r(y)`` at targets; y (N, M) rows belonging to ``task`` (N,). r: one width, or
        one per target (M,) > 0 (``q̃_r(y)`` is then the mass of N(y, r²) under the bins: the
        Gaussian-pool normaliser of :mod:`llmflow.calibrate`). r = 0: the bins."""
        width = r[:, None] if isinstance(r, Tensor) else r  # (M, 1) against (c, M, 1) rows

        def one(lo: Tensor, hi: Tensor, coef: Tensor, yy: Tensor) -> Tensor:
            if not isinstance(r, Tensor) and r == 0.0:
                inside = (yy >= lo) & (yy < hi)
                return torch.logsumexp(torch.where(inside, coef, torch.full_like(coef, -math.inf)), dim=-1)
            return torch.logsumexp(coef + log_normal_cdf_diff((lo - yy) / width, (hi - yy) / width), dim=-1)

        return self._by_task(y, task, one)

    def grad_log_density(self, y: Tensor, task: Tensor, r: float) -> Tensor:
        """Exact ``d/dy log q̃_r(y)``; y (N, M), task (N,), r > 0. Returns (N, M) in y's dtype."""
        return self._by_task(y, task, lambda lo, hi, coef, yy: exact_grad_log_q(lo, hi, coef, yy, r)).to(y.dtype)

    @cached_property
    def jumps(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The density as jumps at distinct edges, for the fast path (computed once, float64).

        Returns edges, jumps (T, M, E) with ``f(y) = Σ_{e_k ≤ y} Δ_k`` scaled to a maximum of 1
        per target (unused slots: Δ = 0 at the first edge), and the span start, end (T, M) of
        the bins with mass (start float32-exact; 0 for a target without mass).
        """
        lower, upper, log_coef = self.lower.double(), self.upper.double(), self.log_coef.double()
        live = torch.isfinite(log_coef)
        top = log_coef.amax(-1, keepdim=True)
        dens = torch.exp(log_coef - torch.where(torch.isfinite(top), top, 0.0))
        start = torch.where(live, lower, math.inf).amin(-1)
        end = torch.where(live, upper, -math.inf).amax(-1)
        start = torch.where(torch.isfinite(start), start, 0.0).float().double()
        end = torch.where(torch.isfinite(end), end, start)
        # +f at a lower edge, −f at an upper one; equal edges (adjacent bins) merge into one
        live2 = live.repeat(1, 1, 2)
        edges, order = torch.sort(torch.where(live2, torch.cat([lower, upper], -1), start[..., None]), -1)
        jumps = torch.cat([dens, -dens], -1).gather(-1, order)
        new = torch.ones_like(edges, dtype=torch.bool)
        new[..., 1:] = edges[..., 1:] != edges[..., :-1]
        group = torch.cumsum(new, -1) - 1
        n = int(group.max().item()) + 1
        merged = torch.zeros(*edges.shape[:2], n, dtype=torch.float64).scatter_add_(-1, group, jumps)
        at = start[..., None].expand(*edges.shape[:2], n).clone().scatter_(-1, group, edges)
        return at, merged, start, end

    def hermite_cells(self, r: float) -> HermiteCells | None:
        """The expert's cells at r (module docstring), None when a target would need more than
        ``FGT_MAX_CELLS`` cells (small r: the exact path is cheap enough there)."""
        h, half = FGT_CELL * r, FGT_CELL / 2
        edges, jumps, start, end = self.jumps
        n_real = int(torch.ceil((end - start) / h).max().item()) + 1
        if n_real > FGT_MAX_CELLS:
            return None
        pos = (edges - start[..., None]) * (1.0 / h)
        cell = torch.clamp(torch.floor(pos), 0, n_real - 1)
        s_edge = (pos - cell - 0.5) * FGT_CELL  # (e − m_c)/r ∈ [−γ/2, γ/2]
        power = torch.arange(1, FGT_ORDER + 2, dtype=torch.float64)  # j + 1
        inv_fact = r * torch.exp(-torch.lgamma(power + 1))  # r / (j + 1)!
        # ∫_e^{R_c} Δ s^j dx / j! = Δ r (s_R^{j+1} − s_e^{j+1}) / (j + 1)!
        s_pow = s_edge[..., None].expand(*s_edge.shape, FGT_ORDER + 1).cumprod(-1)
        per_edge = (half**power * inv_fact - s_pow * inv_fact) * jumps[..., None]
        shape = (*edges.shape[:2], n_real)
        index = cell.long()
        moments = torch.zeros(*shape, FGT_ORDER + 1, dtype=torch.float64)
        moments.scatter_add_(2, index[..., None].expand_as(per_edge), per_edge)
        step = torch.zeros(shape, dtype=torch.float64).scatter_add_(2, index, jumps)
        left = torch.cumsum(step, -1) - step  # density at each cell's left end
        moments += left[..., None] * ((half**power - (-half) ** power) * inv_fact)
        coef = torch.cat([moments @ hermite_to_monomial(FGT_ORDER), moments[..., :1]], -1)
        pad = 2 * HermiteCells.half_window() + 1
        coef = torch.nn.functional.pad(coef, (0, 0, pad, pad))
        # left-out mass beyond K r (in Q and its derivative) and cumulative-sum rounding of densities
        rounding = 2.6 * r * 2.3e-16 * edges.shape[-1] * jumps.abs().sum(-1)
        floor = moments[..., 0].sum(-1) * FGT_WINDOW * math.exp(-0.5 * FGT_WINDOW**2) + rounding
        return HermiteCells(r, start.float(), coef.float(), floor.float())

    def score(self, yhat: Tensor, task: Tensor, r: float) -> Tensor:
        """``d/dy log q̃_r(ŷ)`` (N, M) at ŷ (N, M) of rows of tasks ``task`` (N,), r > 0 (the
        :class:`llmflow.poe.Expert` interface). Fast path where its bound holds, the exact
        log-space path for the remaining samples and targets.
        """
        cells = self.hermite_cells(r)
        if cells is None:
            return self.grad_log_density(yhat, task, r)
        out = torch.empty(yhat.shape, dtype=torch.float32, device=yhat.device)
        trusted = torch.empty(yhat.shape, dtype=torch.bool, device=yhat.device)
        rows = max(1, ROW_CHUNK_ELEMENTS // (yhat.shape[1] * cells.coef.shape[-1] * (2 * cells.half_window() + 1)))
        for start in range(0, len(yhat), rows):
            chunk = slice(start, start + rows)
            out[chunk], trusted[chunk] = cells.score(yhat[chunk], task[chunk])
        row, col = torch.nonzero(~trusted, as_tuple=True)
        if len(row):
            out[row, col] = self.pair_grad_log_density(yhat[row, col], task[row], col, r).float()
        return out.to(yhat.dtype)

    def pair_grad_log_density(self, y: Tensor, task: Tensor, target: Tensor, r: float) -> Tensor:
        """Exact ``d/dy log q̃_r(y)`` for single (task, target) pairs: y, task, target (K,) → (K,)."""
        out = torch.empty(y.shape, dtype=self.lower.dtype, device=y.device)
        chunk = max(1, ROW_CHUNK_ELEMENTS // self.lower.shape[2])
        for s in range(0, len(y), chunk):
            k, m = task[s:s + chunk], target[s:s + chunk]
            out[s:s + chunk] = exact_grad_log_q(self.lower[k, m], self.upper[k, m], self.log_coef[k, m],
                                                y[s:s + chunk, None].to(out.dtype), r)
        return out


def store_dataset(x_target: np.ndarray, y_target: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  logp: np.ndarray, complete: np.ndarray, per_target: dict[str, np.ndarray],
                  attrs: dict, loo: dict[str, np.ndarray] | None = None) -> xr.Dataset:
    """One task's expert store: x_target (M, D), y_target (M,), the bins lower, upper, logp,
    complete (M, B) in data units (padded with NaN edges, −inf logp, False; logp not
    renormalised: the lost mass stays lost), ``per_target`` diagnostics (M,) each (the expert
    stage writes ``lost_mass`` and ``nll_target``, read by :meth:`BinnedDensity.from_store`).
    ``loo``: the leave-one-out densities at held-out context points (x (K, D), y (K,), lower,
    upper, logp (K, B'), nll (K,)), stored as ``loo_*`` over (loo, loo_bin) and read by
    :meth:`BinnedDensity.loo_from_store`."""
    per_bin = {"lower": lower, "upper": upper, "logp": logp, "complete": complete}
    data = {
        "x_target": (("target", "x_dim"), x_target),
        "y_target": (("target",), y_target),
        **{k: (("target", "bin"), v) for k, v in per_bin.items()},
        **{k: (("target",), v) for k, v in per_target.items()},
    }
    if loo is not None:
        data |= {"loo_x": (("loo", "x_dim"), loo["x"]), "loo_y": (("loo",), loo["y"]),
                 **{f"loo_{k}": (("loo", "loo_bin"), loo[k]) for k in ("lower", "upper", "logp")},
                 "loo_nll": (("loo",), loo["nll"])}
    return xr.Dataset(data, attrs=attrs)


def check_store_targets(ds: xr.Dataset, task: Task, where: str) -> None:
    """ValueError naming ``where`` unless the store's targets are ``task``'s: the same x and the
    same truths (NaN where unknown)."""
    x, y = ds["x_target"].values, ds["y_target"].values
    same = x.shape == task.x_target.shape and np.array_equal(x, task.x_target)
    same = same and np.array_equal(y, task.y_target, equal_nan=True)
    if not same:
        raise ValueError(f"{where}: the expert store's {len(y)} targets are not those of task {task.name!r} "
                         f"({len(task.y_target)} targets); rerun its expert job")
