"""ODE sampling and ΠGDM-style guidance against analytic velocity fields."""

import numpy as np
import pytest
import torch

from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation
from llmflow.poe import ExpertTerm
from llmflow.sampler import sample

from fields import ConditionalGPField


class GaussianField:
    """Exact velocity for independent data y1_i ~ N(mu_i, var_i) (model units), any number of points.

    mu/var are functions of x so that context and target points can differ.
    """

    def __init__(self, mu=lambda x: 0.0 * x, var=lambda x: 1.0 + 0.0 * x):
        self.mu, self.var = mu, var

    def __call__(self, x, y, t, mask=None):
        t = t[:, None]
        mu, var = self.mu(x[..., 0]), self.var(x[..., 0])
        v_t = t**2 * var + (1 - t) ** 2
        yhat = mu + t * var / v_t * (y - t * mu)
        return (yhat - y) / (1 - t)


class CorrelatedGaussianField:
    """Exact velocity for y1 ~ N(0, K) on a fixed set of points: yhat = t K (t² K + σ² I)⁻¹ y_t."""

    def __init__(self, k: torch.Tensor):
        self.k = k

    def __call__(self, x, y, t, mask=None):
        t0 = t[0]
        a = t0 * self.k @ torch.linalg.inv(t0**2 * self.k + (1 - t0) ** 2 * torch.eye(len(self.k)))
        yhat = y @ a.T
        return (yhat - y) / (1 - t0)


def _model(field, loc=0.0, scale=1.0):
    return TrainedNDP(field, YNormalisation(loc, scale))


@pytest.mark.parametrize("solver,steps", [("euler", 200), ("heun", 40)])
def test_unconditional_samples_have_the_right_moments(solver, steps):
    field = GaussianField(mu=lambda x: x, var=lambda x: 0.25 + x**2)
    x = torch.tensor([[[-1.0], [0.0], [0.5], [1.5]]])
    loc, scale = 3.0, 2.0
    s = sample(_model(field, loc, scale), None, None, x, 20000, solver=solver, steps=steps,
               generator=torch.Generator().manual_seed(1))
    xs = x[0, :, 0].numpy()
    assert s.y_tgt.shape == (1, 20000, 4) and s.y_ctx.shape == (1, 20000, 0)
    np.testing.assert_allclose(s.y_tgt[0].mean(0), loc + scale * xs, atol=0.05)
    np.testing.assert_allclose(s.y_tgt[0].var(0), scale**2 * (0.25 + xs**2), rtol=0.05)


