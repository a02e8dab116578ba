"""Exact NDP log-likelihood by the probability-flow ODE, against analytic Gaussian flows."""

import numpy as np
import pytest
import torch
from scipy import stats

from llmflow.flow import flow_matching_loss, sample_logit_normal
from llmflow.gp import posterior
from llmflow.kernels import Kernel
from llmflow.likelihood import (LikelihoodConfig, _exact_field, conditional_log_likelihood, log_density,
                                marginal_log_likelihood)
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation

from fields import ConditionalGPField

LS, NOISE = 0.5, 0.1


pytestmark = pytest.mark.usefixtures("one_thread")
KERNEL = Kernel("se", lengthscale=LS)


class GPField:
    """Exact velocity for y1 ~ N(0, Σ(x)), Σ = SE(ℓ) + s² I over the valid points (model units):
    ``u = (t Σ − (1 − t) I)(t² Σ + (1 − t)² I)⁻¹ y``."""

    def __call__(self, x, y, t, mask=None):
        x, y, t = x.double(), y.double(), t.double()[:, None, None]
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        cov = torch.exp(-0.5 * (x - x.transpose(-1, -2)) ** 2 / LS**2) + NOISE**2 * eye
        if mask is not None:  # padded points: independent N(0, 1), no coupling to valid ones
            valid = mask.double()
            cov = cov * valid[:, :, None] * valid[:, None, :] + torch.diag_embed(1.0 - valid)
        a = (t * cov - (1 - t) * eye) @ torch.linalg.inv(t**2 * cov + (1 - t) ** 2 * eye)
        return (a @ y[..., None])[..., 0].float()


def gp_cov(x: np.ndarray) -> np.ndarray:
    return KERNEL(x, x) + NOISE**2 * np.eye(len(x))


@pytest.fixture(scope="module")
def gp_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(3, 14, 1))
    y = np.stack([rng.multivariate_normal(np.zeros(14), gp_cov(xi)) for xi in x])
    mask = np.ones((3, 14), bool)
    mask[1, 9:] = False  # a padded task
    return x, y, mask


def exact_logpdf(x, y, mask):
    return np.array([stats.multivariate_normal(np.zeros(m.sum()), gp_cov(xi[m])).logpdf(yi[m]) for xi, yi, m in zip(x, y, mask)])


def test_ode_density_of_an_analytic_flow_is_the_gaussian_density(gp_data):
    x, y, mask = gp_data
    loc, scale = 1.5, 2.0  # data units: y_data = loc + scale · y_model, Jacobian −N log scale
    model = TrainedNDP(GPField(), YNormalisation(loc, scale))
    est = log_density(model, x, loc + scale * y, mask, LikelihoodConfig(steps=32))
    want = exact_logpdf(x, y, mask) - mask.sum(1) * np.log(scale)
    np.testing.assert_allclose(est, want, atol=1e-3)
    # a coarse grid is visibly off: the tolerance above tests the solver, not luck
    coarse = log_density(model, x, loc + scale * y, mask, LikelihoodConfig(steps=4))
    assert np.abs(coarse - want).max() > 1e-2


def test_conditional_and_marginal_likelihoods_are_the_gp_posterior(gp_data):
    x, y, mask = gp_data
    model = TrainedNDP(GPField(), YNormalisation(0.0, 1.0))
    n = 4
    cmask, tmask = mask[:, :n], mask[:, n:]
    cfg = LikelihoodConfig(steps=32)
    joint = conditional_log_likelihood(model, x[:, :n], y[:, :n], x[:, n:], y[:, n:], cmask, tmask, cfg)
    marg = marginal_log_likelihood(model, x[:, :n], y[:, :n], x[:, n:], y[:, n:], cmask, tmask, cfg)
    assert np.isnan(marg[1, 9 - n:]).all() and np.isfinite(marg[1, : 9 - n]).all()
    for i in range(len(x)):
        post = posterior(KERNEL, x[i, :n], y[i, :n], x[i, n:][tmask[i]], NOISE)
        yt = y[i, n:][tmask[i]]
        assert joint[i] == pytest.approx(post.log_prob(yt) / len(yt), abs=2e-4)
        want = stats.norm.logpdf(yt, post.mean, np.sqrt(np.diag(post.cov)))
        np.testing.assert_allclose(marg[i][tmask[i]], want, atol=1e-3)


@pytest.mark.parametrize("conditioning", ["tokens", "guidance"])
def test_direct_conditional_of_a_context_token_flow_is_the_gp_posterior(gp_data, conditioning):
    # The same analytic network read two ways: its direct conditional (context fixed, only the
    # targets flow) and the ratio of its joints; both are the exact GP posterior.
    x, y, mask = gp_data
    loc, scale = -0.5, 1.5
    model = TrainedNDP(ConditionalGPField(LS, NOISE), YNormalisation(loc, scale))
    n = 4
    cmask, tmask = mask[:, :n], mask[:, n:]
    args = (model, x[:, :n], loc + scale * y[:, :n], x[:, n:], loc + scale * y[:, n:], cmask, tmask, LikelihoodConfig(steps=32))
    joint = conditional_log_likelihood(*args, conditioning=conditioning)
    marg = marginal_log_likelihood(*args, conditioning=conditioning)
    assert np.isnan(marg[1, 9 - n:]).all()
    for i in range(len(x)):
        post = posterior(KERNEL, x[i, :n], y[i, :n], x[i, n:][tmask[i]], NOISE)
        yt = y[i, n:][tmask[i]]
        assert joint[i] == pytest.approx(post.log_prob(yt) / len(yt) - np.log(scale), abs=2e-4)
        want = stats.norm.logpdf(yt, post.mean, np.sqrt(np.diag(post.cov))) - np.log(scale)
        np.testing.assert_allclose(marg[i][tmask[i]], want, atol=2e-3)  # float32 network output


