"""Per-task resume for jobs that compute several tasks (a shard): a job killed half-way
recomputes only the tasks it had not finished.

Snakemake deletes every output of a job before it reruns it, so a finished task's results are
also kept in a cache folder beside the outputs, under a fingerprint of the task's data, the
job's settings and this package's source code, and copied out on a rerun. A changed setting, a
changed input named in the settings (:func:`content_hash`) or any change to the code gives new
keys: a cached result is reused only where the same code would compute it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from llmflow.io import atomic_path, write_zarr

# compute(tasks) → one result per task: a store (zarr dataset) per output of the job
Compute = Callable[[list[xr.Dataset]], Sequence[Mapping[str, xr.Dataset]]]


def content_hash(path: str | Path, pattern: str = "*") -> str:
    """SHA-256 (hex) of a file, or of a folder's files matching ``pattern`` (relative paths and
    bytes, sorted): an input that a cached result depends on (a checkpoint, a zarr store)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent if file == path else path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@cache
def code_hash() -> str:
    """Hash of this package's Python source (not its bytecode, which differs between runs):
    part of every cache key, so no edit to the code reuses what the old code computed."""
    return content_hash(Path(__file__).parent, "*.py")


def fingerprint(task: xr.Dataset, settings: dict[str, Any]) -> str:
    """Short hash of a task's data and text, ``settings`` and the package's code: the key of a
    cached result."""
    keyed = {"settings": settings, "code": code_hash()}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode())
    for name in ("x_context", "y_context", "x_target", "y_target"):  # y_target: the expert's scored NLL
        digest.update(np.ascontiguousarray(task[name].values, dtype=np.float64).tobytes())
    digest.update(str(task.attrs.get("text", "")).encode())
    return digest.hexdigest()[:16]


def run_cached(task_paths: Sequence[str], stores: Mapping[str, Sequence[str]], settings: dict[str, Any],
               compute: Compute, cache_dir: str | Path, log=None, group: int = 1,
               inputs: Sequence[Mapping[str, str]] = ()) -> None:
    """For each task i (``task_paths[i]``) write its result ``key`` to ``stores[key][i]`` for
    every key, reusing the results in ``cache_dir``.

    A task's key hashes its data, ``settings`` (what every task of the job reads) and, where
    given, the content of ``inputs[i]`` (name → file or folder that task i alone reads, such as
    its expert store), so a changed input recomputes only the tasks that read it.

    ``compute(tasks)`` gets up to ``group`` uncached tasks of one family (their prompts alike
    in length, for the LLM stages) and returns one result per task, a dataset per key of
    ``stores``. Each task's results are cached as ``<cache_dir>/<task>-<fingerprint>/<key>.zarr``
    (each written atomically; a task counts as finished when all are there) and copied to the
    outputs byte for byte. Raises KeyError where a result lacks one of the keys.
    """
    cache_dir = Path(cache_dir)
    tasks = [xr.open_zarr(path).load() for path in task_paths]
    if inputs and len(inputs) != len(tasks):
        raise ValueError(f"{len(inputs)} inputs for {len(tasks)} tasks")
    keyed = [{**settings, "inputs": {k: content_hash(v) for k, v in inputs[i].items()}} if inputs else settings
             for i in range(len(tasks))]
    cached = [cache_dir / f"{task.attrs.get('name', Path(path).stem)}-{fingerprint(task, key)}"
              for task, path, key in zip(tasks, task_paths, keyed)]
    missing = [i for i, c in enumerate(cached) if not all((c / f"{key}.zarr").exists() for key in stores)]
    families: dict[str, list[int]] = {}
    for i in missing:
        families.setdefault(str(tasks[i].attrs.get("family", "")), []).append(i)
    for family in families.values():
        for lo in range(0, len(family), group):
            members = family[lo:lo + group]
            for i, result in zip(members, compute([tasks[i] for i in members]), strict=True):
                for key in stores:
                    write_zarr(result[key], cached[i] / f"{key}.zarr")
    for i, folder in enumerate(cached):
        if log is not None and i not in missing:
            log.info("reusing %s", folder)
        for key, paths in stores.items():
            with atomic_path(paths[i]) as tmp:
                shutil.copytree(folder / f"{key}.zarr", tmp)
            if log is not None:
                log.info("wrote %s", paths[i])
