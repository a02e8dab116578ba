"""Benchmark: A-LLMP on several tasks drawn side by side vs one task at a time.

The given task stores are taken ``--group`` at a time (``allmp.tasks_per_forward``); each group
is sampled once task by task and once together (``sample_allmp_tasks``), in alternating order
per group, with the config's ``expert`` and ``allmp`` settings, each task with its own seed.
Per group it prints both times, their ratio and how many draws differ (0 when batching is exact:
a task's draws do not depend on the tasks beside it). The last line is
``ratio=<seconds one at a time / seconds together>`` over all groups.

    python bench/allmp_side_by_side.py --group 4 results/tasks/synth-*.zarr results/tasks/gp-*.zarr
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
    ap.add_argument("tasks", nargs="+", help="task stores (results/tasks/*.zarr)")
    ap.add_argument("--model", default="gemma3-270m", help="embedded name or HF folder")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--group", type=int, default=4, help="tasks drawn side by side")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    expert_cfg = expert.ExpertConfig.from_config(config["expert"])
    cfg = allmp.AllmpConfig.from_config(config["allmp"])
    model, tok = llm.load_model(args.model, models_dir=args.models_dir)
    tasks = [xr.open_zarr(path).load() for path in args.tasks]
    warm = dataclasses.replace(cfg, n_samples=1)
    allmp.sample_allmp(model, tok, tasks[0].isel(target=slice(0, 1)), expert_cfg, warm, "", progress=False)
    total = {"alone": 0.0, "together": 0.0}
    for k, lo in enumerate(range(0, len(tasks), args.group)):
        group = tasks[lo:lo + args.group]
        seeds = list(range(lo, lo + len(group)))
        secs, draws = {}, {}
        runs = {"alone": lambda: [allmp.sample_allmp(model, tok, t, expert_cfg, cfg, "", s, progress=False)
                                  for t, s in zip(group, seeds)],
                "together": lambda: allmp.sample_allmp_tasks(model, tok, group, expert_cfg, cfg, "", seeds, progress=False)}
        for label in (("alone", "together") if k % 2 == 0 else ("together", "alone")):
            t0 = time.perf_counter()
            draws[label] = runs[label]()
            secs[label] = time.perf_counter() - t0
            total[label] += secs[label]
        differ = sum(int(np.sum(~((a["y"].values == b["y"].values) | (np.isnan(a["y"].values) & np.isnan(b["y"].values)))))
                     for a, b in zip(draws["alone"], draws["together"]))
        names = ", ".join(str(t.attrs.get("name", "")) for t in group)
        print(f"{names}: one at a time {secs['alone']:.1f} s, together {secs['together']:.1f} s, "
              f"ratio {secs['alone'] / secs['together']:.2f}, draws that differ {differ}", flush=True)
    print(f"model={args.model} samples={cfg.n_samples} group={args.group} threads={torch.get_num_threads()}")
    print(f"ratio={total['alone'] / total['together']:.2f}")


if __name__ == "__main__":
    main()
