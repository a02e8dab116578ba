"""The evaluate stage's library: exact scores of the fitted GP, and the summary over tasks."""

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from llmflow.binned import BinnedDensity
from llmflow.evaluate import SUMMARY_COLUMNS, gp_oracle, predictions, read_samples, summarise, summary_markdown, task_rows
from llmflow.frame import TaskFrame
from llmflow.gp import GaussianPosterior, posterior
from llmflow.gpfit import fit_gp, gp_dataset
from llmflow.io import write_zarr
from llmflow.kernels import Kernel
from llmflow.tasks import Task, samples_dataset


def _rows(values: dict[tuple[str, str, str, str], float]) -> pd.DataFrame:
    """Per-task rows from {(task, family, method, metric): value}."""
    return pd.DataFrame([{"task": t, "family": f, "method": m, "metric": k, "value": v} for (t, f, m, k), v in values.items()])


@pytest.fixture
def summary() -> pd.DataFrame:
    rows = _rows({
        # family a: ndp on t1-t3; gp on t1, t2 and t4 (where ndp is missing)
        ("t1", "a", "ndp", "crps"): 1.0, ("t2", "a", "ndp", "crps"): 2.0, ("t3", "a", "ndp", "crps"): 4.0,
        ("t1", "a", "gp", "crps"): 0.5, ("t2", "a", "gp", "crps"): 1.0, ("t4", "a", "gp", "crps"): 3.0,
        ("t1", "a", "ndp", "nll_kde"): 2.0, ("t2", "a", "ndp", "nll_kde"): 9e5, ("t3", "a", "ndp", "nll_kde"): 3.0,
        ("t1", "a", "gp", "nll"): 1.0, ("t2", "a", "gp", "nll"): 2.0,
        ("t1", "a", "ndp", "roughness"): float("nan"), ("t2", "a", "ndp", "roughness"): 0.25,
        # family b: one task
        ("b1", "b", "ndp", "crps"): 3.0, ("b1", "b", "gp", "crps"): 2.0,
    })
    return summarise(rows).set_index(["family", "method", "metric"])


def test_mean_se_median_over_tasks(summary: pd.DataFrame):
    assert list(summary.reset_index().columns) == SUMMARY_COLUMNS
    for method, values in (("ndp", [1.0, 2.0, 4.0]), ("gp", [0.5, 1.0, 3.0])):
        row = summary.loc[("a", method, "crps")]
        assert row.n_tasks == 3
        assert row["mean"] == pytest.approx(sum(values) / 3)
        assert row.se == pytest.approx(statistics.stdev(values) / math.sqrt(3))
        assert row["median"] == pytest.approx(statistics.median(values))
    kde = summary.loc[("a", "ndp", "nll_kde")]
    assert kde["median"] == 3.0 and kde["mean"] > 1e5  # the heavy tail the median is reported for
    rough = summary.loc[("a", "ndp", "roughness")]  # a NaN value is not a task's score
    assert rough.n_tasks == 1 and rough["mean"] == 0.25


def test_paired_difference_uses_only_tasks_both_scored(summary: pd.DataFrame):
    gp = summary.loc[("a", "gp", "crps")]
    diffs = [0.5 - 1.0, 1.0 - 2.0]  # t1, t2; t3 lacks gp, t4 lacks ndp
    assert gp.n_paired == 2
    assert gp.diff_mean == pytest.approx(statistics.mean(diffs))
    assert gp.diff_se == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
    ndp = summary.loc[("a", "ndp", "crps")]
    assert ndp.n_paired == 0 and np.isnan(ndp.diff_mean) and np.isnan(ndp.diff_se)
    # exact nll and the KDE estimate are different metrics: never paired
    assert summary.loc[("a", "gp", "nll"), "n_paired"] == 0


def test_a_family_of_one_task(summary: pd.DataFrame):
    gp = summary.loc[("b", "gp", "crps")]
    assert gp.n_tasks == 1 and gp["mean"] == 2.0 and np.isnan(gp.se)
    assert gp.n_paired == 1 and gp.diff_mean == -1.0 and np.isnan(gp.diff_se)


def test_summary_markdown_leads_with_crps_and_separates_the_kde(summary: pd.DataFrame):
    text = summary_markdown(summary.reset_index())
    assert text.index("## CRPS") < text.index("## Coverage") < text.index("## NLL")
    crps = text[text.index("## CRPS"):text.index("## Coverage")]
    assert "| family | tasks | ndp | gp |" in crps
    assert "| a | 3 | 2.33 ± 0.88 | 1.5 ± 0.76 (Δ -0.75 ± 0.25) |" in crps
    assert "| b | 1 | 3 | 2 (Δ -1) |" in crps
    nll = text[text.index("## NLL"):]
    assert "| a | 2 | 1.5 ± 0.5 |" in nll  # exact: gp
    assert "| a | 3 | 3 (3e+05) |" in nll  # KDE: median (mean)
    assert "## roughness" in text


