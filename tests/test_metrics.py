"""Metrics: estimators checked against exact values on Gaussian predictives."""

import numpy as np
import pytest
from scipy import stats

from llmflow.binned import BinnedDensity
from llmflow.metrics import bins_metrics, gaussian_metrics, kde_log_density, sample_metrics
from llmflow.tasks import Task


def gaussian_task(m: int = 8, seed: int = 0) -> tuple[Task, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, m)[:, None]
    mean = np.sin(3 * x[:, 0])
    cov = 0.09 * np.exp(-0.5 * (x - x.T) ** 2 / 0.3**2) + 1e-4 * np.eye(m)
    y = rng.multivariate_normal(mean, cov)
    return Task("t", "gp", "", x[:1], y[:1], x, y), mean, cov


def test_kde_matches_exact_marginal_density():
    rng = np.random.default_rng(1)
    samples = rng.normal(0.5, 2.0, size=(40000, 3))
    y = np.array([0.5, 2.0, -3.0])
    np.testing.assert_allclose(kde_log_density(samples, y), stats.norm.logpdf(y, 0.5, 2.0), atol=0.04)


def test_sample_metrics_agree_with_the_exact_gaussian():
    task, mean, cov = gaussian_task()
    samples = np.random.default_rng(2).multivariate_normal(mean, cov, size=2000)
    est, exact = sample_metrics(task, samples), gaussian_metrics(task, mean, cov)
    assert "nll" not in est  # samples have no density: their estimate is named nll_kde
    for key, ref, tol in (("nll_kde", "nll", 0.08), ("crps", "crps", 0.01), ("mae", "mae", 0.02),
                          ("joint_loglik", "joint_loglik", 0.1)):
        assert abs(est[key] - exact[ref]) < tol, (key, est[key], exact[ref])
    # a wrong predictive (shifted by one sd) scores clearly worse
    worse = sample_metrics(task, samples + 0.3)
    assert worse["nll_kde"] > est["nll_kde"] + 0.2 and worse["crps"] > est["crps"] + 0.05


def test_gaussian_metrics_only_where_the_truth_is_known():
    task, mean, cov = gaussian_task()
    task.y_target[:] = np.nan
    assert gaussian_metrics(task, mean, cov) == {}


def _bins(lower, upper, prob, nll=None) -> BinnedDensity:
    """A one-task density from (m, B) edges and probabilities."""
    with np.errstate(divide="ignore"):
        return BinnedDensity.from_arrays(lower[None], upper[None], np.log(prob)[None], nll)


def test_binned_metrics_are_exact_for_uniform_bins():
    task = Task("t", "synth", "", np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.array([0.3]))
    bins = _bins(np.array([[0.0, 1.0]]), np.array([[1.0, 2.0]]), np.array([[0.5, 0.5]]))  # U(0, 2)
    out = bins_metrics(task, bins)
    np.testing.assert_allclose(out["nll"], np.log(2.0))
    # CRPS of U(0, 2) at 0.3: ∫F² below + ∫(1−F)² above = 0.3³/12 + (1.7³)/(3·2²)·... exact form:
    exact = stats.uniform(0, 2)
    grid = np.linspace(-1, 3, 400001)
    crps = np.trapezoid((exact.cdf(grid) - (grid >= 0.3)) ** 2, grid)
    np.testing.assert_allclose(out["crps"], crps, atol=1e-3)
    np.testing.assert_allclose(bins.quantiles(np.array([0.05, 0.5, 0.95]))[0, 0], [0.1, 1.0, 1.9])
    assert out["coverage90"] == 1.0 and out["coverage50"] == 0.0
    # Where the expert scored the truth's own string, that exact NLL is the score, even if the
    # bins (coarse, or far from the truth) give the truth no density.
    far = Task("t", "synth", "", np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1)), np.array([5.0]))
    assert bins_metrics(far, bins)["nll"] == np.inf
    scored = _bins(np.array([[0.0, 1.0]]), np.array([[1.0, 2.0]]), np.array([[0.5, 0.5]]), nll=np.array([[7.25]]))
    assert bins_metrics(far, scored)["nll"] == 7.25


def test_coverage_of_calibrated_samples_is_nominal():
    rng = np.random.default_rng(3)
    m = 600
    task = Task("t", "gp", "", np.zeros((1, 1)), np.zeros(1), np.arange(m, dtype=float)[:, None], rng.standard_normal(m))
    out = sample_metrics(task, rng.standard_normal((300, m)))
    assert abs(out["coverage90"] - 0.9) < 0.05 and abs(out["coverage50"] - 0.5) < 0.06
    under = sample_metrics(task, 0.5 * rng.standard_normal((300, m)))  # over-confident
    assert under["coverage90"] < 0.75


