"""The binned density: its store, evaluation, the convolved log-space math, and exact product-of-experts sampling."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from llmflow.ndp import TrainedNDP, YNormalisation
from llmflow import binned
from llmflow.binned import BinnedDensity, log_normal_cdf_diff
from llmflow.poe import ExpertTerm
from llmflow.sampler import sample


def bimodal_expert(edges: np.ndarray) -> BinnedDensity:
    mids = 0.5 * (edges[:-1] + edges[1:])
    p = 0.4 * stats.norm.pdf(mids, -1.2, 0.3) + 0.6 * stats.norm.pdf(mids, 1.5, 0.4)
    p = p / p.sum()
    with np.errstate(divide="ignore"):
        return BinnedDensity.from_arrays(edges[None, None, :-1], edges[None, None, 1:], np.log(p)[None, None, :])


EDGES = np.linspace(-3.0, 3.0, 25)
TASK0 = torch.zeros(1, dtype=torch.long)


def test_log_cdf_difference_is_accurate_in_both_tails():
    lo = torch.tensor([-50.0, -3.0, -0.5, 2.0, 38.0, -41.0], dtype=torch.float64)
    hi = lo + torch.tensor([1.0, 0.5, 1.0, 1e-3, 1.0, 0.25], dtype=torch.float64)
    ours = log_normal_cdf_diff(lo, hi).numpy()
    ref = [
        stats.norm.logsf(-h) + np.log1p(-np.exp(stats.norm.logsf(-l) - stats.norm.logsf(-h))) if h < 0
        else stats.norm.logsf(l) + np.log1p(-np.exp(stats.norm.logsf(h) - stats.norm.logsf(l)))
        for l, h in zip(lo.numpy(), hi.numpy())
    ]
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_gradient_matches_autograd_and_is_finite_far_away():
    expert = bimodal_expert(EDGES)
    y = torch.tensor([[-2.5], [-1.0], [0.13], [1.5], [2.9]], dtype=torch.float64, requires_grad=True)
    task = torch.zeros(5, dtype=torch.long)
    r = 0.37
    log_q = expert.log_density(y, task, r)
    auto = torch.autograd.grad(log_q.sum(), y)[0]
    np.testing.assert_allclose(expert.grad_log_density(y.detach(), task, r), auto, rtol=1e-7, atol=1e-10)
    # 1000 standard deviations above the top bin: q̃ ~ Gaussian tail, gradient ≈ −(y − 3)/r²
    far = torch.tensor([[3.0 + 1000 * r]], dtype=torch.float64)
    g = expert.grad_log_density(far, TASK0, r)
    assert torch.isfinite(g).all()
    np.testing.assert_allclose(g.item(), -1000 / r, rtol=1e-2)


def test_density_integrates_to_one_and_tends_to_the_bins():
    expert = bimodal_expert(EDGES)
    y = torch.linspace(-6, 6, 24001, dtype=torch.float64)[:, None]
    task = torch.zeros(len(y), dtype=torch.long)
    for r in (0.05, 0.5):
        q = expert.log_density(y, task, r).exp()
        assert abs(torch.trapezoid(q[:, 0], y[:, 0]).item() - 1.0) < 1e-4
    inner = torch.tensor([[0.13], [1.4]], dtype=torch.float64)
    np.testing.assert_allclose(
        expert.log_density(inner, torch.zeros(2, dtype=torch.long), 1e-4),
        expert.log_density(inner, torch.zeros(2, dtype=torch.long)), rtol=1e-6,
    )


def test_padding_and_empty_bins_are_ignored():
    lower = np.array([[[0.0, 1.0, np.nan]]])
    upper = np.array([[[1.0, 2.0, np.nan]]])
    logp = np.array([[[0.0, -np.inf, -np.inf]]])
    expert = BinnedDensity.from_arrays(lower, upper, logp)
    y = torch.tensor([[0.5], [1.5], [10.0]], dtype=torch.float64)
    g = expert.grad_log_density(y, torch.zeros(3, dtype=torch.long), 0.1)
    assert torch.isfinite(g).all() and g[1].item() < 0 and g[2].item() < 0


def test_affine_maps_edges_not_probabilities():
    expert = bimodal_expert(EDGES).affine(shift=1.0, scale=2.0)
    np.testing.assert_allclose(expert.lower[0, 0, 0].item(), (-3.0 - 1.0) / 2.0)
    np.testing.assert_allclose(expert.log_prob, bimodal_expert(EDGES).log_prob)


class StandardNormalFlow(torch.nn.Module):
    """Exact velocity for p1 = N(0, 1): u = E[y1 − y0 | y_t] = (2t − 1) / (t² + (1 − t)²) · y."""

    def forward(self, x, y, t, mask=None):
        t = t[:, None]
        return (2 * t - 1) / (t**2 + (1 - t) ** 2) * y


class TokenStandardNormalFlow(StandardNormalFlow):
    """The same flow as a network with context tokens whose data ignore the context: the
    sampler keeps the context fixed and flows the target alone."""

    config = SimpleNamespace(context_tokens=True)

    def forward(self, x, y, t, mask=None, context=None):
        return super().forward(x, y, t, mask)


class WrongWidthExpert(BinnedDensity):
    """The expert with r_t doubled: the sampler must then miss the product density."""

    def score(self, yhat, task, r):
        return self.grad_log_density(yhat, task, 2.0 * r)


def product_cdf(expert: BinnedDensity) -> tuple[np.ndarray, np.ndarray]:
    y = np.linspace(-6, 6, 60001)
    q = expert.log_density(torch.as_tensor(y)[:, None], torch.zeros(len(y), dtype=torch.long)).exp()[:, 0].numpy()
    dens = stats.norm.pdf(y) * q
    cdf = np.cumsum(dens)
    return y, cdf / cdf[-1]


@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("expert_cls, should_match", [(BinnedDensity, True), (WrongWidthExpert, False)])
def test_guided_sampler_draws_from_the_product(expert_cls, should_match, tokens):
    base = bimodal_expert(EDGES)
    expert = expert_cls(base.lower, base.upper, base.log_prob)
    model = TrainedNDP(TokenStandardNormalFlow() if tokens else StandardNormalFlow(), YNormalisation())
    context = (np.full((1, 1, 1), 5.0), np.ones((1, 1))) if tokens else (None, None)
    out = sample(
        model, *context, np.zeros((1, 1, 1)), 4000, solver="heun", steps=40, t0=1e-3,
        jacobian="free", expert=ExpertTerm(expert), generator=torch.Generator().manual_seed(0),
    )
    if tokens:
        assert np.all(out.y_ctx == 1.0)
    draws = out.y_tgt[0, :, 0]
    grid, cdf = product_cdf(base)
    p = stats.kstest(draws, lambda v: np.interp(v, grid, cdf)).pvalue
    assert (p > 0.01) if should_match else (p < 1e-6), p


def test_temperature_tempers_densities_not_bin_probabilities():
    # a coarse bin [0, 2) and two fine bins with the same density as each other
    lower, upper = np.array([[[0.0, 2.0, 2.5]]]), np.array([[[2.0, 2.5, 3.0]]])
    expert = BinnedDensity.from_arrays(lower, upper, np.log([[[0.5, 0.25, 0.25]]]))
    hot = expert.temper(0.5)
    dens = (hot.log_coef).exp()[0, 0].numpy()
    np.testing.assert_allclose(dens / dens[1], [0.25**2 / 0.5**2, 1.0, 1.0])  # (q_b/q_1)^2
    assert hot.log_prob.exp().sum().item() == pytest.approx(1.0)
    assert expert.temper(1.0) is expert
    with pytest.raises(ValueError):
        expert.temper(0.0)
    # one temperature per task and target: each target tempered as if alone
    two = BinnedDensity.from_arrays(np.repeat(lower, 2, 1), np.repeat(upper, 2, 1), np.log([[[0.5, 0.25, 0.25]] * 2]))
    each = two.temper(torch.tensor([[0.5, 2.0]]))
    np.testing.assert_allclose(each.log_prob[0, 0], hot.log_prob[0, 0])
    np.testing.assert_allclose(each.log_prob[0, 1], expert.temper(2.0).log_prob[0, 0])


def test_lost_mass_renormalised_or_flat():
    import xarray as xr

    ds = xr.Dataset({
        "lower": (("target", "bin"), np.array([[0.0, 1.0, np.nan], [-2.0, 0.0, 4.0]])),
        "upper": (("target", "bin"), np.array([[1.0, 2.0, np.nan], [0.0, 4.0, 5.0]])),
        "logp": (("target", "bin"), np.log([[0.3, 0.3, 1.0], [0.1, 0.2, 0.2]]) - [[0, 0, np.inf], [0, 0, 0]]),
        "lost_mass": (("target",), np.array([0.4, 0.5])),
    })
    renorm = BinnedDensity.from_store(ds)
    np.testing.assert_allclose(renorm.log_prob[0, 0, :2].exp(), [0.5, 0.5])
    flat = BinnedDensity.from_store(ds, lost="flat")
    assert flat.lower.shape[-1] == 4
    np.testing.assert_allclose(flat.log_prob[0, :, :].exp().sum(-1), 1.0)
    np.testing.assert_allclose(flat.log_prob[0, :, -1].exp(), [0.4, 0.5])
    np.testing.assert_allclose(flat.lower[0, :, -1], [0.0, -2.0])
    np.testing.assert_allclose(flat.upper[0, :, -1], [2.0, 5.0])
    np.testing.assert_allclose(flat.log_prob[0, 0, :2].exp(), [0.3, 0.3])
    with pytest.raises(ValueError, match="lost"):
        BinnedDensity.from_store(ds, lost="drop")


def real_like_expert(lost: str = "renormalise") -> BinnedDensity:
    """Bins of widths 1, 0.1 and 0.01 with gaps and empty bins, tempered as the sample stage does."""
    import xarray as xr

    parts = [np.arange(-6.0, -2.0, 1.0), np.arange(-1.5, 0.0, 0.1), np.arange(0.0, 1.0, 0.01),
             np.arange(1.0, 2.0, 0.1), np.arange(3.0, 5.0, 1.0)]
    widths = [1.0, 0.1, 0.01, 0.1, 1.0]
    lower = np.concatenate(parts)
    upper = np.concatenate([p + w for p, w in zip(parts, widths)])
    rng = np.random.default_rng(1)
    logp = rng.normal(size=(2, len(lower))) * 2 - 8 * ((lower - 0.5) / 3) ** 2
    logp[:, rng.choice(len(lower), 20, replace=False)] = -np.inf
    ds = xr.Dataset({"lower": (("target", "bin"), np.stack([lower, lower + 0.3])),
                     "upper": (("target", "bin"), np.stack([upper, upper + 0.3])),
                     "logp": (("target", "bin"), logp), "lost_mass": (("target",), np.array([0.1, 0.3]))})
    return BinnedDensity.from_store(ds, lost=lost).temper(0.25)


def probe_points(expert: BinnedDensity, r: float, n: int = 800) -> torch.Tensor:
    """(n + 1605, M): draws from q̃_r (where the sampler's ŷ lie), a grid, far tails."""
    rng = np.random.default_rng(2)
    p = expert.log_prob[0].exp().numpy()
    draws = []
    for m in range(p.shape[0]):
        b = rng.choice(p.shape[1], n, p=p[m] / p[m].sum())
        lo, hi = expert.lower[0, m, b].numpy(), expert.upper[0, m, b].numpy()
        draws.append(lo + rng.uniform(size=n) * (hi - lo) + r * rng.normal(size=n))
    grid = torch.cat([torch.linspace(-8, 8, 1601), torch.tensor([-60.0, -20.0, 15.0, 40.0])])
    return torch.cat([torch.tensor(np.stack(draws, 1)), grid[:, None].repeat(1, p.shape[0])]).float()


def fast_errors(expert: BinnedDensity, r: float, cells=None) -> tuple[np.ndarray, np.ndarray]:
    """(|fast − exact| · r / (1 + |exact| r), trusted) of the fast path alone at probe points;
    the first 800 rows are draws from q̃_r."""
    y = probe_points(expert, r)
    task = torch.zeros(len(y), dtype=torch.long)
    exact = expert.grad_log_density(y.double(), task, r)
    fast, trusted = (cells or expert.to(torch.float32).hermite_cells(r)).score(y, task)
    return ((fast.double() - exact).abs() * r / (1 + exact.abs() * r)).numpy(), trusted.numpy()


@pytest.mark.parametrize("lost", ["renormalise", "flat"])
@pytest.mark.parametrize("r", [1e-3, 3e-3, 0.01, 0.04, 0.1, 0.3, 1.0, 3.0])
def test_fast_score_matches_the_exact_path(r, lost):
    expert = real_like_expert(lost)
    if r >= 0.01:  # the fast path alone really carries the bulk of the samples
        err, trusted = fast_errors(expert, r)
        assert trusted[:800].mean() > 0.95 and err[trusted].max() < 1e-3
    if r > 1:  # beyond the sampler's r_t ≤ 1
        return
    y = probe_points(expert, r)
    task = torch.zeros(len(y), dtype=torch.long)
    exact = expert.grad_log_density(y.double(), task, r)
    got = expert.score(y.double(), task, r)  # fast path in float32, exact path as given
    assert torch.isfinite(got).all() and torch.isfinite(expert.to(torch.float32).score(y, task, r)).all()
    err = (got - exact).abs() * r / (1 + exact.abs() * r)
    assert err.max() < 1e-3, err.max()
    assert (got[-4:, 0] * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64) > 0).all()  # towards the mass