def _task(truth: bool = True) -> Task:
    x = np.linspace(0.0, 1.0, 9)[:, None]
    y = np.sin(3 * x[:, 0]) + 2.0
    y_tgt = y[5:] if truth else np.full(4, np.nan)
    return Task("synth-demo", "synth", "", x[:5], y[:5], x[5:], y_tgt)


def _bins(m: int) -> BinnedDensity:
    lower = np.tile(np.arange(-2.0, 4.0, 0.5), (1, m, 1))
    return BinnedDensity.from_arrays(lower, lower + 0.5, np.full_like(lower, -np.log(lower.shape[-1])))


def test_fitted_gp_is_scored_exactly_and_its_samples_give_the_rest():
    task = _task()
    gp = GaussianPosterior(task.y_target + 0.1, 0.04 * np.eye(4) + 0.01)
    rng = np.random.default_rng(0)
    samples = {"ndp": rng.normal(2.0, 0.5, (64, 4)), "gp": gp.sample(rng, 64)}
    rows = pd.DataFrame(task_rows(task, samples, _bins(4), {"gp": gp})).set_index(["method", "metric"])["value"]
    sd = np.sqrt(np.diag(gp.cov))
    assert rows[("gp", "nll")] == pytest.approx(-stats.norm.logpdf(task.y_target, gp.mean, sd).mean())
    assert rows[("gp", "crps")] == pytest.approx(np.mean([
        s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
        for z, s in zip((task.y_target - gp.mean) / sd, sd)]))
    assert {"energy", "roughness"} <= set(rows["gp"].index) and "nll_kde" not in rows["gp"].index
    assert "nll_kde" in rows["ndp"].index and "nll" not in rows["ndp"].index
    assert "nll" in rows["i-llmp"].index
    # no truth: no truth-based metric, exact or not
    blind = pd.DataFrame(task_rows(_task(truth=False), samples, _bins(4), {"gp": gp}))
    assert set(blind.metric) == {"roughness"}


def test_fitted_gp_store_round_trip_and_exact_quantiles(tmp_path: Path):
    task = _task()
    fit = fit_gp(task, TaskFrame.fit(task, (-2.0, 2.0), 1.0))
    write_zarr(gp_dataset(task, fit, 16, seed=0), tmp_path / "gp.zarr")
    write_zarr(samples_dataset(task, np.zeros((16, 4)), "ndp"), tmp_path / "ndp.zarr")
    samples, gaussians = read_samples({"ndp": tmp_path / "ndp.zarr", "gp": tmp_path / "gp.zarr"})
    assert set(samples) == {"ndp", "gp"} and set(gaussians) == {"gp"} and samples["gp"].shape == (16, 4)
    np.testing.assert_allclose(gaussians["gp"].cov, fit.predictive.cov)
    table = predictions(task, samples, _bins(4), gaussians)["gp"]
    sd = np.sqrt(np.diag(fit.predictive.cov))
    np.testing.assert_allclose(table["q05"], fit.predictive.mean - 1.6448536 * sd, rtol=1e-6)
    np.testing.assert_allclose(table["median"], fit.predictive.mean)


def test_the_exported_interval_is_the_scored_one():
    # the predictions CSV's q05/q95 of draws are the interval coverage90 counts (10 draws: the
    # Weibull ends lie at the extreme draws, numpy's default ones well inside)
    task = _task()
    draws = np.random.default_rng(1).normal(task.y_target, 1.0, (10, 4))
    table = predictions(task, {"ndp": draws}, _bins(4), {})["ndp"]
    np.testing.assert_allclose(table["q05"], draws.min(axis=0))
    np.testing.assert_allclose(table["q95"], draws.max(axis=0))
    rows = pd.DataFrame(task_rows(task, {"ndp": draws}, _bins(4), {})).set_index(["method", "metric"])["value"]
    inside = (task.y_target >= table["q05"]) & (task.y_target <= table["q95"])
    assert rows[("ndp", "coverage90")] == pytest.approx(inside.mean())


def test_the_gp_oracle_uses_every_hyperparameter_the_task_stores():
    # a GP task drawn with a trend: the oracle's posterior is the trend kernel's, not the
    # stationary part's
    trend = Kernel("se", lengthscale=0.3, slope_variance=2.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (10, 1))
    y = rng.normal(size=10)
    task = Task("gp-se-000", "gp", "", x[:6], y[:6], x[6:], y[6:],
                attrs={"kernel": "se", **trend.hyperparameters(), "noise_std": 0.05})
    got = gp_oracle(task)
    want = posterior(trend, x[:6], y[:6], x[6:], 0.05)
    np.testing.assert_allclose(got.mean, want.mean)
    np.testing.assert_allclose(got.cov, want.cov)
    stationary = posterior(Kernel("se", lengthscale=0.3), x[:6], y[:6], x[6:], 0.05)
    assert np.abs(got.mean - stationary.mean).max() > 0.05