def test_few_draws_are_scored_as_the_distribution_they_come_from():
    # 10 draws (A-LLMP's default) and 64 (NDP's) of the truth's own distribution: CRPS and the
    # 90% interval estimate the predictive's, not the finite ensemble's (which scores 10% worse
    # CRPS and about 0.76 coverage at 10 draws)
    rng = np.random.default_rng(4)
    m = 4000
    y = rng.standard_normal(m)
    task = Task("t", "gp", "", np.zeros((1, 1)), np.zeros(1), np.arange(m, dtype=float)[:, None], y)
    exact = np.mean(y * (2 * stats.norm.cdf(y) - 1) + 2 * stats.norm.pdf(y) - 1 / np.sqrt(np.pi))
    for s, cov90 in ((10, 9 / 11), (64, 0.9)):  # 10 draws hold at most (S - 1)/(S + 1)
        out = sample_metrics(task, rng.standard_normal((s, m)))
        assert abs(out["crps"] - exact) < 0.01, (s, out["crps"], exact)
        assert abs(out["coverage90"] - cov90) < 0.015, (s, out["coverage90"])
    # one draw (allmp.n_samples: 1) has no fair estimate: its CRPS is |x − y|
    one = sample_metrics(task, np.zeros((1, m)))
    assert one["crps"] == pytest.approx(np.mean(np.abs(y))) and np.isfinite(one["energy"])


def test_constraint_and_roughness():
    x = np.arange(5, dtype=float)[:, None]
    lo, hi = np.full(5, -1.0), np.full(5, 1.0)
    task = Task("t", "text", "", x[:1], np.zeros(1), x, np.full(5, np.nan), lo, hi)
    smooth = np.tile(np.linspace(-0.5, 0.5, 5), (10, 1))
    zigzag = np.tile([0.9, -0.9, 0.9, -0.9, 0.9], (10, 1))
    out = sample_metrics(task, np.concatenate([smooth, zigzag * 1.5]))
    assert out["constraint"] == 0.5 and "crps" not in out
    assert sample_metrics(task, smooth)["roughness"] < 1e-20 < sample_metrics(task, zigzag)["roughness"]
    # a text that bounds no target (±inf everywhere) is not scored: every draw would "satisfy" it
    silent = Task("t", "text", "", x[:1], np.zeros(1), x, np.full(5, np.nan), np.full(5, -np.inf), np.full(5, np.inf))
    assert "constraint" not in sample_metrics(silent, smooth)


def test_binned_constraint_is_the_product_of_masses_inside():
    x = np.arange(2, dtype=float)[:, None]
    task = Task("t", "text", "", x[:1], np.zeros(1), x, np.full(2, np.nan),
                np.array([-0.5, -np.inf]), np.array([0.5, 0.0]))
    # target 0: [-1, 0) 0.2, [0, 1) 0.8 -> mass in [-0.5, 0.5] = 0.1 + 0.4; target 1: 0.2 below 0
    bins = _bins(np.array([[-1.0, 0.0], [-1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]]),
                 np.array([[0.2, 0.8], [0.2, 0.8]]))
    assert abs(bins_metrics(task, bins)["constraint"] - 0.5 * 0.2) < 1e-12


def test_kde_marginal_nll_of_gp_posterior_samples_matches_the_exact_marginal():
    """The sample NLL estimator (used for NDP and LLM-NDP samples) at the pipeline's sample
    counts, on correlated GP posterior samples: close to the exact Gaussian marginal, and it
    tells a miscalibrated predictive from a calibrated one."""
    from llmflow.gp import posterior
    from llmflow.kernels import Kernel

    rng = np.random.default_rng(3)
    kernel = Kernel("se", lengthscale=0.25)
    gaps, wide_gaps = [], []
    for _ in range(16):
        x = rng.uniform(-2, 2, size=(30, 1))
        truth = rng.multivariate_normal(np.zeros(30), kernel(x, x) + 0.05**2 * np.eye(30))
        post = posterior(kernel, x[:5], truth[:5], x[5:], 0.05)
        sd = np.sqrt(np.diag(post.cov))
        exact = -stats.norm.logpdf(truth[5:], post.mean, sd).mean()
        for s, out in ((post.sample(rng, 64), gaps), (post.mean + 2.0 * (post.sample(rng, 64) - post.mean), wide_gaps)):
            out.append(-kde_log_density(s, truth[5:]).mean() - exact)
    assert abs(np.mean(gaps)) < 0.1
    assert np.mean(wide_gaps) > np.mean(gaps) + 0.2


def test_the_joint_gaussian_fit_scores_few_samples_of_large_series():
    # ten draws of twelve targets of a series near 10⁴ whose digits slip by 3·10⁵ (A-LLMP on
    # quarterly US GDP): the sample covariance is singular and rounding makes it indefinite;
    # the score is finite and far below a proper fit's
    from llmflow.metrics import gaussian_fit_loglik

    rng = np.random.default_rng(1)
    y = 1e4 + 100.0 * rng.normal(size=12)
    slips = y + 3e5 * rng.integers(0, 2, size=(10, 12)) + 100.0 * rng.normal(size=(10, 12))
    few = gaussian_fit_loglik(slips, y)
    many = gaussian_fit_loglik(y + 100.0 * rng.normal(size=(4000, 12)), y)
    assert np.isfinite(few) and np.isfinite(many) and few < many
    np.testing.assert_allclose(many, stats.norm.logpdf(0.0, 0.0, 100.0), atol=0.05)
    assert np.isfinite(gaussian_fit_loglik(np.full((10, 12), 3.0), np.full(12, 3.0)))  # draws that do not vary
