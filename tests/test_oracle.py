"""GP-oracle benchmark computations: estimator, exact rows, Bayes mixture, the table."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llmflow.gp import log_marginal_likelihood, posterior
from llmflow.io import write_zarr
from llmflow.kernels import Kernel
from llmflow.likelihood import LikelihoodConfig
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation
from llmflow.oracle import (
    BENCH_KERNELS, COLUMNS, HyperGrid, OracleConfig, bayes_mixture_samples, bayes_mixture_scores, format_table, gaussian_fit_loglik, gp_optimum_scores,
    gp_posterior_samples, hyper_grid, kernel_settings, make_gp_tasks, oracle_kernels, prior_config_of, prior_tasks, read_tables, run_gp_oracle,
    sample_scores, write_table,
)
from llmflow.prior import PriorConfig, make_shard, prior_config_json
from llmflow.sampler import SamplerConfig

PRIOR = {
    "x_dim": 1, "x_range": [-2.0, 2.0], "n_points": [20, 30], "kernels": ["se", "weakly_periodic"],
    "lengthscale": [0.25, 1.0], "variance": [1.0, 1.0], "noise_std": [0.05, 0.05], "period": [0.25, 1.0],
    "periodic_lengthscale": [1.0, 1.0], "functions_per_shard": 24,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("prior") / "shard-0.zarr"
    ds = make_shard(PriorConfig.from_config(PRIOR), seed=1, split="test", shard=0, config_json=prior_config_json(PRIOR, 1))
    write_zarr(ds, path)
    return str(path)


@pytest.mark.parametrize("kernel,published", [("se", 0.70), ("matern52", 0.31), ("weakly_periodic", -0.32)])
def test_gp_optimum_matches_the_published_numbers(kernel, published):
    tasks = make_gp_tasks(BENCH_KERNELS[kernel], 600, np.random.default_rng(0))
    assert tasks.ctx_mask.sum(1).min() == 1 and tasks.ctx_mask.sum(1).max() == 9 and tasks.tgt_mask.all()
    assert tasks.x_tgt.shape == (600, 50, 1) and np.abs(tasks.x_ctx).max() <= 2
    ll = gp_optimum_scores(tasks).loglik
    assert abs(ll.mean() - published) < 4 * ll.std() / np.sqrt(len(ll)) + 0.03


def test_weakly_periodic_kernel_is_the_benchmark_product():
    x = np.array([[0.0], [0.1], [0.37]])
    r = np.abs(x - x.T)
    want = np.exp(-0.5 * r**2 / 0.5**2) * np.exp(-2 * np.sin(np.pi * r / 0.25) ** 2)
    np.testing.assert_allclose(BENCH_KERNELS["weakly_periodic"](x, x), want)


def test_gaussian_fit_of_exact_posterior_samples_recovers_the_optimum():
    rng = np.random.default_rng(1)
    tasks = make_gp_tasks(BENCH_KERNELS["se"], 3, rng)
    for i in range(3):
        xc, yc, xt, yt = tasks.task(i)
        post = posterior(tasks.kernels[i], xc, yc, xt, 0.05)
        fit = gaussian_fit_loglik(post.sample(rng, 20000), yt)
        assert fit == pytest.approx(post.log_prob(yt) / len(yt), abs=0.03)


def test_bayes_mixture_with_a_point_mass_prior_is_the_gp_posterior():
    point = dict(PRIOR, kernels=["se"], lengthscale=[0.25, 0.25], period=[0.5, 0.5])
    grid = hyper_grid(PriorConfig.from_config(point), {"lengthscale": 8, "period": 8, "periodic_lengthscale": 1, "variance": 1, "noise_std": 1})
    assert len(grid.kernels) == 1 and grid.log_weight[0] == pytest.approx(0.0)
    tasks = make_gp_tasks(Kernel("se", lengthscale=0.25), 20, np.random.default_rng(2))
    np.testing.assert_allclose(bayes_mixture_scores(tasks, grid).loglik, gp_optimum_scores(tasks).loglik, atol=1e-8)
    # a prior whose every function has a trend of slope sd 1.5: the kernel gets s² x·x'
    trend = hyper_grid(PriorConfig.from_config(dict(point, trend_fraction=1.0, slope_std=[1.5, 1.5])), {"slope_std": 4})
    assert len(trend.kernels) == 1 and trend.kernels[0].slope_variance == pytest.approx(2.25)
    tasks = make_gp_tasks(trend.kernels[0], 20, np.random.default_rng(2))
    np.testing.assert_allclose(bayes_mixture_scores(tasks, trend).loglik, gp_optimum_scores(tasks).loglik, atol=1e-8)
    half = hyper_grid(PriorConfig.from_config(dict(point, trend_fraction=0.5, slope_std=[0.5, 1.5])), {"slope_std": 4})
    assert sorted(k.slope_variance for k in half.kernels) == pytest.approx([0.0, 0.625**2, 0.875**2, 1.125**2, 1.375**2])
    assert np.exp(half.log_weight) == pytest.approx([0.5, 0.125, 0.125, 0.125, 0.125])


def test_bayes_mixture_sits_between_misspecified_and_true_kernel(shard):
    prior = prior_config_of(shard)
    grid = hyper_grid(prior, {"lengthscale": 12, "period": 48, "periodic_lengthscale": 1, "variance": 1, "noise_std": 1})
    assert np.exp(grid.log_weight).sum() == pytest.approx(1.0)
    assert {k.name for k in grid.kernels} == {"se", "weakly_periodic"} and len(grid.kernels) == 12 + 12 * 48
    tasks = prior_tasks([shard], 24, np.random.default_rng(3), n_tgt=15)
    assert tasks.tgt_mask.sum(1).min() >= 10
    bayes, oracle = bayes_mixture_scores(tasks, grid).loglik, gp_optimum_scores(tasks).loglik
    wrong = gp_optimum_scores(tasks.__class__(**{**tasks.__dict__, "kernels": (Kernel("se", lengthscale=2.0),) * len(tasks)})).loglik
    assert wrong.mean() < bayes.mean() <= oracle.mean() + 0.02


def test_bayes_mixture_samples_weigh_each_node_by_its_context_evidence():
    """Two nodes a priori 0.8 / 0.2, one far rougher: the draws' first two moments are those of
    the mixture of the two GP posteriors weighted by prior × context evidence, which here puts
    most weight on the node the prior disfavours (a prior-weighted draw would fail)."""
    grid = HyperGrid((Kernel("se", lengthscale=0.1), Kernel("se", lengthscale=1.5)), np.array([0.05, 0.2]), np.log([0.8, 0.2]))
    tasks = make_gp_tasks(Kernel("se", lengthscale=1.5), 2, np.random.default_rng(6), n_ctx=(4, 4), n_tgt=5, noise_std=0.2)
    draws = bayes_mixture_samples(tasks, grid, 40000, np.random.default_rng(7))
    assert draws.shape == (2, 40000, 5)
    for i in range(2):
        xc, yc, xt, _ = tasks.task(i)
        log_w = grid.log_weight + [log_marginal_likelihood(k, xc, yc, s) for k, s in zip(grid.kernels, grid.noise_std)]
        w = np.exp(log_w - np.logaddexp(*log_w))
        posts = [posterior(k, xc, yc, xt, s) for k, s in zip(grid.kernels, grid.noise_std)]
        mean = sum(wj * p.mean for wj, p in zip(w, posts))
        second = sum(wj * (p.cov + np.outer(p.mean, p.mean)) for wj, p in zip(w, posts))
        assert w[1] > 0.6  # the evidence overturns the prior
        np.testing.assert_allclose(draws[i].mean(0), mean, atol=0.03)
        np.testing.assert_allclose(draws[i].T @ draws[i] / len(draws[i]), second, atol=0.05)


def test_sample_estimators_on_exact_posterior_samples():
    """The gp_samples_gaussfit row: per-target marginals are nearly exact at S = 128, the joint
    Gaussian fit is not (the protocol's own bias), and both are paired with gp_optimum."""
    tasks = make_gp_tasks(BENCH_KERNELS["se"], 24, np.random.default_rng(4))
    exact = gp_optimum_scores(tasks)
    est = sample_scores(tasks, gp_posterior_samples(tasks, 128, np.random.default_rng(5)))
    assert abs(est.nll.mean() - exact.nll.mean()) < 0.1  # KDE (Silverman) marginal
    assert abs(est.crps.mean() - exact.crps.mean()) < 0.01  # ensemble CRPS
    assert exact.loglik.mean() - est.loglik.mean() > 0.1  # the Gaussian fit of 128 draws of 50 targets


def test_run_gp_oracle_writes_the_paired_table(shard, tmp_path):
    torch.manual_seed(0)
    model = TrainedNDP(NDP(NDPConfig(dim=16, depth=1, heads=2)).eval(), YNormalisation(0.0, 1.0))
    cfg = OracleConfig(n_tasks=3, n_samples=8, n_mixture_tasks=3, n_tgt=6, likelihood=LikelihoodConfig(steps=2),
                       bayes_grid={"lengthscale": 4, "period": 8})
    lines = []
    table = run_gp_oracle(model, cfg, SamplerConfig(steps=3), [shard], seed=0, progress=False, log=lines.append)
    assert list(table.columns) == COLUMNS and len(lines) == 4
    methods = ("gp_optimum", "ndp_exact", "ndp", "gp_samples_gaussfit", "bayes_samples_gaussfit")
    got = set(zip(table.kernel, table.method))
    assert got == {(k, m) for k in ("se", "matern52", "weakly_periodic", "mixture") for m in methods} | {("mixture", "bayes_mixture")}
    t = table.set_index(["kernel", "method"])
    assert (t.n_tasks == 3).all() and np.isfinite(t.loglik).all() and np.isfinite(t.stderr).all()
    assert (t.xs("gp_optimum", level="method").gap == 0).all()
    assert t.loc[("se", "ndp"), "n_samples"] == 8 and np.isnan(t.loc[("se", "ndp_exact"), "n_samples"])
    assert t.loc[("se", "bayes_samples_gaussfit"), "n_samples"] == 8
    assert np.isnan(t.loc[("se", "ndp_exact"), "crps"]) and np.isfinite(t.loc[("se", "ndp_exact"), "nll"])
    assert np.isfinite(t.xs("ndp", level="method")[["nll", "crps"]].values).all()
    # The untrained network outputs u = 0: its exact density is the N(0, ~1) base, far below the optimum.
    exact, opt = t.xs("ndp_exact", level="method"), t.xs("gp_optimum", level="method")
    assert (exact.loglik < opt.loglik).all() and (exact.gap > 0).all()
    np.testing.assert_allclose(exact.gap, opt.loglik - exact.loglik, atol=1e-9)  # paired: same tasks
    text = format_table(table)
    assert len(text.splitlines()) == 1 + len(table) and "gap to optimum" in text.splitlines()[0]

    # One job per kernel (the workflow's): each kernel's rows are the same when run alone, and
    # the per-kernel CSVs read back in oracle_kernels order are the whole table, as written.
    assert oracle_kernels(cfg) == ["se", "matern52", "weakly_periodic", "mixture"]
    paths = []
    for kernel in reversed(oracle_kernels(cfg)):  # order of the runs does not matter
        alone = run_gp_oracle(model, cfg, SamplerConfig(steps=3), [shard], seed=0, kernels=[kernel], progress=False)
        pd.testing.assert_frame_equal(alone.reset_index(drop=True), table[table.kernel == kernel].reset_index(drop=True))
        paths.insert(0, str(tmp_path / f"{kernel}.csv"))
        write_table(alone, paths[0])
    write_table(table, str(tmp_path / "whole.csv"))
    write_table(read_tables(paths), str(tmp_path / "joined.csv"))
    assert (tmp_path / "joined.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    with pytest.raises(ValueError, match="already read"):
        read_tables([paths[0], paths[0]])
    pd.read_csv(paths[0]).drop(columns="gap").to_csv(tmp_path / "torn.csv", index=False)
    with pytest.raises(ValueError, match="torn.csv: columns"):
        read_tables([str(tmp_path / "torn.csv")])
    # Without the prior's shards there is no Bayes row (and no mixture kernel); the other rows stay.
    bare = run_gp_oracle(model, cfg, SamplerConfig(steps=3), [], seed=0, progress=False)
    assert set(bare.kernel) == {"se", "matern52", "weakly_periodic"} and "bayes_samples_gaussfit" not in set(bare.method)
    pd.testing.assert_frame_equal(bare.reset_index(drop=True),
                                  table[table.kernel.isin(set(bare.kernel)) & (table.method != "bayes_samples_gaussfit")].reset_index(drop=True))
    with pytest.raises(ValueError, match="needs held-out prior shards"):
        run_gp_oracle(model, cfg, SamplerConfig(steps=3), [], kernels=["mixture"], progress=False)
    with pytest.raises(ValueError, match="unknown GP-oracle kernel"):
        run_gp_oracle(model, replace(cfg, n_mixture_tasks=0), SamplerConfig(steps=3), [shard], kernels=["mixture"], progress=False)


def test_each_kernel_is_keyed_on_the_settings_it_reads(shard):
    # The workflow's gp_oracle job of a kernel gets kernel_settings only: its rows must equal
    # those of the whole section, and a setting of the other kind must not reach its key.
    torch.manual_seed(0)
    model = TrainedNDP(NDP(NDPConfig(dim=16, depth=1, heads=2)).eval(), YNormalisation(0.0, 1.0))
    section = {"n_tasks": 2, "n_samples": 8, "n_mixture_tasks": 2, "n_tgt": 6, "noise_std": 0.1,
               "likelihood": {"steps": 2}, "bayes_grid": {"lengthscale": 2, "period": 2, "periodic_lengthscale": 1,
                                                          "variance": 1, "noise_std": 1, "slope_std": 1}}
    whole = run_gp_oracle(model, OracleConfig.from_config(section), SamplerConfig(steps=3), [shard], progress=False)
    for kernel in ("matern52", "mixture"):
        own = kernel_settings(section, kernel)
        alone = run_gp_oracle(model, OracleConfig.from_config(own), SamplerConfig(steps=3), [shard], kernels=[kernel], progress=False)
        pd.testing.assert_frame_equal(alone.reset_index(drop=True), whole[whole.kernel == kernel].reset_index(drop=True))
    assert kernel_settings({**section, "n_mixture_tasks": 5}, "se") == kernel_settings(section, "se")
    assert kernel_settings({**section, "n_tasks": 5}, "mixture") == kernel_settings(section, "mixture")
    assert kernel_settings({**section, "n_tgt": 7}, "mixture") != kernel_settings(section, "mixture")
    # every kernel's Bayes row integrates over the grid
    assert kernel_settings({**section, "bayes_grid": {"lengthscale": 3}}, "se") != kernel_settings(section, "se")


def test_bench_script_refuses_part_of_the_table_without_its_own_file(tmp_path):
    script = Path(__file__).parents[1] / "bench" / "gp_oracle.py"
    # it must stop before reading anything: neither the config nor the model exists here
    run = subprocess.run([sys.executable, str(script), "--kernels", "se"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2 and "name its file with --out" in run.stderr
    assert not (tmp_path / "results").exists()
