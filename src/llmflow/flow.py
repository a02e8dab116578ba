"""Optimal-transport flow matching: the probability path, its conversions, and the training loss.

Convention (the paper's): t = 0 is noise, t = 1 is data. With ``y0 ~ N(0, I)`` and data ``y1``,

    y_t = α_t y1 + σ_t y0,   α_t = t,   σ_t = 1 − t,

whose conditional velocity is ``y1 − y0``. The network ``u_θ(y_t, t)`` regresses it (MSE), and
the marginal velocity it learns converts linearly into the denoiser and the score:

    ŷ(y_t) = E[y1 | y_t] = y_t + (1 − t) u,
    s(y_t) = ∇ log p_t(y_t) = (t u − y_t) / (1 − t),
    u = (y_t + (1 − t) s) / t.

Gaussian approximation of the denoising posterior used for guidance (ΠGDM):
``p(y1 | y_t) ≈ N(ŷ, r_t² I)`` with ``r_t² = σ_t² / (σ_t² + α_t²)``, exact when the data are
N(0, I); for that case the Jacobian ``∂ŷ/∂y_t`` is ``c_t I`` with ``c_t = α_t r_t² / σ_t²
= t / (σ_t² + α_t²)``. Everything here is in the model's normalised y units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def alpha(t: Tensor | float) -> Tensor | float:
    """Signal coefficient α_t = t."""
    return t


def sigma(t: Tensor | float) -> Tensor | float:
    """Noise coefficient σ_t = 1 − t."""
    return 1.0 - t


def interpolate(y0: Tensor, y1: Tensor, t: Tensor) -> Tensor:
    """Point on the OT path, ``y_t = t y1 + (1 − t) y0``; t (B,) broadcasts over trailing dims."""
    t = t.reshape(-1, *([1] * (y1.dim() - 1)))
    return alpha(t) * y1 + sigma(t) * y0


def target_velocity(y0: Tensor, y1: Tensor) -> Tensor:
    """Conditional OT velocity ``d y_t / dt = y1 − y0``."""
    return y1 - y0


def denoised(y: Tensor, u: Tensor, t: Tensor | float) -> Tensor:
    """``ŷ = E[y1 | y_t] = y + (1 − t) u``."""
    return y + sigma(t) * u


def score_from_velocity(y: Tensor, u: Tensor, t: Tensor | float) -> Tensor:
    """``s = (t u − y) / (1 − t)``; undefined at t = 1."""
    return (alpha(t) * u - y) / sigma(t)


def velocity_from_score(y: Tensor, s: Tensor, t: Tensor | float) -> Tensor:
    """``u = (y + (1 − t) s) / t``; undefined at t = 0."""
    return (y + sigma(t) * s) / alpha(t)


def posterior_var(t: float) -> float:
    """``r_t² = σ_t² / (σ_t² + α_t²)``: variance of p(y1 | y_t) for unit-variance Gaussian data."""
    s2, a2 = sigma(t) ** 2, alpha(t) ** 2
    return s2 / (s2 + a2)


def jacobian_scale(t: float) -> float:
    """``c_t = α_t r_t² / σ_t² = t / (σ_t² + α_t²)``: the gradient-free ``∂ŷ/∂y_t ≈ c_t I``."""
    return alpha(t) / (sigma(t) ** 2 + alpha(t) ** 2)


def sample_logit_normal(n: int, mean: float, std: float, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """n flow times ``t = sigmoid(mean + std·ε)``, ε ~ N(0, 1): more weight mid-path, none at the ends."""
    eps = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(mean + std * eps)


VelocityNet = Callable[..., Tensor]
"""``(x (B, N, D), y_t (B, N), t (B,), mask (B, N) | None[, context (B, N)]) → u (B, N)``, e.g.
an :class:`~llmflow.ndp.NDP`; only networks with context tokens take ``context``."""


def flow_matching_loss(
    net: VelocityNet, x: Tensor, y1: Tensor, mask: Tensor, t: Tensor, y0: Tensor, context: Tensor | None = None
) -> Tensor:
    """Conditional flow-matching loss, the masked mean squared velocity error

        L = Σ_{b,i} m_bi (u_θ(y_t, t | x, context)_bi − (y1 − y0)_bi)² / Σ_{b,i} m_bi,

    with m the valid points that are not context. x (B, N, D); y1 data and y0 noise (B, N) in
    normalised units; mask (B, N) bool; t (B,); context (B, N) bool or None: points given to
    the network clean (their y1) and flagged, left out of the loss (CSDI-style training of the
    conditional ``p(y_tgt | context)``); None trains the joint.
    """
    yt = interpolate(y0, y1, t)
    if context is None:
        u = net(x, yt, t, mask)
    else:
        u = net(x, torch.where(context, y1, yt), t, mask, context)
        mask = mask & ~context
    err = (u.float() - target_velocity(y0, y1)) ** 2
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum()
