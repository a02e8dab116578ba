"""Logs: every job of the DAG writes one under logs/, and a failed job's error is its last line,
shown by `--show-failed-logs`."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import snakemake


def test_every_job_writes_a_log(workflow_copy: Path):
    result = snakemake(workflow_copy, "-n", "--forceall", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    # A dry run prints one block per job: "rule <name>:" then indented "key: value" lines.
    blocks = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", result.stdout + result.stderr, re.M)
    jobs = [(rule, body) for rule, body in blocks if rule != "all"]
    assert len(jobs) >= 20
    for rule, body in jobs:
        logs = re.search(r"^    log: (.+)$", body, re.M)
        assert logs, f"rule {rule} has no log"
        assert all(p.startswith("logs/") and p.endswith(".log") for p in logs.group(1).split(", ")), (rule, logs.group(1))


def test_failed_job_ends_its_log_with_the_error(workflow_copy: Path):
    # Inputs that exist but are not what they claim: the benchmark job fails reading the model.
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for k in range(n):
            (workflow_copy / f"results/prior/{split}/shard-{k}.zarr").mkdir(parents=True)
    model = workflow_copy / "results/ndp/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not a model\n")
    result = snakemake(workflow_copy, "-j1", "--show-failed-logs", "results/bench/gp_oracle.csv",
                       "--configfile", "tests/config.yaml")
    assert result.returncode != 0
    # One job per kernel; with -j1 the first to fail stops the run.
    logs = sorted((workflow_copy / "logs/bench/gp_oracle").glob("*.log"))
    assert len(logs) == 1, logs
    log = logs[0].read_text().splitlines()
    last = log[-1]
    assert last.startswith("ERROR ") and "\n" not in last, log[-5:]
    assert "Traceback" in "\n".join(log)  # the full traceback precedes it
    assert last in result.stdout + result.stderr  # --show-failed-logs prints the log
    assert not list((workflow_copy / "results/bench").rglob("*.csv"))


def test_torch_jobs_run_deterministic_kernels_on_the_rules_threads(tmp_path: Path):
    import torch

    from llmflow.logs import log_errors

    before, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(False)
    try:
        for wanted in (1, 3):  # the rule's threads, whatever torch had
            with log_errors(str(tmp_path / "job.log"), threads=wanted):
                assert torch.are_deterministic_algorithms_enabled()
                # enforced on CPU; on CUDA a warning where no deterministic kernel exists
                assert torch.is_deterministic_algorithms_warn_only_enabled() == torch.cuda.is_available()
                assert torch.get_num_threads() == wanted
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(threads)
    first = (tmp_path / "job.log").read_text().splitlines()[0]
    assert re.search(r"INFO llmflow: host \S+, SLURM job \S+, CUDA_VISIBLE_DEVICES=\S+$", first), first
