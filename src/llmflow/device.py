"""Device choice for every torch stage (NDP training, sampling, the benchmark, the LLM jobs)."""

from __future__ import annotations

import os

import torch


def choose_device(requested: str = "auto", shard: int = 0) -> torch.device:
    """Device for job ``shard``: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).

    Under a scheduler (SLURM, or whenever CUDA_VISIBLE_DEVICES is set) the job uses the first
    GPU it was given. Run locally, Snakemake does not split GPUs between jobs, so each job picks
    ``cuda:{shard % n_gpus}`` itself to spread shards over the visible GPUs; a job that is not
    sharded (training, the benchmark) is shard 0.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device=cuda requested but torch sees no CUDA device")
    if "SLURM_JOB_ID" in os.environ or os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    return torch.device("cuda", shard % torch.cuda.device_count())
