"""The workflow as users run it: lint, dry runs, bad config, and the tiny end-to-end run."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml

from conftest import REPO, snakemake


def test_lint_is_clean(workflow_copy: Path):
    result = snakemake(workflow_copy, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_results_paths_are_spelled_only_in_common_smk():
    # Rules take their paths from common.smk's names, scripts from snakemake.input/output/params.
    files = [REPO / "Snakefile", *REPO.glob("workflow/rules/*.smk"), *REPO.glob("workflow/scripts/*.py")]
    spelled = [f.name for f in files if "results/" in f.read_text() and f.name != "common.smk"]
    assert not spelled


def test_every_report_item_has_a_caption():
    items = [(smk, call) for smk in REPO.glob("workflow/rules/*.smk") for call in re.findall(r"\breport\((.*)\)", smk.read_text())]
    assert len(items) >= 7  # summary, fig1, fig2, calibration, a user task's figure, training curve, GP oracle
    for smk, call in items:
        caption = re.search(r'caption="([^"]+)"', call)
        assert caption and (smk.parent / caption.group(1)).read_text().strip(), (smk.name, call)


def _dry_run_jobs(stdout: str) -> list[dict[str, str]]:
    """The jobs a dry run lists: each one's rule and its fields (input, output, wildcards, ...)."""
    jobs = []
    for line in stdout.splitlines():
        if start := re.fullmatch(r"(?:local)?rule (\w+):", line):
            jobs.append({"rule": start.group(1)})
        elif jobs and (field := re.fullmatch(r"    (\w+): (.*)", line)):
            jobs[-1][field.group(1)] = field.group(2)
    return jobs


def _pairs(field: str) -> dict[str, str]:
    """`a=1, b=x` (a dry run's wildcards or resources) as a dict."""
    return dict(pair.split("=", 1) for pair in field.split(", ")) if field else {}


def test_slurm_profile_gives_every_llm_job_a_gpu(workflow_copy: Path):
    # 20 shards of 23 built-in tasks, the user task on its own shard 20: more shards than any
    # list of per-shard rule names would have held.
    def edit(config):
        config["tasks"]["gp"]["per_kernel"] = 20
        config["expert"]["shards"] = 20

    _break_config(workflow_copy, edit)
    result = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm-gpu", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [job for job in _dry_run_jobs(result.stdout) if job["rule"] != "all"]
    for rule in ("expert", "allmp"):
        assert sorted(int(_pairs(j["wildcards"])["shard"]) for j in jobs if j["rule"] == rule) == list(range(21))
    for job in jobs:
        resources = _pairs(job.get("resources", ""))
        if job["rule"] in ("train", "gp_oracle", "expert", "allmp"):
            assert (resources.get("gpu"), resources["slurm_partition"]) == ("1", "CHANGE_ME_gpu_partition"), job
        else:
            assert (resources.get("gpu", "0"), resources["slurm_partition"]) == ("0", "CHANGE_ME_cpu_partition"), job


