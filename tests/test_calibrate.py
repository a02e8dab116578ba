"""The calibrated product: the leave-one-out pool is a density, and the fit keeps the expert only where it helps."""

import numpy as np
import pytest
import torch
from scipy import stats

from llmflow.binned import BinnedDensity
from llmflow.calibrate import CalibrationConfig, fit_product, log_pool_scores, target_shares

from experts import gaussian_bins


def test_the_pooled_density_integrates_to_one():
    mean, std = np.array([0.0, 1.0]), np.array([1.0, 0.5])
    expert = gaussian_bins(np.array([0.8, 0.2]), 0.4)
    grid = np.linspace(-6, 6, 121)  # the pool is smooth: the trapezoid rule is exact enough at 0.1
    for weight, width in ((0.5, 0.1), (1.0, 0.3), (0.25, 1.0)):
        dens = np.exp(np.stack([log_pool_scores(mean, std, np.array([g, g]), expert, weight, width) for g in grid]))
        np.testing.assert_allclose(np.trapezoid(dens, grid, axis=0), 1.0, atol=2e-3)
    # λ = 1 and Gaussian bins: the pool is the Gaussian product N(m, s²)·N(c, 0.4² + w²)
    w = 0.3
    var = 1 / (1 / std**2 + 1 / (0.4**2 + w**2))
    mu = var * (mean / std**2 + np.array([0.8, 0.2]) / (0.4**2 + w**2))
    y = np.array([0.3, 0.6])
    np.testing.assert_allclose(log_pool_scores(mean, std, y, expert, 1.0, w), stats.norm.logpdf(y, mu, np.sqrt(var)), atol=2e-3)


def test_fit_falls_back_to_the_ndp_where_the_llm_knows_nothing_and_keeps_it_where_it_helps():
    rng = np.random.default_rng(0)
    k, s = 6, 400
    mean = rng.normal(size=k)
    y = mean + rng.normal(size=k)  # the NDP's predictive N(mean, 1) is right
    ndp = mean[:, None] + rng.normal(size=(k, s))
    cfg = CalibrationConfig()
    wrong = fit_product(ndp, y, gaussian_bins(y + 3.0, 0.2))  # confident and wrong
    assert wrong.weight == 0.0 and wrong.score == wrong.ndp_score and wrong.n_held == k
    right = fit_product(ndp, y, gaussian_bins(y + 0.05 * rng.normal(size=k), 0.1))  # sharp and right
    assert right.weight > 0 and right.score > right.ndp_score + 0.5
    assert len(right.table) == 1 + len([w for w in cfg.weights if w > 0]) * len(cfg.smoothing)
    none = fit_product(np.zeros((0, s)), np.zeros(0), gaussian_bins(np.zeros(0), 0.1))
    assert none.weight == 0.0 and none.n_held == 0


def test_the_fit_is_scored_on_the_pool_not_on_the_bins_alone():
    # An expert a little too sharp around the truth: some weight and smoothing beats both the
    # NDP alone and the unsmoothed product.
    rng = np.random.default_rng(1)
    k = 8
    mean = np.zeros(k)
    y = rng.normal(scale=0.3, size=k)
    ndp = mean[:, None] + rng.normal(size=(k, 500))
    expert = gaussian_bins(y + rng.normal(scale=0.3, size=k), 0.05)
    fit = fit_product(ndp, y, expert)
    scores = {(w, s): v for w, s, v in fit.table}
    assert fit.weight > 0 and fit.score == max(scores.values()) and fit.smoothing > 0
    assert torch.isfinite(torch.tensor(fit.score))


def test_target_shares_split_the_weight_among_dependent_targets():
    rng = np.random.default_rng(3)
    block_a, block_b = rng.normal(size=(4000, 1)), rng.normal(size=(4000, 1))
    samples = np.hstack([np.repeat(block_a, 3, 1), np.repeat(block_b, 2, 1), rng.normal(size=(4000, 2)),
                         np.ones((4000, 1))])  # 3 tied, 2 tied, 2 independent, 1 constant
    np.testing.assert_allclose(target_shares(samples), [1 / 3] * 3 + [1 / 2] * 2 + [1.0, 1.0, 1.0], atol=0.02)
    # few samples of many independent targets: the sampling error of ρ² does not eat the weight
    few = target_shares(rng.normal(size=(64, 25)))
    assert few.mean() > 0.9 and few.min() > 0.7
    assert np.all(target_shares(rng.normal(size=(2, 5))) == 1.0)


def test_the_pool_is_normalised_exactly_around_a_spike_narrower_than_any_grid():
    # 90% of the LLM's mass in a bin 1/2000 of the NDP's std wide, hardly smoothed: the pool is a
    # density (its normaliser in closed form), where a quadrature grid over m ± 8 s misses or
    # over-counts the spike
    from scipy import integrate

    edges = np.array([-5.0, 0.3, 0.3005, 5.0])
    expert = BinnedDensity.from_arrays(edges[None, None, :-1], edges[None, None, 1:], np.log([[[0.05, 0.9, 0.05]]]))
    for weight, width in ((1.0, 1e-4), (0.5, 1e-3), (2.0, 3e-4)):
        def density(y: float) -> float:
            return float(np.exp(log_pool_scores(np.zeros(1), np.ones(1), np.array([y]), expert, weight, width))[0])

        mass = sum(integrate.quad(density, a, b, limit=200, epsabs=1e-10)[0]
                   for a, b in ((-9.0, 0.29), (0.29, 0.3), (0.3, 0.3005), (0.3005, 0.31), (0.31, 9.0)))
        assert mass == pytest.approx(1.0, abs=1e-4)
