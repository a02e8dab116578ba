"""Analytic velocity fields for the tests: the exact OT flow of a Gaussian process."""

from types import SimpleNamespace

import torch


class ConditionalGPField:
    """Exact velocity of a network with context tokens whose data are y ~ N(0, K) with
    K = SE(ℓ) + s² I (model units): at the flowing points f (valid, not context) it is the OT
    velocity of the conditional N(μ, Σ) given the context values c,

        μ = K_fc K_cc⁻¹ y_c,  Σ = K_ff − K_fc K_cc⁻¹ K_cf,
        u = μ + (t Σ − (1 − t) I)(t² Σ + (1 − t)² I)⁻¹ (y_t − t μ),

    and 0 elsewhere. With no context it is the joint's flow."""

    config = SimpleNamespace(context_tokens=True)

    def __init__(self, lengthscale: float, noise: float) -> None:
        self.lengthscale, self.noise = lengthscale, noise

    def __call__(self, x, y, t, mask=None, context=None):
        x, y, t = x.double(), y.double(), t.double()[:, None, None]
        mask = torch.ones(y.shape, dtype=torch.bool) if mask is None else mask.bool()
        context = torch.zeros(y.shape, dtype=torch.bool) if context is None else context.bool() & mask
        # Block formulas with diagonal selectors, batched over rows: C picks the context, F the
        # flowing points; the other diagonal entries are set to 1 so every matrix stays invertible.
        c, f = context.double(), (mask & ~context).double()
        eye = torch.eye(y.shape[1], dtype=torch.float64)
        k = torch.exp(-0.5 * (x - x.transpose(-1, -2)) ** 2 / self.lengthscale**2) + self.noise**2 * eye
        kcc = k * c[:, :, None] * c[:, None, :] + torch.diag_embed(1.0 - c)
        gain = f[:, :, None] * k * c[:, None, :] @ torch.linalg.inv(kcc) * c[:, None, :]
        mu = (gain @ y[..., None])[..., 0]
        cov = (k - gain @ k) * f[:, :, None] * f[:, None, :] + torch.diag_embed(1.0 - f)
        a = (t * cov - (1 - t) * eye) @ torch.linalg.inv(t**2 * cov + (1 - t) ** 2 * eye)
        return ((mu + (a @ (y - t[..., 0] * mu)[..., None])[..., 0]) * f).float()