def test_allmp_tasks_limits_a_llmp_to_matching_tasks(workflow_copy: Path):
    _break_config(workflow_copy, lambda c: c["allmp"].update(tasks=["text-*", "user-*"]))
    result = snakemake(workflow_copy, "-n", "--forceall", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    sampled = {Path(t).stem for job in _dry_run_jobs(result.stdout) if job["rule"] == "allmp"
               for t in job["input"].split(", ") if t.startswith("results/tasks/")}
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
    tasks = pd.read_csv(tiny_run / "results/metrics/tasks.csv")
    assert list(tasks.columns) == ["task", "family", "method", "metric", "value"]
    for task in TINY_TASKS:
        methods = set(tasks.loc[tasks.task == task, "method"])
        assert {"ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp"} <= methods, (task, methods)
    gp = tasks[tasks.task == "gp-se-000"]
    assert {"gp_oracle"} <= set(gp.method) and "joint_loglik" in set(gp.metric)
    # exact NLL where a density exists, the KDE estimate (nll_kde) for the other sample methods
    assert set(gp.loc[gp.metric == "nll", "method"]) == {"i-llmp", "gp", "gp_oracle"}
    assert set(gp.loc[gp.metric == "nll_kde", "method"]) == {"ndp", "a-llmp", "llm-ndp", "llm-ndp-cal"}
    text = tasks[(tasks.task == "text-zero_after_30") & (tasks.metric == "constraint")]
    assert set(text.method) >= {"ndp", "llm-ndp", "gp"} and text.value.between(0, 1).all()
    summary = pd.read_csv(tiny_run / "results/metrics/summary.csv")
    assert list(summary.columns) == ["family", "method", "metric", "n_tasks", "mean", "se", "median", "diff_mean",
                                     "diff_se", "n_paired"]
    crps = summary[summary.metric == "crps"].set_index(["family", "method"])
    assert crps.loc[("gp", "gp"), "n_paired"] == 1 and np.isfinite(crps.loc[("gp", "gp"), "diff_mean"])
    assert "## CRPS" in (tiny_run / "results/metrics/summary.md").read_text()


def test_tiny_run_samples_and_predictions(tiny_run: Path):
    task = xr.open_zarr(tiny_run / "results/tasks/synth-sine.zarr")
    # expert.shards = sample.shards = 2 deal gp-se-000, synth-sine, text-zero_after_30, real-nile over shards 0, 1
    for store in ("samples/ndp/shard-1/synth-sine.zarr", "samples/llm-ndp/shard-1/synth-sine.zarr",
                  "samples/llm-ndp-cal/shard-1/synth-sine.zarr", "samples/gp/shard-1/synth-sine.zarr",
                  "samples/a-llmp/shard-1/synth-sine.zarr"):
        ds = xr.open_zarr(tiny_run / "results" / store)
        assert ds["y"].dims == ("sample", "target") and ds.sizes["target"] == task.sizes["target"]
    expert = xr.open_zarr(tiny_run / "results/expert/smollm2-135m/shard-1/synth-sine.zarr")
    mass = np.exp(expert["logp"]).sum("bin") + expert["lost_mass"]
    np.testing.assert_allclose(mass.values, 1.0, atol=1e-9)
    for method in ("ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp"):
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
    for caption in (REPO / "workflow/report").glob("*.rst"):  # each caption's opening words
        assert " ".join(caption.read_text().split()[:3]) in report, caption.name


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
    (workflow_copy / "tests/data/user_task.csv").write_text("month,temperature,observed\n1,2.0,true\n2,,true\n3,,false\n")
    result = snakemake(workflow_copy, "-j1", "--configfile", "tests/config.yaml")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "user task 'temperature': tests/data/user_task.csv: line 3, column 'temperature': missing value in a context row "
        "(only target rows may have an empty y)"
    )
    assert not (workflow_copy / "results").exists()


def test_predict_runs_only_what_the_user_tasks_need(predict_run):
    workdir, files = predict_run
    stores = {f.split(".zarr")[0] + ".zarr" for f in files if ".zarr/" in f}
    cached = {s for s in stores if "/.cache" in s}  # every stage's resume cache: <task>-<fingerprint>/<method>.zarr
    assert all(s.split("/")[-2].startswith("user-temperature-") for s in cached)
    assert {s.split("/")[-1] for s in cached} == {f"{m}.zarr" for m in ("i-llmp", "ndp", "llm-ndp", "llm-ndp-cal", "gp", "a-llmp")}
    stores -= cached
    assert {s for s in stores if s.startswith("results/tasks/")} == {"results/tasks/user-temperature.zarr"}
    # the user task's LLM shard is numbered after the expert.shards = 2 shards of the built-in tasks
    assert {s for s in stores if s.startswith("results/expert/")} == {"results/expert/smollm2-135m/shard-2/user-temperature.zarr"}
    assert {s for s in stores if s.startswith("results/samples/")} == {
        f"results/samples/{m}/shard-2/user-temperature.zarr" for m in ("ndp", "llm-ndp", "llm-ndp-cal", "gp", "a-llmp")}
    assert not any(f.startswith(("results/prior/test/", "results/bench/", "results/metrics/")) for f in files)
    assert {f for f in files if f.startswith(("results/predictions/", "results/figures/"))} == {
        *(f"results/predictions/user-temperature/{m}.csv" for m in ("ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp")),
        "results/figures/user-temperature.png", "results/figures/user-temperature.pdf"}


