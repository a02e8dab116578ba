"""Twisted sequential Monte Carlo for the product of experts (``sample.method: smc``).

The guided ODE of :mod:`llmflow.sampler` draws only approximately from the product

    π(y) ∝ p_NDP(y) · N(z; y_ctx, s_n² I) · q(y_tgt)^λ,

because its guidance rests on ``p(y1 | y_t) ≈ N(ŷ, r_t² I)`` and ``J ≈ c_t I``; where that is
poor (two experts agreeing pull samples together, the paper's over-concentration) nothing
corrects it. Twisted SMC (Wu et al., 2023, here on the flow) corrects it as the particle count
grows, with the guided dynamics as proposal and the guidance's own target as twisting potential:

- transitions: Euler–Maruyama of the SDE that has the flow's marginals,
  ``dy = [u + (g_t²/2) s] dt + g_t dW``, ``g_t² = η (1 − t)``, ``s = (t u − y)/(1 − t)``; the NDP's
  own (reference) drift uses u, s; the proposal's uses the guided ``u + ((1 − t)/t) Δs`` and
  ``s + Δs``, with ``Δs = Jᵀ v`` the guidance of :class:`llmflow.sampler.GuidedProblem`;
- potentials ``log G_t(y_t) = Σ_ctx log N(z; ŷ, s_n² + r_t²) + Σ_tgt log q̃_{r_t}(ŷ)`` (q̃ the
  weighted expert ``q^λ / Z``, :mod:`llmflow.poe`)
  (with ``conditioning`` tokens the context is fixed and exact, and only the expert's term
  remains: π is then ``p_NDP(y_tgt | ctx) · q(y_tgt)^λ``);
  at t = 1, ŷ = y and r = ``r_min`` (the bins convolved with a small Gaussian, so a particle
  between bins keeps a finite weight);
- weights ``w ← w · p(y' | y) G(y') / (q(y' | y) G(y))`` (the two Gaussians' log-ratio is
  closed form), starting from ``G_{t0}``; a task's particles are resampled (systematic) when
  their effective sample size drops below ``ess_threshold · S``, and once more at t = 1 so the
  output is equally weighted.

Units as in :mod:`llmflow.sampler`: data units in and out, model units inside; the expert is a
:class:`llmflow.poe.ExpertTerm` in model units, weighted per target like the ODE's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from llmflow.flow import posterior_var, score_from_velocity
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm
from llmflow.sampler import JACOBIANS, GuidedProblem, Samples, SamplerConfig, SMCConfig, time_grid


@dataclass(frozen=True)
class SMCSamples(Samples):
    """:class:`llmflow.sampler.Samples` plus diagnostics: ess (T, steps) effective sample size
    before each step's resampling decision, resampled (T,) how many times a task resampled."""

    ess: np.ndarray
    resampled: np.ndarray


def systematic_resample(log_w: Tensor, generator: torch.Generator) -> Tensor:
    """Indices (T, S) into each row of log-weights (T, S), one uniform draw per row."""
    n_tasks, n = log_w.shape
    cdf = torch.cumsum(torch.softmax(log_w.double(), dim=1), dim=1)
    cdf[:, -1] = 1.0
    positions = (torch.arange(n, dtype=torch.float64) + torch.rand(n_tasks, 1, generator=generator, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, positions).clamp_(max=n - 1)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """``(Σw)² / Σw²`` per row of log-weights (T, S)."""
    return torch.exp(2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1))


