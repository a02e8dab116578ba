"""Twisted SMC draws from the product of experts where the guided ODE's approximation fails."""

import numpy as np
import pytest
import torch
from scipy import stats

from llmflow.ndp import TrainedNDP, YNormalisation
from llmflow.binned import BinnedDensity
from llmflow.poe import ExpertTerm
from llmflow.sampler import sample
from llmflow.smc import effective_sample_size, sample_smc, systematic_resample

MEANS, VAR = torch.tensor([-1.5, 1.5]), 0.3**2


class BimodalFlow(torch.nn.Module):
    """Exact velocity for y1 ~ ½N(−1.5, 0.3²) + ½N(1.5, 0.3²) at every point (independent).

    Given component k, y_t ~ N(t μ_k, t² v + (1 − t)²) and E[y1 | y_t, k] is linear in y_t; the
    velocity is (E[y1 | y_t] − y_t)/(1 − t) with the components' posterior responsibilities.
    """

    def forward(self, x, y, t, mask=None):
        t = t[:, None, None]
        yk = y[..., None]
        var_t = t**2 * VAR + (1 - t) ** 2
        log_resp = -0.5 * (yk - t * MEANS) ** 2 / var_t
        resp = torch.softmax(log_resp, dim=-1)
        mean_k = MEANS + t * VAR / var_t * (yk - t * MEANS)
        yhat = (resp * mean_k).sum(-1)
        return (yhat - y) / (1 - t[..., 0])


def gaussian_bins(centre: float, sd: float) -> BinnedDensity:
    edges = np.arange(-6.0, 6.0001, 0.1)
    mass = np.diff(stats.norm.cdf(edges, centre, sd))
    return BinnedDensity.from_arrays(edges[None, None, :-1], edges[None, None, 1:], np.log(mass)[None, None])


def product_cdf(expert: BinnedDensity) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(-4, 4, 40001)
    p1 = 0.5 * stats.norm.pdf(grid, -1.5, 0.3) + 0.5 * stats.norm.pdf(grid, 1.5, 0.3)
    q = expert.log_density(torch.as_tensor(grid)[:, None], torch.zeros(len(grid), dtype=torch.long)).exp()[:, 0].numpy()
    cdf = np.cumsum(p1 * q)
    return grid, cdf / cdf[-1]


def test_smc_corrects_the_guided_ode_on_a_bimodal_flow():
    # The expert favours the right mode: the product puts ~94% of its mass there. The guided
    # ODE's Gaussian approximation of p(y1 | y_t) is wrong for a bimodal p1, so it misses the
    # mode weights; the twisted SMC must match the product (KS on equally weighted particles).
    expert = gaussian_bins(1.0, 1.0)
    model = TrainedNDP(BimodalFlow(), YNormalisation())
    grid, cdf = product_cdf(expert)
    x = np.zeros((1, 1, 1))

    def ks(draws):
        return stats.kstest(draws, lambda v: np.interp(v, grid, cdf)).statistic

    smc = sample_smc(model, None, None, x, 2000, expert=ExpertTerm(expert), steps=30, generator=torch.Generator().manual_seed(0))
    ode = sample(model, None, None, x, 2000, solver="heun", steps=30, expert=ExpertTerm(expert),
                 generator=torch.Generator().manual_seed(0))
    d_smc, d_ode = ks(smc.y_tgt[0, :, 0]), ks(ode.y_tgt[0, :, 0])
    right = np.interp(0.0, grid, 1 - cdf)
    assert abs((smc.y_tgt[0, :, 0] > 0).mean() - right) < 0.03, ((smc.y_tgt > 0).mean(), right)
    assert d_smc < 0.06 and d_ode > 0.15, (d_smc, d_ode)
    assert smc.ess.shape == (1, 30) and smc.ess.min() < 1980  # the weights did work


def test_without_experts_the_weights_stay_equal():
    model = TrainedNDP(BimodalFlow(), YNormalisation())
    out = sample_smc(model, None, None, np.zeros((2, 3, 1)), 500, steps=30, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(out.ess, 500.0, rtol=1e-6)
    assert (out.resampled == 0).all()
    # the SDE keeps the flow's marginals: half the mass in each mode, spread 0.3
    assert abs((out.y_tgt > 0).mean() - 0.5) < 0.03
    np.testing.assert_allclose(np.abs(out.y_tgt).mean(), 1.5, atol=0.05)


def test_systematic_resampling_follows_the_weights():
    log_w = torch.log(torch.tensor([[0.7, 0.1, 0.2, 0.0]]))
    idx = systematic_resample(log_w.expand(2000, 4), torch.Generator().manual_seed(0))
    counts = torch.bincount(idx.reshape(-1), minlength=4).double() / idx.numel()
    np.testing.assert_allclose(counts.numpy(), [0.7, 0.1, 0.2, 0.0], atol=0.01)
    assert float(effective_sample_size(torch.zeros(1, 8))[0]) == pytest.approx(8.0)
    assert float(effective_sample_size(log_w)[0]) == pytest.approx(1 / (0.49 + 0.01 + 0.04))


def test_rejects_zero_context_noise():
    model = TrainedNDP(BimodalFlow(), YNormalisation())
    with pytest.raises(ValueError, match="noise_std"):
        sample_smc(model, np.zeros((1, 1, 1)), np.zeros((1, 1)), np.zeros((1, 1, 1)), 4, noise_std=0.0)


def test_tokens_keep_the_context_fixed_and_draw_the_conditional():
    # An analytic network with context tokens, no expert: the context stays at its
    # observations, the weights stay equal, and the target follows the GP posterior (zero
    # context noise is fine: the context does not guide).
    from llmflow.gp import posterior
    from llmflow.kernels import Kernel

    from fields import ConditionalGPField

    x_ctx, y_ctx, x_tgt = np.array([[[-0.4], [0.4]]]), np.array([[1.0, -0.5]]), np.array([[[0.0]]])
    out = sample_smc(TrainedNDP(ConditionalGPField(0.5, 0.1), YNormalisation()), x_ctx, y_ctx, x_tgt, 4000,
                     conditioning="tokens", noise_std=0.0, steps=60, generator=torch.Generator().manual_seed(2))
    assert np.all(out.y_ctx[0] == y_ctx.astype(np.float32))
    np.testing.assert_allclose(out.ess, 4000.0, rtol=1e-6)
    post = posterior(Kernel("se", lengthscale=0.5), x_ctx[0], y_ctx[0], x_tgt[0], 0.1)
    assert abs(out.y_tgt.mean() - post.mean[0]) < 0.03
    assert abs(out.y_tgt.std() - np.sqrt(post.cov[0, 0])) < 0.03