def test_predict_covers_targets_without_truth(predict_run):
    workdir, _ = predict_run
    task = xr.open_zarr(workdir / "results/tasks/user-temperature.zarr")
    assert np.isnan(task["y_target"].values[-2:]).all()  # months 11 and 12 have an empty y
    for method in ("ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp"):
        pred = pd.read_csv(workdir / f"results/predictions/user-temperature/{method}.csv")
        assert pred["x"].tolist() == [7, 8, 9, 10, 11, 12]
        assert np.isfinite(pred.drop(columns="x").to_numpy()).all(), method


def test_full_run_after_predict_reuses_its_outputs(predict_run, tiny_run: Path):
    _, files = predict_run
    redone = [f for f, mtime in files.items() if (tiny_run / f).stat().st_mtime_ns != mtime]
    assert not redone


TRUTH_METRICS = {"nll", "nll_kde", "crps", "energy", "coverage50", "coverage90", "mae", "joint_loglik"}


def test_metrics_only_where_the_truth_is_known(tiny_run: Path):
    summary = pd.read_csv(tiny_run / "results/metrics/tasks.csv")
    no_truth = summary[summary.task == "text-zero_after_30"]  # every target without truth
    assert set(no_truth.metric) == {"constraint", "roughness"}
    user = summary[summary.task == "user-temperature"]  # 4 targets with truth, 2 without
    assert TRUTH_METRICS <= set(user.metric) and np.isfinite(user[user.metric == "crps"].value).all()


def test_nested_command_line_overrides_are_typed(workflow_copy: Path):
    result = snakemake(workflow_copy, "-n", "--configfile", "tests/config.yaml",
                       "--config", 'sample={"n_samples": 8, "shards": 1}', 'expert={"shards": 3}')
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _dry_run_jobs(result.stdout)
    # three shards of the built-in tasks (gp, synth, text, real), the user task on its own
    assert {int(_pairs(j["wildcards"])["shard"]) for j in jobs if j["rule"] == "expert"} == {0, 1, 2, 3}
    # one sample and one gp job for the built-in tasks, one each for the user task
    for rule in ("sample", "gp"):
        assert sorted(int(_pairs(j["wildcards"])["shard"]) for j in jobs if j["rule"] == rule) == [0, 1], rule
    result = snakemake(workflow_copy, "-n", "--configfile", "tests/config.yaml", "--config", 'sample={"n_samples": "eight"}')
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "config error: sample.n_samples: 'eight' is not of type 'integer'"


def test_a_task_samples_alike_in_any_shard(tiny_run: Path, tmp_path: Path):
    # sample.shards = 2 put synth-sine in shard 1 beside real-nile; one shard of every built-in
    # task draws it after gp-se-000 in the same job: its samples and fitted GP must not move.
    # Without the resume caches (their key leaves out how tasks are dealt): drawn anew.
    workdir = tmp_path / "wf"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("models", ".cache-ndp", ".cache-gp"))
    (workdir / "results/models").symlink_to(tiny_run / "results/models")  # 0.5 GB, only read
    result = snakemake(workdir, "-j2", "--configfile", "tests/config.yaml", "--config", 'sample={"shards": 1}',
                       "--rerun-triggers", "params", "input", "--", "results/samples/ndp/shard-0", "results/samples/gp/shard-0")
    assert result.returncode == 0, result.stderr[-3000:]
    rules = {m.group(1) for m in re.finditer(r"^(?:local)?rule (\w+):$", result.stdout + result.stderr, re.M)}
    assert rules == {"sample", "gp"}, rules
    assert "gp-se-000" in {p.stem for p in (workdir / "results/samples/ndp/shard-0").iterdir()}
    assert not any("reusing" in (workdir / f"logs/{rule}/shard-0.log").read_text() for rule in ("sample", "gp"))
    for method in ("ndp", "llm-ndp", "llm-ndp-cal", "gp"):
        alone = xr.open_zarr(tiny_run / f"results/samples/{method}/shard-1/synth-sine.zarr").load()
        xr.testing.assert_identical(xr.open_zarr(workdir / f"results/samples/{method}/shard-0/synth-sine.zarr").load(), alone)