def sample_smc(
    model: TrainedNDP,
    x_ctx: np.ndarray | Tensor | None,
    y_ctx: np.ndarray | Tensor | None,
    x_tgt: np.ndarray | Tensor,
    n_samples: int,
    *,
    expert: ExpertTerm | None = None,
    steps: int = SamplerConfig.steps,
    spacing: str = SamplerConfig.spacing,
    t0: float = SamplerConfig.t0,
    noise_std: float | np.ndarray = SamplerConfig.noise_std,
    jacobian: str = SamplerConfig.jacobian,
    conditioning: str = SamplerConfig.conditioning,
    churn: float = SMCConfig.churn,
    ess_threshold: float = SMCConfig.ess_threshold,
    r_min: float = SMCConfig.r_min,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SMCSamples:
    """``n_samples`` equally weighted particles per task from the product π (see the module).

    Arguments as :func:`llmflow.sampler.sample` (all T·S rows are integrated at once, Euler–
    Maruyama on ``steps`` steps of the ``spacing`` grid); ``expert``: the expert term in model units (None:
    context only); ``churn`` η > 0 scales the SDE's noise; ``r_min`` (model units) the width the
    expert is convolved with at t = 1. Context noise must be positive when the context guides
    (the potential at t = 1 is the context likelihood itself).
    """
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be in {JACOBIANS}")
    if churn <= 0 or not 0 < ess_threshold <= 1 or r_min <= 0:
        raise ValueError("smc needs churn > 0, 0 < ess_threshold <= 1 and r_min > 0")
    problem = GuidedProblem.build(model, x_ctx, y_ctx, x_tgt, None, None, noise_std, expert, jacobian, conditioning)
    if not problem.tokens and np.any(np.asarray(noise_std) <= 0):
        raise ValueError("smc needs a positive context noise_std")
    n_tasks, n = problem.x.shape[0], problem.n
    dev = model.device
    task = torch.arange(n_tasks, device=dev).repeat_interleave(n_samples)
    valid = problem.mask[task].float() * problem.flowing(task)  # the points that move
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def log_potential(yhat: Tensor, t: float) -> Tensor:
        out = torch.zeros(len(yhat), dtype=yhat.dtype, device=yhat.device)
        if not problem.tokens:  # tokens: the context is exact, not a potential
            var = problem.noise_var[task, None] + posterior_var(t)
            ctx = -0.5 * ((problem.z[task] - yhat) ** 2 / var + torch.log(2 * math.pi * var))
            out = (problem.is_ctx[task] * ctx).sum(1)
        if problem.expert is not None:
            r = max(math.sqrt(posterior_var(t)), r_min)
            on = problem.expert_on[task, n:]
            out = out + (on * problem.expert.log_density(yhat[:, n:], task, r)).to(out.dtype).sum(1)
        return out.double()

    grid = time_grid(steps, t0, spacing)
    y = problem.start(task, float(np.sqrt((1.0 - t0) ** 2 + t0**2)) * torch.randn(len(task), problem.x.shape[1], generator=gen).to(dev))
    u, yhat, ds = problem.terms(model, task, y, float(grid[0]))
    log_g = log_potential(yhat, float(grid[0]))
    log_w = log_g.clone()
    ess_log = np.zeros((n_tasks, steps))
    resampled = np.zeros(n_tasks, dtype=int)
    for k in tqdm(range(steps), desc="sample (smc)", disable=not progress):
        t, t_next = float(grid[k]), float(grid[k + 1])
        h = t_next - t
        w = log_w.reshape(n_tasks, n_samples)
        ess = effective_sample_size(w)
        ess_log[:, k] = ess.numpy()
        low = ess < ess_threshold * n_samples
        if low.any():
            idx = systematic_resample(w, gen) + torch.arange(n_tasks)[:, None] * n_samples
            rows = torch.where(low[:, None], idx, torch.arange(len(task)).reshape(n_tasks, n_samples)).reshape(-1)
            y, u, yhat, ds, log_g = y[rows], u[rows], yhat[rows], ds[rows], log_g[rows]
            log_w = torch.where(low.repeat_interleave(n_samples), torch.zeros_like(log_w), log_w)
            resampled += low.numpy()
        g2 = churn * (1.0 - t)
        drift_ref = valid * (u + 0.5 * g2 * score_from_velocity(y, u, t))
        drift_prop = drift_ref + ((1.0 - t) / t + 0.5 * g2) * ds
        y_next = y + h * drift_prop + math.sqrt(g2 * h) * torch.randn(y.shape, generator=gen).to(dev) * valid
        log_ratio = (valid * ((y_next - y - h * drift_prop) ** 2 - (y_next - y - h * drift_ref) ** 2)).sum(1) / (2 * g2 * h)
        if k < steps - 1:
            u, yhat, ds = problem.terms(model, task, y_next, t_next)
            log_g_next = log_potential(yhat, t_next)
        else:
            log_g_next = log_potential(y_next, 1.0)
        log_w = log_w + log_ratio.double() + log_g_next - log_g
        y, log_g = y_next, log_g_next
    idx = systematic_resample(log_w.reshape(n_tasks, n_samples), gen) + torch.arange(n_tasks)[:, None] * n_samples
    y = y[idx.reshape(-1)]
    y_data = model.norm.to_data(y.cpu()).reshape(n_tasks, n_samples, -1).double().numpy()
    return SMCSamples(y_tgt=y_data[:, :, n:], y_ctx=y_data[:, :, :n], ess=ess_log, resampled=resampled)
