"""Benchmark: A-LLMP seconds per drawn number, prompt order ``query`` versus ``append``.

Both orders sample the same task with the same seed, the prompt settings of the config's
``expert`` section and its ``allmp`` settings (``--samples`` overrides ``n_samples``), on one
torch thread. ``query`` rebuilds and runs each draw's whole prompt (the context sorted by distance to
the query); ``append`` keeps the KV cache of a prompt that only grows. The last line is
``speedup=<query s per number / append s per number>``.

    python bench/allmp_speed.py [--model gemma3-270m] [--task results/tasks/synth-sine.zarr]
        [--samples N] [--targets N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from llmflow import allmp, expert, llm
from llmflow.config import validate_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m", help="embedded name or HF folder")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--task", default="results/tasks/synth-sine.zarr")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--samples", type=int, default=0, help="samples per task (0: allmp.n_samples)")
    ap.add_argument("--targets", type=int, default=0, help="first N targets only (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    expert_cfg = expert.ExpertConfig.from_config(config["expert"])
    base = allmp.AllmpConfig.from_config(config["allmp"])
    if args.samples:
        base = dataclasses.replace(base, n_samples=args.samples)
    model, tok = llm.load_model(args.model, models_dir=args.models_dir)
    task = xr.open_zarr(args.task).load()
    if args.targets:
        task = task.isel(target=slice(0, args.targets))
    warm = task.isel(target=slice(0, 1))
    allmp.sample_allmp(model, tok, warm, expert_cfg, dataclasses.replace(base, n_samples=1), "", progress=False)

    n = base.n_samples * task.sizes["target"]
    per_number = {}
    for order in ("query", "append"):
        cfg = dataclasses.replace(base, order=order)
        t0 = time.perf_counter()
        ds = allmp.sample_allmp(model, tok, task, expert_cfg, cfg, args.model, progress=False)
        per_number[order] = (time.perf_counter() - t0) / n
        y = ds["y"].values
        print(f"{order:>6}: {per_number[order]:.3f} s per drawn number ({n} numbers), "
              f"invalid strings {int(ds['n_invalid'].sum())}, mean y {np.nanmean(y):.3f}, "
              f"sd {np.nanstd(y):.3f}", flush=True)
    print(f"model={args.model} task={task.attrs.get('name', '')} context={task.sizes['context']} "
          f"targets={task.sizes['target']} samples={base.n_samples} threads={torch.get_num_threads()}")
    print(f"speedup={per_number['query'] / per_number['append']:.2f}")


if __name__ == "__main__":
    main()
