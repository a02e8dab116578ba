"""The fitted-GP baseline against the exact posterior with the true hyper-parameters."""

import subprocess
import sys

import numpy as np
from scipy import stats

from llmflow.frame import TaskFrame
from llmflow.gp import posterior, sample_prior
from llmflow.gpfit import MIN_FIT_POINTS, fit_gp, gp_dataset
from llmflow.kernels import Kernel
from llmflow.tasks import Task

TRUE = Kernel("matern52", lengthscale=0.5, variance=1.0)
NOISE = 0.1


def gp_task(seed: int, n_context: int = 80, n_target: int = 30) -> Task:
    """A draw of the true GP (noisy) on [-2, 2], the GP family's own frame."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n_context + n_target, 1))
    y = sample_prior(TRUE, x, NOISE, rng)[0]
    return Task(f"gp-{seed}", "gp", "", x[:n_context], y[:n_context], x[n_context:], y[n_context:])


def nll(task: Task, mean: np.ndarray, cov: np.ndarray) -> float:
    return float(-stats.norm.logpdf(task.y_target, mean, np.sqrt(np.diag(cov))).mean())


def test_fit_approaches_the_exact_posterior_with_the_true_hyper_parameters():
    gaps = []
    for seed in range(4):
        task = gp_task(seed)
        fit = fit_gp(task, TaskFrame.identity(1))
        exact = posterior(TRUE, task.x_context, task.y_context, task.x_target, NOISE)
        sd = np.sqrt(np.diag(exact.cov))
        assert fit.optimised
        # the predictive is of a noisy y: its sd holds the fitted noise (≈ 0.1, most of it here)
        assert abs(fit.noise_std - NOISE) < 0.03, fit.noise_std
        np.testing.assert_array_less(np.abs(fit.predictive.mean - exact.mean), sd)
        np.testing.assert_allclose(np.sqrt(np.diag(fit.predictive.cov)), sd, rtol=0.2)
        gaps.append(nll(task, fit.predictive.mean, fit.predictive.cov) - nll(task, exact.mean, exact.cov))
    assert abs(np.mean(gaps)) < 0.05, gaps


def test_fit_is_in_data_units_whatever_the_scale():
    # y in thousands, x in years: the frame maps both onto the prior's, so the fitted predictive
    # is the unit-scale one mapped back (mean shifted and scaled, covariance scaled squared)
    base = gp_task(0, n_context=30, n_target=10)
    y_ctx, y_tgt = 2 * base.y_context, 2 * base.y_target  # std > y_scale_min: both frames standardise
    unit = Task("u", "synth", "", base.x_context, y_ctx, base.x_target, y_tgt)
    big = Task("b", "synth", "", 1990 + 5 * base.x_context, 1e3 * y_ctx + 40, 1990 + 5 * base.x_target, 1e3 * y_tgt + 40)
    fits = [fit_gp(t, TaskFrame.fit(t, (-2.0, 2.0), 1.0)) for t in (unit, big)]
    np.testing.assert_allclose(fits[1].predictive.mean, 1e3 * fits[0].predictive.mean + 40, rtol=1e-5)
    np.testing.assert_allclose(fits[1].predictive.cov, 1e6 * fits[0].predictive.cov, rtol=1e-4, atol=1e-6)


def test_fit_and_store_are_deterministic_and_consistent():
    task = gp_task(1, n_context=20, n_target=8)
    a, b = fit_gp(task, TaskFrame.identity(1)), fit_gp(task, TaskFrame.identity(1))
    np.testing.assert_array_equal(a.predictive.cov, b.predictive.cov)
    ds = gp_dataset(task, a, 4000, seed=3)
    assert ds["y"].dims == ("sample", "target") and ds.attrs["method"] == "gp" and ds.attrs["optimised"] == 1
    np.testing.assert_array_equal(ds["y"].values, gp_dataset(task, b, 4000, seed=3)["y"].values)
    np.testing.assert_array_equal(ds["cov"].values, a.predictive.cov)
    # the draws are joint draws of the stored predictive
    np.testing.assert_allclose(np.cov(ds["y"].values, rowvar=False), a.predictive.cov, atol=0.1 * a.predictive.cov.max())


def test_tiny_contexts_keep_the_initial_kernel():
    base = gp_task(2, n_context=MIN_FIT_POINTS, n_target=5)
    for n in range(1, MIN_FIT_POINTS + 1):
        task = Task("t", "synth", "", base.x_context[:n], 7 + 3 * base.y_context[:n], base.x_target, base.y_target)
        fit = fit_gp(task, TaskFrame.fit(task, (-2.0, 2.0), 1.0))
        assert fit.optimised == (n >= MIN_FIT_POINTS)
        sd = np.sqrt(np.diag(fit.predictive.cov))
        assert np.isfinite(fit.predictive.mean).all() and (sd > 0.05).all(), (n, sd)
    one = Task("t", "synth", "", base.x_context[:1], np.array([7.0]), base.x_context[:1], np.array([7.0]))
    fit = fit_gp(one, TaskFrame.fit(one, (-2.0, 2.0), 1.0))
    # at the one context point: mean there, sd of the initial noise (0.1) plus what the context
    # leaves of the unit amplitude, in a frame of y scale y_scale_min = 1
    np.testing.assert_allclose(fit.predictive.mean, [7.0])
    np.testing.assert_allclose(fit.predictive.cov, [[1.0 + 0.01 - 1.0 / 1.01]], rtol=1e-6)


def test_the_gp_job_imports_no_torch():
    # what workflow/scripts/gp.py imports: torch's import would be most of a small shard's run time
    code = ("import sys, llmflow.cache, llmflow.frame, llmflow.gpfit, llmflow.logs, llmflow.tasks; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