def test_fast_score_detects_a_wrong_level_or_window(monkeypatch):
    expert = real_like_expert()
    r = 0.1
    err, trusted = fast_errors(expert, r, cells=expert.to(torch.float32).hermite_cells(1.5 * r))
    assert err[trusted].max() > 1e-2
    monkeypatch.setattr(binned.HermiteCells, "half_window", staticmethod(lambda: 1))
    err, trusted = fast_errors(expert, r)
    assert err[trusted].max() > 1e-2


def test_stack_pads_and_keeps_each_task():
    one = bimodal_expert(EDGES)
    lower = np.array([[[0.0, 1.0]], [[0.0, 2.0]]]).reshape(1, 2, 2)
    two = BinnedDensity.from_arrays(lower, lower + 1.0, np.log([[[0.5, 0.5], [0.25, 0.75]]]), np.array([[1.0, 2.0]]))
    both = BinnedDensity.stack([one, two])
    assert both.lower.shape == (2, 2, 24) and both.nll_target is None
    y = torch.tensor([[0.4, 2.5]], dtype=torch.float64)
    np.testing.assert_allclose(both.log_density(y, torch.tensor([1])), two.log_density(y, torch.tensor([0])))
    np.testing.assert_allclose(both.quantiles(np.array([0.5]))[1], two.quantiles(np.array([0.5]))[0])
    np.testing.assert_allclose(two.mean(), [[1.0, 0.25 * 0.5 + 0.75 * 2.5 + 0.0]])
    np.testing.assert_allclose(two.mass_inside(np.array([0.5, 2.0]), np.array([1.5, 2.5])), [[0.5, 0.375]])
