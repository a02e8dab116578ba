"""The cluster path for real: the tiny config through `--profile profiles/slurm-gpu` on a
single-node SLURM cluster started here (tests/slurm/cluster.sh; needs root).

Every job must go through sbatch with the resources the profile promises (one GPU for the
train, gp_oracle and LLM rules, seen by the job as CUDA_VISIBLE_DEVICES), and the results must
equal the local run's byte for byte.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, copy_workflow

CLUSTER = REPO / "tests/slurm/cluster.sh"
GPU_RULES = {"train", "gp_oracle", "expert", "allmp"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a SLURM cluster on this machine needs root (slurmd runs jobs as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("SLURM")}
    env.update(SLURMCTLD_PORT=str(_free_port()), SLURMD_PORT=str(_free_port()))
    return subprocess.run([CLUSTER, "start", state], env=env, capture_output=True, text=True)


def test_a_link_left_by_a_killed_cluster_does_not_block_the_next(tmp_path: Path):
    """A run killed before `stop` leaves /etc/slurm/slurm.conf linked to its dead cluster; the next
    start replaces that link, but never a live test cluster's link or a config it did not write.
    (Runs before the module's cluster starts: tests run in file order.)"""
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() or conf.is_symlink():
        # Only a link to a dead test cluster may be touched; anything else belongs to this machine.
        target = Path(os.readlink(conf)) if conf.is_symlink() else None
        if target is None or (target.exists() and "ClusterName=llmflowtest" not in target.read_text()):
            pytest.skip("this machine has a SLURM config of its own")
    subprocess.run([CLUSTER, "install"], check=True)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "slurm.conf").write_text("ClusterName=llmflowtest\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (killed / "slurmctld.pid").write_text(f"{gone.pid}\n")
    conf.parent.mkdir(exist_ok=True)
    conf.unlink(missing_ok=True)
    conf.symlink_to(killed / "slurm.conf")

    fresh = tmp_path / "fresh"
    try:
        started = _start(fresh)
        assert started.returncode == 0, started.stderr
        assert os.readlink(conf) == str(fresh / "slurm.conf")
        # While it runs, a second cluster may not take the link over.
        second = _start(tmp_path / "second")
        assert second.returncode == 1 and "still running" in second.stderr, second.stderr
        assert os.readlink(conf) == str(fresh / "slurm.conf")
    finally:
        subprocess.run([CLUSTER, "stop", fresh], check=True)
        if conf.is_symlink() and os.readlink(conf) == str(killed / "slurm.conf"):
            conf.unlink()  # the old script refused; leave no dead link behind
    assert not conf.is_symlink()

    # A config this script did not write is never replaced.
    conf.write_text("ClusterName=site\n")
    try:
        refused = _start(tmp_path / "third")
        assert refused.returncode == 1 and "not ours" in refused.stderr, refused.stderr
        assert conf.read_text() == "ClusterName=site\n"
    finally:
        conf.unlink()


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of a client of a fresh cluster (SLURM_CONF set); the daemons end afterwards."""
    subprocess.run([CLUSTER, "install"], check=True)
    state = tmp_path_factory.mktemp("slurm")
    started = _start(state)
    try:
        assert started.returncode == 0, started.stderr
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("SLURM")}
        env["SLURM_CONF"] = str(state / "slurm.conf")
        yield env
    finally:
        subprocess.run([CLUSTER, "stop", state], check=True)


def _jobs(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every job slurmctld knows (finished ones included: MinJobAge is an hour), by job id."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        jobs[fields["JobId"]] = fields
    return jobs


def test_tiny_config_runs_on_slurm_like_locally(slurm_env: dict[str, str], tiny_run: Path, tmp_path: Path):
    workdir = copy_workflow(tmp_path / "wf")
    profile = workdir / "profiles/slurm-gpu/config.yaml"
    text = profile.read_text()
    assert "CHANGE_ME_gpu_partition" in text and "CHANGE_ME_account" in text
    # The test cluster's partition and account; everything else is the profile as shipped.
    profile.write_text(re.sub(r"CHANGE_ME_\w+", "llmflow", text))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm-gpu", "--jobs", "3",
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
         "--configfile", "tests/config.yaml"],
        cwd=workdir, env=slurm_env, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-5000:]

    # Every job of the DAG wrote one log; its first line names the SLURM job it ran in.
    jobs = _jobs(slurm_env)
    logs = sorted((workdir / "logs").rglob("*.log"))
    assert len(logs) == len(jobs) >= 20, (len(logs), len(jobs))
    seen_gpu_rules = set()
    for log in logs:
        head = log.read_text().splitlines()[0]
        job_id, visible = re.search(r"SLURM job (\S+), CUDA_VISIBLE_DEVICES=(\S+)", head).groups()
        job = jobs[job_id]
        rule = re.match(r"rule_(.+?)(_wildcards_.*)?$", job["Comment"]).group(1)
        assert job["JobState"] == "COMPLETED", (log, job["JobState"])
        if rule in GPU_RULES:
            seen_gpu_rules.add(rule)
            assert job.get("TresPerJob") == "gres:gpu:1", (rule, job.get("TresPerJob"))
            assert visible in ("0", "1"), (rule, visible)
        else:
            assert "gpu" not in job.get("TresPerJob", ""), (rule, job.get("TresPerJob"))
            assert visible == "-", (rule, visible)
    assert seen_gpu_rules == GPU_RULES

    # The same numbers as the local run.
    assert (workdir / "results/metrics/summary.csv").read_bytes() == (tiny_run / "results/metrics/summary.csv").read_bytes()
    local = sorted(p.relative_to(tiny_run) for p in (tiny_run / "results/predictions").rglob("*.csv"))
    remote = sorted(p.relative_to(workdir) for p in (workdir / "results/predictions").rglob("*.csv"))
    assert local == remote and local
    for rel in local:
        assert (workdir / rel).read_bytes() == (tiny_run / rel).read_bytes(), rel