def test_a_run_dealt_otherwise_reuses_every_finished_task(tiny_run: Path, tmp_path: Path):
    # Other shards (config.yaml: 2 expert, 2 sample) and tasks per forward pass (4) change no
    # task's result: the expert, A-LLMP and sample jobs copy every task out of the resume caches.
    workdir = tmp_path / "wf"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("models", "logs"))
    (workdir / "results/models").symlink_to(tiny_run / "results/models")
    stages = {"expert": "results/expert/*/shard-*/*.zarr", "allmp": "results/samples/a-llmp/shard-*/*.zarr",
              "sample": "results/samples/ndp/shard-*/*.zarr"}
    before = {stage: {p.name: p for p in tiny_run.glob(pattern)} for stage, pattern in stages.items()}
    result = snakemake(workdir, "-j2", "--configfile", "tests/config.yaml", "--config", 'expert={"shards": 3}',
                       'allmp={"tasks_per_forward": 1}', 'sample={"shards": 1}',
                       "--forcerun", "expert", "allmp", "sample", "--until", "allmp", "sample")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage, pattern in stages.items():
        logs = "".join(p.read_text() for p in workdir.glob(f"logs/{stage}/**/shard-*.log"))
        reused = set(re.findall(r"reusing \S*/([^/\s]+)-[0-9a-f]{16}$", logs, re.M))
        assert {f"{t}.zarr" for t in reused} == set(before[stage]), (stage, reused)
        # the stores this run wrote (the copy also holds the old shards' folders)
        written = [Path(p) for p in re.findall(r"wrote (\S+)$", logs, re.M) if Path(p).match(pattern)]
        assert sorted(p.name for p in written) == sorted(before[stage]), (stage, written)
        for path in written:
            xr.testing.assert_identical(xr.open_zarr(workdir / path).load(), xr.open_zarr(before[stage][path.name]).load())


def test_a_retrained_network_is_not_served_from_the_resume_cache(tiny_run: Path, tmp_path: Path):
    # rule sample's cache key hashes model.pt: other weights, same settings, draw anew
    from llmflow.checkpoint import load_model, save_model

    workdir = tmp_path / "wf"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("models"))
    (workdir / "results/models").symlink_to(tiny_run / "results/models")
    model = load_model(workdir / "results/ndp/model.pt")
    with torch.no_grad():
        next(model.net.parameters()).add_(0.1)
    save_model(model, workdir / "results/ndp/model.pt")
    result = snakemake(workdir, "-j2", "--configfile", "tests/config.yaml", "--rerun-triggers", "mtime",
                       "--", "results/samples/ndp/shard-0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" not in (workdir / "logs/sample/shard-0.log").read_text()
    task = next(p.name for p in (workdir / "results/samples/ndp/shard-0").iterdir() if p.suffix == ".zarr")
    before = xr.open_zarr(tiny_run / f"results/samples/ndp/shard-0/{task}")["y"].values
    assert not np.array_equal(xr.open_zarr(workdir / f"results/samples/ndp/shard-0/{task}")["y"].values, before)


def test_a_new_calibration_grid_reruns_the_sample_jobs_not_the_fitted_gps(tiny_run: Path):
    # a rule's params hold only what its job reads: the fitted GP reads n_samples and y_scale_min
    # of the sample section, not the calibrated product's grid
    result = snakemake(tiny_run, "-n", "--configfile", "tests/config.yaml",
                       "--config", 'sample={"calibration": {"weights": [0.0, 1.0]}}')
    assert result.returncode == 0, result.stderr[-3000:]
    rules = {job["rule"] for job in _dry_run_jobs(result.stdout)}
    assert "sample" in rules and "gp" not in rules, rules
