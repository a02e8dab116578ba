"""Does twisted SMC improve LLM-NDP's calibration? ODE vs SMC side by side on finished tasks.

    .venv/bin/python bench/smc_coverage.py --run . --model results/ndp/model.pt [--samples 128]

Reads every task store under ``<run>/results/tasks`` that has an expert store under
``<run>/results/expert/<model>/shard-*/``, draws LLM-NDP samples with the guided ODE and with
``llmflow.smc`` from the same seeds and settings (the config's ``sampler`` and ``sample``
sections), and prints per task and on average: coverage of the central 50% / 90% intervals,
CRPS, and the text constraint rate where the task has one. Ends with one line
``coverage90_ode=<float> coverage90_smc=<float> crps_ode=<float> crps_smc=<float>`` (means
over tasks with a known truth).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from llmflow.config import validate_config
from llmflow.frame import TaskFrame
from llmflow.metrics import sample_metrics
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm
from llmflow.predict import SampleConfig, sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, task_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=".", help="folder holding results/tasks and results/expert")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--model", default="results/ndp/model.pt")
    parser.add_argument("--llm", default="smollm2-135m", help="expert folder name under results/expert")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    validate_config(config)
    model = TrainedNDP.load(args.model)
    run = Path(args.run)
    rows = []
    for store in sorted((run / "results/expert" / args.llm).glob("shard-*/*.zarr")):
        task_path = run / "results/tasks" / store.name
        if not task_path.exists():
            continue
        task = Task.from_dataset(xr.open_zarr(task_path))
        frame = TaskFrame.fit(task, tuple(config["prior"]["x_range"]), config["sample"]["y_scale_min"])
        expert = ExpertTerm.from_store(xr.open_zarr(store).load(), task, SampleConfig.from_config(config["sample"]))
        for method in ("ode", "smc"):
            start = time.perf_counter()
            sampler = SamplerConfig.from_config({**config["sampler"], "method": method})
            draws = sample_task(model, task, frame, args.samples, sampler, task_seed(config["seed"], task.name), expert)
            scores = sample_metrics(task, draws)
            rows.append({"task": task.name, "method": method, "seconds": time.perf_counter() - start,
                         **{k: scores.get(k, np.nan) for k in ("coverage50", "coverage90", "crps", "constraint")}})
    if not rows:
        raise SystemExit(f"no task with an expert store under {run / 'results/expert' / args.llm}")
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print(table.groupby("method")[["coverage50", "coverage90", "crps", "constraint", "seconds"]].mean())
    mean = table.groupby("method")[["coverage90", "crps"]].mean()
    print(f"coverage90_ode={mean.loc['ode', 'coverage90']:.3f} coverage90_smc={mean.loc['smc', 'coverage90']:.3f} "
          f"crps_ode={mean.loc['ode', 'crps']:.3f} crps_smc={mean.loc['smc', 'crps']:.3f}")


if __name__ == "__main__":
    main()