@pytest.mark.parametrize("jacobian", ["exact", "free"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_context_guidance_is_exact_for_unit_gaussian_data(jacobian, solver):
    # y1 ~ N(0, I): the Gaussian approximation is exact, so the context rows must follow the
    # posterior N(z / (1 + s²), s² / (1 + s²)) and the (independent) targets stay N(0, 1).
    noise = 0.5
    x_ctx = torch.tensor([[[0.0], [1.0]], [[2.0], [3.0]]])
    y_ctx = torch.tensor([[1.5, -1.0], [0.5, 2.0]])
    x_tgt = torch.tensor([[[5.0]], [[6.0]]])
    s = sample(_model(GaussianField()), x_ctx, y_ctx, x_tgt, 20000, solver=solver, steps=100,
               noise_std=noise, jacobian=jacobian, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(s.y_ctx.mean(1), y_ctx.numpy() / (1 + noise**2), atol=0.03)
    np.testing.assert_allclose(s.y_ctx.var(1), np.full((2, 2), noise**2 / (1 + noise**2)), rtol=0.06)
    np.testing.assert_allclose(s.y_tgt.mean(1), 0.0, atol=0.03)
    np.testing.assert_allclose(s.y_tgt.var(1), 1.0, rtol=0.05)


class GaussianExpert:
    """Expert q = N(a_task, b²) at every target (b² one, or (T, M)): q convolved with N(0, r²)
    is N(a, b² + r²), whose log-gradient is (a − ŷ)/(b² + r²). Records the tasks and widths it
    is asked at (tempered copies record into the same list)."""

    def __init__(self, a: torch.Tensor, b2: float | torch.Tensor, calls: list | None = None):
        self.a, self.b2, self.calls = a, torch.as_tensor(b2, dtype=torch.float32), [] if calls is None else calls

    def temper(self, temperature):
        """q^(1/T) of N(a, b²) is N(a, b² T); T one or (T, M)."""
        return GaussianExpert(self.a, self.b2 * torch.as_tensor(temperature, dtype=torch.float32), self.calls)

    def _var(self, task, r):
        return (self.b2[task] if self.b2.ndim == 2 else self.b2) + r**2

    def score(self, y, task, r):
        self.calls.append((task, r))
        return (self.a[task][:, None] - y) / self._var(task, r)

    def log_density(self, y, task, r=0.0):
        var = self._var(task, r)
        return -0.5 * (y - self.a[task][:, None]) ** 2 / var - 0.5 * torch.log(2 * torch.pi * var)


@pytest.mark.parametrize("jacobian", ["exact", "free"])
def test_expert_term_samples_the_product_of_experts(jacobian):
    # p1 = N(0, 1) at every target times q = N(a, b²): N(a / (1 + b²), b² / (1 + b²)); the
    # sampler must ask the expert at r_t = √posterior_var(t) of its own grid.
    from llmflow.flow import posterior_var

    a, b2 = torch.tensor([2.0, -1.0]), 0.5
    expert = GaussianExpert(a, b2)
    x_tgt = torch.zeros(2, 3, 1)
    s = sample(_model(GaussianField()), None, None, x_tgt, 10000, solver="heun", steps=60,
               jacobian=jacobian, expert=ExpertTerm(expert, weight=1.0), batch_size=7000,
               generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(s.y_tgt.mean(1), np.repeat(a.numpy()[:, None] / (1 + b2), 3, 1), atol=0.03)
    np.testing.assert_allclose(s.y_tgt.var(1), b2 / (1 + b2), rtol=0.06)
    assert set(torch.cat([task for task, _ in expert.calls]).tolist()) == {0, 1}
    grid = np.linspace(1e-3, 1.0, 61)
    assert {r for _, r in expert.calls} <= {np.sqrt(posterior_var(float(t))) for t in grid}


@pytest.mark.parametrize("weight", [0.25, 2.0])
def test_the_weight_is_a_power_of_the_expert(weight):
    # p1 = N(0, 1) times q^w, q = N(a, b²): N(w a / (w + b²), b² / (w + b²)) at each target, w
    # = λ times the target's share; scaling the expert's score by w instead misses it for w ≠ 1.
    a, b2 = torch.tensor([2.0, -1.0]), 0.5
    shares = torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.5, 0.25]])
    s = sample(_model(GaussianField()), None, None, torch.zeros(2, 3, 1), 10000, solver="heun", steps=60,
               expert=ExpertTerm(GaussianExpert(a, b2), weight=weight, shares=shares), batch_size=7000,
               generator=torch.Generator().manual_seed(4))
    w = (weight * shares).numpy()
    np.testing.assert_allclose(s.y_tgt.mean(1), w * a.numpy()[:, None] / (w + b2), atol=0.03)
    np.testing.assert_allclose(s.y_tgt.var(1), b2 / (w + b2), rtol=0.06)


def test_tokens_draw_the_networks_own_conditional():
    # An analytic network with context tokens (the exact flow of a GP's conditional): the
    # context stays at its observations and the targets follow the GP posterior.
    from llmflow.gp import posterior
    from llmflow.kernels import Kernel

    field = ConditionalGPField(lengthscale=0.5, noise=0.1)
    loc, scale = 1.0, 2.0
    x_ctx, x_tgt = torch.tensor([[[-1.0], [0.0], [0.7]]]), torch.tensor([[[-0.5], [0.3], [1.5]]])
    y_ctx = torch.tensor([[0.8, -0.4, 0.5]])
    s = sample(_model(field, loc, scale), x_ctx, loc + scale * y_ctx, x_tgt, 20000, conditioning="tokens",
               solver="heun", steps=40, generator=torch.Generator().manual_seed(6))
    assert np.all(s.y_ctx[0] == (loc + scale * y_ctx.numpy())[0].astype(np.float32))
    post = posterior(Kernel("se", lengthscale=0.5), x_ctx[0].double().numpy(), y_ctx[0].double().numpy(),
                     x_tgt[0].double().numpy(), 0.1)
    np.testing.assert_allclose(s.y_tgt[0].mean(0), loc + scale * post.mean, atol=0.03)
    np.testing.assert_allclose(np.cov(s.y_tgt[0].T), scale**2 * post.cov, atol=0.03)


def test_tokens_keep_the_expert_product_exact():
    # Independent N(0, 1) data (a GP with a vanishing lengthscale and no noise): with the context
    # given as tokens, the expert's product at the targets is still N(a / (1 + b²), b² / (1 + b²)).
    a, b2 = 2.0, 0.5
    expert = GaussianExpert(torch.tensor([a]), b2)
    s = sample(_model(ConditionalGPField(lengthscale=1e-3, noise=0.0)), torch.tensor([[[-3.0], [3.0]]]),
               torch.tensor([[1.0, -1.0]]), torch.tensor([[[0.0], [1.0]]]), 10000, conditioning="tokens",
               solver="heun", steps=60, jacobian="exact", expert=ExpertTerm(expert, 1.0),
               generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(s.y_tgt[0].mean(0), a / (1 + b2), atol=0.03)
    np.testing.assert_allclose(s.y_tgt[0].var(0), b2 / (1 + b2), rtol=0.06)


def test_tokens_need_a_network_with_context_tokens():
    with pytest.raises(ValueError, match="context tokens"):
        sample(_model(GaussianField()), torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 2, 1), 4, conditioning="tokens")


def test_expert_fade_leaves_targets_at_the_context_to_the_ndp():
    # Independent N(0, 1) data, expert N(a, b²) at every target. Target 0 sits on the valid
    # context point (x = 0, weight 0), target 1 far from it (weight 1): the first must stay
    # N(0, 1), the second follow the product N(a / (1 + b²), b² / (1 + b²)). The masked-out
    # context point at x = 8 must not fade target 1.
    a, b2 = 2.0, 0.5
    expert = GaussianExpert(torch.tensor([a]), b2)
    x_ctx, y_ctx = torch.tensor([[[0.0], [8.0]]]), torch.tensor([[0.0, 0.0]])
    x_tgt = torch.tensor([[[0.0], [8.0]]])
    s = sample(_model(GaussianField()), x_ctx, y_ctx, x_tgt, 10000, ctx_mask=torch.tensor([[True, False]]),
               solver="heun", steps=60, noise_std=10.0, jacobian="exact", expert=ExpertTerm(expert, 1.0, fade=1.0),
               generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(s.y_tgt[0].mean(0), [0.0, a / (1 + b2)], atol=0.03)
    np.testing.assert_allclose(s.y_tgt[0].var(0), [1.0, b2 / (1 + b2)], rtol=0.06)


def test_results_do_not_depend_on_batch_size():
    torch.manual_seed(0)
    x_tgt, y_ctx = torch.randn(3, 4, 1), torch.randn(3, 2)
    kw = dict(steps=5, jacobian="exact", noise_std=0.1)
    full = sample(_model(GaussianField()), x_tgt[:, :2], y_ctx, x_tgt, 5, batch_size=4096,
                  generator=torch.Generator().manual_seed(0), **kw)
    chunked = sample(_model(GaussianField()), x_tgt[:, :2], y_ctx, x_tgt, 5, batch_size=4,
                     generator=torch.Generator().manual_seed(0), **kw)
    np.testing.assert_allclose(chunked.y_tgt, full.y_tgt, atol=1e-6)
    np.testing.assert_allclose(chunked.y_ctx, full.y_ctx, atol=1e-6)


@pytest.mark.parametrize("conditioning", ["tokens", "guidance"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_zero_noise_conditioning_passes_through_the_context(solver, conditioning):
    torch.manual_seed(0)
    net = NDP(NDPConfig(dim=32, depth=2, heads=4))
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.2)
    model = TrainedNDP(net.eval(), YNormalisation(0.5, 2.0))
    x_ctx, y_ctx = torch.rand(2, 3, 1), torch.randn(2, 3)
    ctx_mask = torch.tensor([[True, True, True], [True, False, False]])
    s = sample(model, x_ctx, y_ctx, torch.rand(2, 4, 1), 16, ctx_mask=ctx_mask, conditioning=conditioning, solver=solver, steps=20,
               noise_std=0.0, jacobian="free", generator=torch.Generator().manual_seed(4))
    want = np.broadcast_to(y_ctx.numpy()[:, None, :], s.y_ctx.shape)
    np.testing.assert_allclose(s.y_ctx[ctx_mask.numpy()[:, None, :].repeat(16, 1)], want[ctx_mask.numpy()[:, None, :].repeat(16, 1)], atol=1e-4)


def test_zero_noise_exact_jacobian_interpolates_a_correlated_gaussian():
    xs = torch.linspace(-1, 1, 6, dtype=torch.float64)
    k = torch.exp(-0.5 * (xs[:, None] - xs[None]) ** 2 / 0.5**2) + 1e-4 * torch.eye(6, dtype=torch.float64)
    field = CorrelatedGaussianField(k.float())
    z = torch.tensor([[0.8, -0.4]])
    s = sample(_model(field), torch.zeros(1, 2, 1), z, torch.zeros(1, 4, 1), 2000, solver="euler", steps=200,
               noise_std=0.0, jacobian="exact", generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(s.y_ctx[0], np.broadcast_to(z.numpy(), (2000, 2)), atol=0.02)
