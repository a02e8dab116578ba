"""Kill and resume: SIGKILL `snakemake -j2 --configfile tests/config.yaml` in every stage, rerun,
and get the uninterrupted run's results (the session's `tiny_run`) byte for byte.

The kill moments are seeded: each kill point waits for its stage's log to appear in the current
attempt and then a delay from ``random.Random(SEED)``. Each attempt resumes from the tree the
previous one left. After every kill no zarr store may be torn; at the end every output (metrics,
predictions, samples, expert densities, tasks, model weights, figures) must equal the reference,
training must have resumed from its last checkpoint and the expert stage must have reused every
task it had finished.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from conftest import copy_workflow
from killresume import (RESUME_ARGS, RUN_ARGS, KillPoint, cut_expert_stores, digest_tree, interrupted, run_attempt,
                        unlock, unreadable_stores)

SEED = 6
# Markers and delays fit the tiny config on 2 shared cores: training takes ~1 s after its first
# checkpoint (so the kill leaves one to resume from), an expert task a few seconds after the
# first one of a built-in task lands in the cache (not the user task's, nor its temporary
# .tmp-… folder: that task is alone in its shard, whose job ends with it, and the kill then
# caught the next shard's job before it had loaded the model, with nothing to reuse), a sample
# job a few seconds; evaluation is the evaluate job
# (~0.5 s after its log appears) and then the figures job (several seconds).
KILL_POINTS = (
    KillPoint("train", "results/ndp/checkpoints/step-*.pt", 0.3),
    KillPoint("expert", "results/expert/*/.cache/[!u.]*/i-llmp.zarr", 3.0),
    KillPoint("sample", "logs/sample/*.log", 3.0),
    KillPoint("evaluate", "logs/evaluate.log", 2.0),
)


def test_killed_pipeline_resumes_to_identical_results(tiny_run: Path, tmp_path: Path):
    workdir = copy_workflow(tmp_path / "wf")
    rng = random.Random(SEED)
    hit: set[str] = set()
    checkpoint_steps: list[int] = []
    cached: set[str] = set()
    args = RUN_ARGS
    for point in KILL_POINTS:
        attempt = run_attempt(workdir, args, point, rng.uniform(0, point.delay_max))
        if not attempt.killed:  # the pipeline finished before this stage's kill moment
            assert attempt.returncode == 0, attempt.stderr[-3000:]
            break
        stages = interrupted(workdir)
        hit |= stages
        assert not unreadable_stores(workdir / "results"), unreadable_stores(workdir / "results")
        # What a killed train or expert job left for the next attempt to reuse.
        if "train" in stages:
            checkpoint_steps += [int(p.stem.split("-")[1]) for p in workdir.glob("results/ndp/checkpoints/step-*.pt")]
        if "expert" in stages:  # the tasks a cut expert job had finished (<task>-<fingerprint>/i-llmp.zarr)
            cut = {(Path(s).parent.parent, Path(s).stem) for s in cut_expert_stores(workdir)}  # (model folder, task)
            cached |= {str(p.parent.relative_to(workdir)) for p in workdir.glob("results/expert/*/.cache/*/i-llmp.zarr")
                       if (p.parent.parent.parent.relative_to(workdir), p.parent.name.rsplit("-", 1)[0]) in cut}
        unlock(workdir)
        args = RESUME_ARGS
    final = run_attempt(workdir, args, None, 0.0)
    assert final.returncode == 0, final.stderr[-3000:]

    # The kills cut short a job of every stage they aim at (Snakemake's own incomplete marks).
    assert {"train", "expert", "sample", "evaluate"} <= hit, hit
    # Training resumed from a checkpoint at least as late as any the kills left behind.
    train_log = (workdir / "logs/ndp/train.log").read_text()
    resumed = re.search(r"resumed from step (\d+)", train_log)
    assert checkpoint_steps and resumed and int(resumed.group(1)) >= max(checkpoint_steps), train_log[-500:]
    # The expert stage reused every task it had finished before a kill.
    expert_log = "".join(p.read_text() for p in workdir.glob("logs/expert/*/shard-*.log"))
    assert cached and all(f"reusing {entry}" in expert_log for entry in cached), (cached, expert_log[-1000:])

    # Every output as the uninterrupted run wrote it (CSVs and figures byte for byte).
    reference, resumed_tree = digest_tree(tiny_run / "results"), digest_tree(workdir / "results")
    assert "metrics/summary.csv" in reference and any(k.startswith("predictions/") for k in reference)
    assert reference.keys() == resumed_tree.keys(), set(reference) ^ set(resumed_tree)
    differ = [k for k in reference if reference[k] != resumed_tree[k]]
    assert not differ, differ
