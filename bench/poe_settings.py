"""Benchmark: the product-of-experts settings on every task of a finished run, not only the text.

``bench/text_conditioning.py`` picks the prompt and (λ, T) on the built-in text tasks; this one asks
what those settings cost on the rest. For each setting (λ = ``expert_weight``, T =
``expert_temperature``, s = ``expert_fade``) it draws LLM-NDP on every task of the run from the
run's own expert stores (``results/expert/<model>/shard-<k>/<task>.zarr``) and trained NDP, with the run's
seeds, and reports per family the mean CRPS and 90% coverage (truth known) and the text
constraint rate, next to NDP alone. Nothing is recomputed by the LLM.

    python bench/poe_settings.py [--config config.yaml] [--n-samples 64] [--threads 2]

The last line is machine-readable: ``best=<setting>`` the setting with the lowest mean CRPS
among those that meet the text goal (Fig. 2 constraint in at least half of the samples).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml

from llmflow.config import validate_config
from llmflow.frame import TaskFrame
from llmflow.metrics import sample_metrics
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm
from llmflow.predict import SampleConfig, sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, task_names, task_seed

FIG2 = "text-zero_after_30"
# (λ, T, s): the paper's plain product, the sharpened product of config.yaml, and the fade.
SETTINGS: dict[str, dict[str, float]] = {
    "λ=1, T=1": {"expert_weight": 1.0, "expert_temperature": 1.0},
    "λ=1, T=0.5": {"expert_weight": 1.0, "expert_temperature": 0.5},
    "λ=2, T=0.5": {"expert_weight": 2.0, "expert_temperature": 0.5},
    "λ=2, T=0.25": {"expert_weight": 2.0, "expert_temperature": 0.25},
    "λ=2, T=0.25, fade 0.5": {"expert_weight": 2.0, "expert_temperature": 0.25, "expert_fade": 0.5},
    "λ=2, T=0.25, fade 1": {"expert_weight": 2.0, "expert_temperature": 0.25, "expert_fade": 1.0},
}
METRICS = ("crps", "coverage90", "constraint")


def run_setting(ndp: TrainedNDP, tasks: list[Task], experts: dict[str, xr.Dataset], config: dict,
                sample_cfg: SampleConfig, n_samples: int, with_ndp: bool) -> list[dict]:
    """Metric rows (task, family, method, metric, value) of LLM-NDP (and NDP) on every task."""
    rows = []
    sampler = SamplerConfig.from_config(config["sampler"])
    for task in tasks:
        frame = TaskFrame.fit(task, tuple(config["prior"]["x_range"]), sample_cfg.y_scale_min)
        seed = task_seed(config["seed"], task.name)
        expert = ExpertTerm.from_store(experts[task.name], task, sample_cfg)
        draws = {"llm-ndp": sample_task(ndp, task, frame, n_samples, sampler, seed, expert)}
        if with_ndp:
            draws["ndp"] = sample_task(ndp, task, frame, n_samples, sampler, seed)
        for method, samples in draws.items():
            rows += [{"task": task.name, "family": task.family, "method": method, "metric": k, "value": v}
                     for k, v in sample_metrics(task, samples).items() if k in METRICS]
    return rows


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: mean CRPS and coverage90 per family, text constraint, Fig. 2 rate."""
    out = {}
    for setting, df in rows.groupby("setting", sort=False):
        line = {}
        for (family, metric), v in df[df.metric != "constraint"].groupby(["family", "metric"])["value"].mean().items():
            line[f"{family} {metric}"] = v
        text = df[df.metric == "constraint"]
        line["text constraint"] = text["value"].mean()
        line["Fig. 2"] = text.loc[text.task == FIG2, "value"].mean()
        out[setting] = line
    return pd.DataFrame(out).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--n-samples", type=int, default=None, help="default: the config's sample.n_samples")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), help=f"names from {list(SETTINGS)}")
    ap.add_argument("--out", default="results/bench/poe_settings.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    res = Path(args.results)
    model_name = Path(config["llm"]["model"]).name
    names = task_names(config)
    stores = {p.stem: p for p in (res / "expert" / model_name).glob("shard-*/*.zarr")}
    missing = [n for n in names if n not in stores]
    if missing:
        raise SystemExit(f"{res}/expert/{model_name}: no expert store for {missing}; run the pipeline first")
    tasks = [Task.from_dataset(xr.open_zarr(res / "tasks" / f"{n}.zarr")) for n in names]
    experts = {n: xr.open_zarr(stores[n]).load() for n in names}
    ndp = TrainedNDP.load(res / "ndp" / "model.pt")
    n_samples = args.n_samples or config["sample"]["n_samples"]
    frames = []
    for i, name in enumerate(args.settings):
        sample_cfg = SampleConfig.from_config({**config["sample"], "expert_fade": 0.0, **SETTINGS[name]})
        rows = pd.DataFrame(run_setting(ndp, tasks, experts, config, sample_cfg, n_samples, with_ndp=i == 0))
        rows["setting"] = np.where(rows.method == "ndp", "NDP alone", name)
        frames.append(rows)
        print(f"{name}: done", flush=True)
    result = table(pd.concat(frames))
    text = result.to_markdown(floatfmt=".3f")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    ok = result.drop(index="NDP alone", errors="ignore")
    ok = ok[ok["Fig. 2"] >= 0.5]
    crps = ok[[c for c in ok.columns if c.endswith("crps") and not c.startswith("real")]].mean(axis=1)
    print(f"best={crps.idxmin() if len(crps) else 'none'}")


if __name__ == "__main__":
    main()