def test_a_context_needs_context_tokens(gp_data):
    x, y, mask = gp_data
    with pytest.raises(ValueError, match="context tokens"):
        conditional_log_likelihood(TrainedNDP(GPField(), YNormalisation()), x[:, :4], y[:, :4], x[:, 4:], y[:, 4:],
                                   conditioning="tokens")


def test_hutchinson_is_unbiased_for_the_exact_divergence(gp_data):
    x, y, mask = gp_data
    model = TrainedNDP(GPField(), YNormalisation(0.0, 1.0))
    cfg = LikelihoodConfig(steps=8, divergence="hutchinson", probes=4)
    runs = np.stack([log_density(model, x, y, mask, cfg, torch.Generator().manual_seed(s)) for s in range(16)])
    exact = log_density(model, x, y, mask, LikelihoodConfig(steps=8))
    spread = runs.std(0, ddof=1)
    assert (spread > 0.05).all()  # it is an estimator, not the exact trace
    assert (np.abs(runs.mean(0) - exact) < 4 * spread / np.sqrt(len(runs))).all()


def _train_tiny_ndp(steps: int = 300, n: int = 8) -> TrainedNDP:
    """An NDP trained for a few seconds on SE-GP draws (unit variance, noise 0.1)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = NDP(NDPConfig(dim=32, depth=2, heads=2, time_freqs=16))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = rng.uniform(-2, 2, size=(32, n, 1))
        y = np.stack([rng.multivariate_normal(np.zeros(n), gp_cov(xi)) for xi in x])
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        t = sample_logit_normal(32, 0.0, 1.0, gen)
        loss = flow_matching_loss(net, x, y, torch.ones(32, n, dtype=torch.bool), t, torch.randn(32, n, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return TrainedNDP(net.eval(), YNormalisation(0.0, 1.0))


@pytest.fixture(scope="module")
def tiny_ndp() -> TrainedNDP:
    return _train_tiny_ndp()


def test_trained_model_density_is_stable_in_steps_and_normalised(tiny_ndp):
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 2, size=(4, 6, 1))
    y = np.stack([rng.multivariate_normal(np.zeros(6), gp_cov(xi)) for xi in x])
    coarse, fine = (log_density(tiny_ndp, x, y, None, LikelihoodConfig(steps=s)) for s in (8, 32))
    np.testing.assert_allclose(coarse, fine, atol=0.02 * 6)
    # the model learned something: closer to the true GP density than to the N(0, I) base
    exact = exact_logpdf(x, y, np.ones((4, 6), bool))
    base = stats.norm.logpdf(y).sum(1)
    assert np.abs(fine - exact).mean() < np.abs(base - exact).mean()
    # a density: p(y1, y2) at two fixed inputs integrates to 1 over a grid (trapezoid rule)
    grid = np.linspace(-4, 4, 33)
    g1, g2 = np.meshgrid(grid, grid, indexing="ij")
    pts = np.stack([g1.ravel(), g2.ravel()], 1)
    x2 = np.broadcast_to(np.array([[[-0.3], [0.4]]]), (len(pts), 2, 1))
    dens = np.exp(log_density(tiny_ndp, x2, pts, None, LikelihoodConfig(steps=8))).reshape(33, 33)
    assert np.trapezoid(np.trapezoid(dens, grid, axis=1), grid) == pytest.approx(1.0, abs=0.03)


def test_exact_field_is_the_jacobian_trace_over_the_flowing_points():
    # One network row per flowing point: velocity and divergence must equal the full
    # Jacobian's, with context and padded points fixed (a task with no flowing point too).
    torch.manual_seed(0)
    net = NDP(NDPConfig(dim=32, depth=2, heads=2, time_freqs=16)).eval()
    with torch.no_grad():  # adaLN-zero starts at u = 0: give every weight a value
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    model = TrainedNDP(net, YNormalisation(0.0, 1.0))
    x = torch.rand(3, 5, 1) * 4 - 2
    y = torch.randn(3, 5)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    context = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    flowing = (valid & ~context).float()
    u, div = _exact_field(model, x, flowing, context)(y, 0.4)
    for b in range(3):
        def velocity(yb, b=b):
            t = torch.full((1,), 0.4)
            return net(x[b:b + 1], yb[None], t, valid[b:b + 1], context[b:b + 1])[0] * flowing[b]
        jac = torch.autograd.functional.jacobian(velocity, y[b])
        torch.testing.assert_close(u[b], velocity(y[b]), atol=1e-6, rtol=1e-5)
        assert div[b].item() == pytest.approx(float((torch.diagonal(jac) * flowing[b]).sum()), rel=1e-4, abs=1e-5)
    assert div[2].item() == 0 and (u[2] == 0).all()
