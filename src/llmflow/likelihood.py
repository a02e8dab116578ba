"""Exact log-likelihood of the NDP by the probability-flow ODE.

The NDP's velocity ``u_θ(y, t | x)`` defines the ODE ``dy/dt = u`` that carries the base law at
``t0`` to the model's joint law of the task's points at ``t = 1``. Along one trajectory the
log-density obeys the instantaneous change of variables (Chen et al. 2018; FFJORD):

    d/dt log p_t(y_t) = −∇·u(y_t, t),   ∇·u = Σ_i ∂u_i/∂y_i   (valid points i only),

so the density of data ``y1`` (model units, N valid points) is

    log p_1(y1) = log p_t0(y_t0) − ∫_{t0}^{1} ∇·u(y_t, t) dt,

with ``y_t`` found by integrating the ODE backward from ``y_1 = y1``. Both integrals are one
augmented ODE ``d(y, ℓ)/dt = (u, ∇·u)`` solved with classical RK4 from t = 1 down to t0, then
``log p_1(y1) = log p_t0(y_t0) − ℓ(1) + ℓ(t0)``.

Time grid: ``t_k = t0 + (1 − t0) sin(π k / 2K)``, k = 0..K, dense near t = 1. For data with a
small noise floor s² (model units) the velocity changes on the scale ``1 − t ≈ s`` there; on an
analytic GP flow (SE ℓ = 0.25, noise 0.05, 60 points) this grid with K = 16 steps is accurate to
2·10⁻⁴ nats per point where a uniform grid is off by 3·10⁻³ (K = 32: 10⁻⁵ vs 10⁻⁴).

Treatment of t0: the exact marginal at t0 is the law of ``t0 y1 + (1 − t0) y0``. We use
``log p_t0 = log N(0, (σ_t0² + α_t0²) I)`` — the sampler's start law (:mod:`llmflow.sampler`),
so the likelihood is the density of the very distribution the unguided sampler draws from, up
to discretisation. For unit-variance Gaussian data it is exact; for data covariance Σ (model
units) the log-density error is O(t0² tr(Σ − I)) nats, ~10⁻⁶ per point at t0 = 10⁻³.

Divergence: ``exact`` takes the trace of the Jacobian (N vector-Jacobian products as one
batched backward pass over N copies of the task: cost ≈ N network rows with a backward pass); ``hutchinson`` replaces the trace by ``εᵀ (∂u/∂y) ε`` with Rademacher ε
(``probes`` per task, fixed along a trajectory as in FFJORD) at the cost of one network row and
``probes`` backward passes. The trajectory does not depend on ε and ℓ is linear in the trace,
so the log-density estimate is unbiased; its variance grows with N (use it for large N).

Context points (networks with context tokens, :class:`llmflow.ndp.NDPConfig`): flagged points
stay fixed at their values and only the others flow, so the same ODE gives the model's direct
conditional ``log p(y_tgt | context)``; the divergence and the base law run over the flowing
points only. Without them, a conditional is the ratio ``p(ctx ∪ tgt) / p(ctx)`` of two joints.

Units: inputs in data units; the network works in ``y_model = (y − loc)/scale``, so data-unit
densities add the Jacobian ``−N log(scale)`` of the affine map (N the flowing points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from llmflow.config import Section
from llmflow.ndp import TrainedNDP
from llmflow.sampler import SamplerConfig, time_grid, uses_tokens

DIVERGENCES = ("exact", "hutchinson")


@dataclass(frozen=True)
class LikelihoodConfig(Section):
    """ODE log-likelihood settings (``config["bench"]["gp_oracle"]["likelihood"]``): steps (RK4
    steps on the sine grid, 4 velocity evaluations each), divergence (exact | hutchinson),
    probes (Hutchinson probe vectors per task), marginals (the GP-oracle benchmark also scores
    each target's marginal), batch_size (network rows per evaluation; the exact divergence
    spends a row per flowing point, so tasks with k of them go batch_size // k at a time); t0 (start time of
    the flow) is the sampler's."""

    KEY: ClassVar[str] = "bench.gp_oracle.likelihood"
    DERIVED: ClassVar[tuple[str, ...]] = ("t0",)
    steps: int = 4
    t0: float = SamplerConfig.t0
    divergence: str = "exact"
    probes: int = 1
    marginals: bool = True
    batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be in {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 < self.t0 < 1.0 or self.steps < 1 or self.probes < 1:
            raise ValueError(f"need 0 < t0 < 1, steps >= 1, probes >= 1: {self}")


def base_log_density(y: Tensor, mask: Tensor, t0: float) -> Tensor:
    """``log N(y; 0, (σ_t0² + α_t0²) I)`` over the valid points; y (B, N), mask (B, N) → (B,)."""
    var = (1.0 - t0) ** 2 + t0**2
    m = mask.to(torch.float64)
    return (-0.5 * y.double() ** 2 / var * m).sum(-1) - 0.5 * m.sum(-1) * np.log(2 * np.pi * var)


def _context_args(context: Tensor | None) -> tuple[Tensor, ...]:
    return () if context is None else (context,)


def _exact_field(model: TrainedNDP, x: Tensor, mask: Tensor, context: Tensor | None):
    """(y, t) → (u, ∇·u): velocity and the trace of its Jacobian over the flowing points
    ``mask`` (B, N) float, 0 at padded and context points; context (B, N) bool or None.

    The task is copied once per flowing point (R = mask.sum() network rows); the copy of point
    i back-propagates ``u_i`` alone, so one backward pass yields every diagonal entry
    ``∂u_i/∂y_i``, and copy i's ``u_i`` is the velocity. Context and padded points get no copy:
    a marginal's n + 1 points cost one row, not n + 1. (``torch.func``'s vmap(jacrev) computes
    the same, but attention has no batching rule and falls back to a loop.)
    """
    b, n = mask.shape
    task, point = torch.nonzero(mask.bool(), as_tuple=True)  # (R,) each: a row's task and point
    valid = mask.bool() if context is None else mask.bool() | context
    x_rep, mask_rep = x[task], valid[task]
    ctx_rep = _context_args(None if context is None else context[task])
    pick = torch.nn.functional.one_hot(point, n).float()  # (R, N): the row's own point
    row = torch.arange(len(task), device=mask.device)

    def field(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
        u_out = torch.zeros(b, n, device=y.device)
        div = torch.zeros(b, device=y.device)
        if len(task):
            with torch.enable_grad():
                y_rep = y[task].detach().requires_grad_(True)
                u = model.net(x_rep, y_rep, torch.full((len(task),), t, device=y.device), mask_rep, *ctx_rep).float()
                (grad,) = torch.autograd.grad(u, y_rep, grad_outputs=pick)
            u_out[task, point] = u.detach()[row, point]
            div.index_add_(0, task, grad[row, point])
        return u_out, div

    return field


def _hutchinson_field(model: TrainedNDP, x: Tensor, mask: Tensor, context: Tensor | None, eps: Tensor):
    """(y, t) → (u, mean over probes of εᵀ (∂u/∂y) ε); eps (P, B, N), zero where ``mask`` (the
    flowing points, float) is."""
    valid = mask.bool() if context is None else mask.bool() | context

    def field(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tt = torch.full((len(y),), t, device=y.device)
        with torch.enable_grad():
            y_in = y.detach().requires_grad_(True)
            u = model.net(x, y_in, tt, valid, *_context_args(context)).float()
            vjp = torch.autograd.grad(u, y_in, grad_outputs=eps, is_grads_batched=True)[0]
        return u.detach() * mask, (vjp * eps).sum(-1).mean(0)

    return field


def _rk4_backward(field, y1: Tensor, grid: np.ndarray) -> tuple[Tensor, Tensor]:
    """Integrate ``d(y, ℓ)/dt = field(y, t)`` from t = grid[-1] down to grid[0]; returns
    (y_t0, ℓ(t0) − ℓ(1)) = (y at t0, −∫_{t0}^{1} ∇·u dt)."""
    y, ell = y1, torch.zeros(len(y1), dtype=torch.float64, device=y1.device)
    for k in range(len(grid) - 1, 0, -1):
        t, h = float(grid[k]), float(grid[k - 1] - grid[k])
        v1, d1 = field(y, t)
        v2, d2 = field(y + 0.5 * h * v1, t + 0.5 * h)
        v3, d3 = field(y + 0.5 * h * v2, t + 0.5 * h)
        v4, d4 = field(y + h * v3, t + h)
        y = (y + h / 6.0 * (v1 + 2 * v2 + 2 * v3 + v4)).detach()
        ell = ell + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4).detach().double()
    return y, ell


def log_density(
    model: TrainedNDP,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    mask: np.ndarray | Tensor | None = None,
    cfg: LikelihoodConfig = LikelihoodConfig(),
    generator: torch.Generator | None = None,
    context: np.ndarray | Tensor | None = None,
) -> np.ndarray:
    """Log-density of each task's points under the NDP, in nats, data units.

    x (T, N, D), y (T, N) in data units; mask (T, N) bool, True = valid point (None = all).
    context (T, N) bool: valid points given to a network with context tokens, fixed (None: no
    context, the joint). generator: CPU generator for the Hutchinson probes. Returns (T,)
    float64: ``log p(y_valid)`` or, with context, ``log p(y_other | y_context)``. Cost per task:
    4·steps velocity evaluations, each one network row per flowing (non-context, valid) point
    with a backward pass (exact) or one row with ``probes`` backward passes (Hutchinson).
    """
    dev = model.device
    x, y = (a.float().to(dev) if isinstance(a, Tensor) else torch.from_numpy(np.array(a, dtype=np.float32)).to(dev) for a in (x, y))
    n_tasks, n = y.shape
    mask = torch.ones(n_tasks, n, dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    mask = mask.to(dev)
    if context is not None:
        if not model.context_tokens:
            raise ValueError("a context for log_density needs a network with context tokens")
        context = torch.as_tensor(np.asarray(context), dtype=torch.bool).to(dev) & mask
        mask = mask & ~context  # the flowing points
    y_model = model.norm.to_model(y) * (mask if context is None else mask | context).float()
    maskf = mask.float()
    grid = time_grid(cfg.steps, cfg.t0, "sine")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    eps = (2.0 * torch.randint(0, 2, (cfg.probes, n_tasks, n), generator=gen) - 1.0).to(dev) * maskf

    # exact: one network row per flowing point, at most batch_size rows per evaluation
    rows = int(mask.sum(-1).max()) if n_tasks else 1
    chunk = max(1, cfg.batch_size // max(rows, 1)) if cfg.divergence == "exact" else cfg.batch_size
    out = np.empty(n_tasks)
    for lo in range(0, n_tasks, chunk):
        sl = slice(lo, min(lo + chunk, n_tasks))
        ctx = None if context is None else context[sl]
        if cfg.divergence == "exact":
            field = _exact_field(model, x[sl], maskf[sl], ctx)
        else:
            field = _hutchinson_field(model, x[sl], maskf[sl], ctx, eps[:, sl])
        y0, ell = _rk4_backward(field, y_model[sl], grid)
        logp = base_log_density(y0, mask[sl], cfg.t0) + ell - mask[sl].sum(-1) * np.log(model.norm.scale)
        out[sl] = logp.cpu().numpy()
    return out


def _valid_masks(
    y_ctx: np.ndarray, y_tgt: np.ndarray, ctx_mask: np.ndarray | None, tgt_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean context (T, n) and target (T, m) masks; None means every point is valid."""
    ctx = np.ones(np.shape(y_ctx), bool) if ctx_mask is None else np.asarray(ctx_mask, bool)
    tgt = np.ones(np.shape(y_tgt), bool) if tgt_mask is None else np.asarray(tgt_mask, bool)
    return ctx, tgt


def conditional_log_likelihood(
    model: TrainedNDP,
    x_ctx: np.ndarray,
    y_ctx: np.ndarray,
    x_tgt: np.ndarray,
    y_tgt: np.ndarray,
    ctx_mask: np.ndarray | None = None,
    tgt_mask: np.ndarray | None = None,
    cfg: LikelihoodConfig = LikelihoodConfig(),
    generator: torch.Generator | None = None,
    conditioning: str = SamplerConfig.conditioning,
) -> np.ndarray:
    """Per-target conditional log-likelihood ``log p(tgt | ctx) / m`` (T,), nats.

    conditioning (as the sampler's): ``tokens`` — the network's direct conditional, one ODE
    density with the context fixed; ``guidance`` — the ratio ``p(ctx ∪ tgt) / p(ctx)`` of two
    joints (the NDP models the joint of any finite point set; a task with no context has
    ``log p(ctx) = 0``); ``auto`` — tokens where the network has them. x_ctx (T, n, D), y_ctx
    (T, n), x_tgt (T, m, D), y_tgt (T, m), data units; masks mark valid points (None = all);
    m counts each task's valid targets.
    """
    n_tasks, n = np.shape(y_ctx)
    ctx_mask, tgt_mask = _valid_masks(y_ctx, y_tgt, ctx_mask, tgt_mask)
    x, y = np.concatenate([x_ctx, x_tgt], 1), np.concatenate([y_ctx, y_tgt], 1)
    mask = np.concatenate([ctx_mask, tgt_mask], 1)
    if uses_tokens(model, conditioning):
        context = np.concatenate([ctx_mask, np.zeros_like(tgt_mask)], 1)
        return log_density(model, x, y, mask, cfg, generator, context) / tgt_mask.sum(1)
    joint = log_density(model, x, y, mask, cfg, generator)
    ctx = log_density(model, x_ctx, y_ctx, ctx_mask, cfg, generator) if n else np.zeros(n_tasks)
    return (joint - ctx) / tgt_mask.sum(1)


def marginal_log_likelihood(
    model: TrainedNDP,
    x_ctx: np.ndarray,
    y_ctx: np.ndarray,
    x_tgt: np.ndarray,
    y_tgt: np.ndarray,
    ctx_mask: np.ndarray | None = None,
    tgt_mask: np.ndarray | None = None,
    cfg: LikelihoodConfig = LikelihoodConfig(),
    generator: torch.Generator | None = None,
    conditioning: str = SamplerConfig.conditioning,
) -> np.ndarray:
    """Exact per-target marginal ``log p(y_i | ctx)`` (T, m), nats: direct, or
    ``log p(ctx ∪ {i}) − log p(ctx)``, by ``conditioning`` as in :func:`conditional_log_likelihood`.

    One ODE density per (task, target) on n + 1 points (shapes as in
    :func:`conditional_log_likelihood`); NaN at padded targets. Cost: m ODE solves per task,
    each one network row per evaluation with context tokens (only the target flows), n + 1
    rows plus the context's own solve by the joint ratio.
    """
    n_tasks, n = np.shape(y_ctx)
    m = np.shape(y_tgt)[1]
    ctx_mask, tgt_mask = _valid_masks(y_ctx, y_tgt, ctx_mask, tgt_mask)
    # (T·m) point sets: the task's context followed by one of its targets.
    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(a), m, axis=0)

    x = np.concatenate([rep(x_ctx), np.asarray(x_tgt).reshape(n_tasks * m, 1, -1)], 1)
    y = np.concatenate([rep(y_ctx), np.asarray(y_tgt).reshape(n_tasks * m, 1)], 1)
    mask = np.concatenate([rep(ctx_mask), tgt_mask.reshape(n_tasks * m, 1)], 1)
    if uses_tokens(model, conditioning):
        context = np.concatenate([rep(ctx_mask), np.zeros((n_tasks * m, 1), bool)], 1)
        one = log_density(model, x, y, mask, cfg, generator, context).reshape(n_tasks, m)
        return np.where(tgt_mask, one, np.nan)
    one = log_density(model, x, y, mask, cfg, generator).reshape(n_tasks, m)
    ctx = log_density(model, x_ctx, y_ctx, ctx_mask, cfg, generator) if n else np.zeros(n_tasks)
    return np.where(tgt_mask, one - ctx[:, None], np.nan)
