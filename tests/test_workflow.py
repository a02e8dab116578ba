"""The workflow as users run it: lint, dry runs, bad config, and the tiny end-to-end run."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from conftest import snakemake


def test_lint_is_clean(workflow_copy: Path):
    result = snakemake(workflow_copy, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_slurm_profile_dry_run(workflow_copy: Path):
    result = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm-gpu")
    assert result.returncode == 0, result.stderr[-3000:]


def test_allmp_tasks_limits_a_llmp_to_matching_tasks(workflow_copy: Path):
    _break_config(workflow_copy, lambda c: c["allmp"].update(tasks=["text-*", "user-*"]))
    result = snakemake(workflow_copy, "-n", "--forceall", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    sampled = set(re.findall(r"results/samples/([\w-]+)/a-llmp\.zarr", out))
    assert sampled == {"text-zero_after_30", "user-temperature"}
    exported = set(re.findall(r"results/predictions/([\w-]+)/a-llmp\.csv", out))
    assert exported == sampled
    assert "results/predictions/real-nile/llm-ndp.csv" in out  # the other methods stay


def test_tiny_run_writes_every_task(tiny_run: Path):
    for name in ("gp-se-000", "synth-sine", "text-zero_after_30", "real-nile", "user-temperature"):
        ds = xr.open_zarr(tiny_run / f"results/tasks/{name}.zarr")
        assert ds.attrs["name"] == name
        assert ds["x_context"].dims == ("context", "x_dim") and ds.sizes["target"] >= 1


def test_tiny_run_writes_valid_prior_shards(tiny_run: Path):
    config = yaml.safe_load((tiny_run / "tests/config.yaml").read_text())
    for split, n_shards in config["prior"]["shards"].items():
        for k in range(n_shards):
            ds = xr.open_zarr(tiny_run / f"results/prior/{split}/shard-{k}.zarr")
            assert ds["x"].dims == ("function", "point", "x_dim")
            assert ds["y"].dims == ("function", "point")
            for var in ("kernel", "lengthscale", "variance", "noise_std"):
                assert ds[var].dims == ("function",)
            assert ds.sizes["function"] == config["prior"]["functions_per_shard"]
            assert ds["y"].notnull().all()
    assert "wrote results/prior/train/shard-0.zarr" in (tiny_run / "logs/prior/train/shard-0.log").read_text()


TINY_TASKS = ("gp-se-000", "synth-sine", "text-zero_after_30", "real-nile", "user-temperature")


def test_tiny_run_scores_every_method_on_every_task(tiny_run: Path):
    summary = pd.read_csv(tiny_run / "results/metrics/summary.csv")
    assert list(summary.columns) == ["task", "family", "method", "metric", "value"]
    for task in TINY_TASKS:
        methods = set(summary.loc[summary.task == task, "method"])
        assert {"ndp", "i-llmp", "a-llmp", "llm-ndp"} <= methods, (task, methods)
    gp = summary[summary.task == "gp-se-000"]
    assert {"gp_oracle"} <= set(gp.method) and "joint_loglik" in set(gp.metric)
    text = summary[(summary.task == "text-zero_after_30") & (summary.metric == "constraint")]
    assert set(text.method) >= {"ndp", "llm-ndp"} and text.value.between(0, 1).all()
    assert "| family | metric |" in (tiny_run / "results/metrics/summary.md").read_text()


def test_tiny_run_samples_and_predictions(tiny_run: Path):
    task = xr.open_zarr(tiny_run / "results/tasks/synth-sine.zarr")
    for method in ("ndp", "llm-ndp", "a-llmp"):
        ds = xr.open_zarr(tiny_run / f"results/samples/synth-sine/{method}.zarr")
        assert ds["y"].dims == ("sample", "target") and ds.sizes["target"] == task.sizes["target"]
    expert = xr.open_zarr(tiny_run / "results/expert/smollm2-135m/synth-sine.zarr")
    mass = np.exp(expert["logp"]).sum("bin") + expert["lost_mass"]
    np.testing.assert_allclose(mass.values, 1.0, atol=1e-9)
    for method in ("ndp", "i-llmp", "a-llmp", "llm-ndp"):
        pred = pd.read_csv(tiny_run / f"results/predictions/synth-sine/{method}.csv")
        assert list(pred.columns) == ["x", "mean", "median", "q05", "q25", "q75", "q95"]
        assert len(pred) == task.sizes["target"]
        q = pred[["q05", "q25", "median", "q75", "q95"]].to_numpy()
        assert (np.diff(q, axis=1) >= -1e-9).all()


def test_tiny_run_draws_every_figure(tiny_run: Path):
    for name in ("fig1", "fig2", "calibration", "user-temperature"):
        for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
            path = tiny_run / f"results/figures/{name}{suffix}"
            assert path.read_bytes().startswith(magic), path


def test_figures_redraw_identically_and_report_holds_them(tiny_run: Path):
    figures = tiny_run / "results/figures"
    before = {f.name: f.read_bytes() for f in sorted(figures.iterdir())}
    result = snakemake(tiny_run, "-j1", "-R", "figures", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {f.name: f.read_bytes() for f in sorted(figures.iterdir())} == before
    result = snakemake(tiny_run, "--report", "report.html", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tiny_run / "report.html").read_text(errors="replace")
    assert "fig1.png" in report and "summary.csv" in report


def _break_config(workdir: Path, edit) -> None:
    path = workdir / "tests/config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))


def test_bad_config_fails_before_any_job(workflow_copy: Path):
    _break_config(workflow_copy, lambda c: c["prior"].update(lengthscale=[-0.5, 1.0]))
    result = snakemake(workflow_copy, "-j1", "--configfile", "tests/config.yaml")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "config error: prior.lengthscale[0]: -0.5 is less than or equal to the minimum of 0"
    )
    assert not (workflow_copy / "results").exists()


def test_missing_key_names_the_key(workflow_copy: Path):
    # --configfile only extends config.yaml, so remove the key from config.yaml itself.
    path = workflow_copy / "config.yaml"
    config = yaml.safe_load(path.read_text())
    del config["prior"]["n_points"]
    path.write_text(yaml.safe_dump(config))
    result = snakemake(workflow_copy, "-j1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "config error: prior.n_points: required key is missing"
    assert not (workflow_copy / "results").exists()


def test_bad_user_csv_fails_before_any_job(workflow_copy: Path):
    (workflow_copy / "tests/data").mkdir(exist_ok=True)
    (workflow_copy / "tests/data/user_task.csv").write_text("month,temperature,observed\n1,2.0,true\n2,,false\n")
    result = snakemake(workflow_copy, "-j1", "--configfile", "tests/config.yaml")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "user task 'temperature': tests/data/user_task.csv: line 3, column 'temperature': missing value"
    )
    assert not (workflow_copy / "results").exists()
