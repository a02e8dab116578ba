"""Exact Gaussian-process computations: prior draws, posteriors, log marginal likelihoods.

All linear algebra is float64 with a Cholesky factorisation; a small jitter is added to the
diagonal and grown (×10) until the factorisation succeeds, so near-singular kernels (long
length-scales, dense points) still sample stably.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, solve_triangular

from llmflow.kernels import Kernel

LOG_2PI = float(np.log(2.0 * np.pi))


def stable_cholesky(cov: np.ndarray, jitter: float = 1e-9, max_tries: int = 8) -> np.ndarray:
    """Lower Cholesky factor of ``cov`` (n, n), adding jitter·mean(diag) (jitter alone where the
    diagonal is 0) ×10 per try until it succeeds; LinAlgError after ``max_tries``."""
    cov = np.asarray(cov, dtype=np.float64)
    scale = (float(np.mean(np.diag(cov))) if cov.size else 1.0) or 1.0
    eye = np.eye(cov.shape[0])
    for attempt in range(max_tries):
        try:
            return np.linalg.cholesky(cov + (jitter * 10.0**attempt) * scale * eye)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(f"covariance not positive definite even with jitter {jitter * 10.0**max_tries:g}")


def sample_prior(
    kernel: Kernel, x: np.ndarray, noise_std: float, rng: np.random.Generator, n_draws: int = 1
) -> np.ndarray:
    """Draws of noisy observations ``y = f(x) + ε``, ``ε ~ N(0, noise_std²)``.

    x: (n, D). Returns (n_draws, n).
    """
    cov = kernel(x, x) + noise_std**2 * np.eye(x.shape[0])
    chol = stable_cholesky(cov)
    z = rng.standard_normal((n_draws, x.shape[0]))
    return z @ chol.T


@dataclass(frozen=True)
class GaussianPosterior:
    """Posterior predictive N(mean, cov) at target inputs (noisy observations)."""

    mean: np.ndarray  # (m,)
    cov: np.ndarray  # (m, m)

    def log_prob(self, y: np.ndarray) -> float:
        """Joint log-density of ``y`` (m,) in nats."""
        chol = stable_cholesky(self.cov)
        diff = solve_triangular(chol, np.asarray(y) - self.mean, lower=True)
        return float(-0.5 * diff @ diff - np.log(np.diag(chol)).sum() - 0.5 * len(y) * LOG_2PI)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, m) draws."""
        chol = stable_cholesky(self.cov)
        return self.mean + rng.standard_normal((n, len(self.mean))) @ chol.T


def posterior(
    kernel: Kernel, x_ctx: np.ndarray, y_ctx: np.ndarray, x_tgt: np.ndarray, noise_std: float
) -> GaussianPosterior:
    """Predictive distribution of noisy ``y`` at ``x_tgt`` (m, D) given context (n, D), (n,).

    With no context points this is the prior predictive.
    """
    k_tt = kernel(x_tgt, x_tgt) + noise_std**2 * np.eye(x_tgt.shape[0])
    if x_ctx.shape[0] == 0:
        return GaussianPosterior(np.zeros(x_tgt.shape[0]), k_tt)
    k_cc = kernel(x_ctx, x_ctx) + noise_std**2 * np.eye(x_ctx.shape[0])
    k_ct = kernel(x_ctx, x_tgt)
    chol = stable_cholesky(k_cc)
    mean = k_ct.T @ cho_solve((chol, True), y_ctx)
    v = solve_triangular(chol, k_ct, lower=True)
    cov = k_tt - v.T @ v
    return GaussianPosterior(mean, 0.5 * (cov + cov.T))


def log_marginal_likelihood(kernel: Kernel, x: np.ndarray, y: np.ndarray, noise_std: float) -> float:
    """log p(y | x) under the GP prior with Gaussian observation noise, in nats."""
    prior_pred = posterior(kernel, x[:0], y[:0], x, noise_std)
    return prior_pred.log_prob(y)
