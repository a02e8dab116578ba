"""Benchmark: which prompt and product-of-experts settings make text conditioning work.

Every variant is a model plus overrides of the config's ``expert`` section (how the prompt is
written) and ``sample`` section (λ, expert temperature, lost mass). On each text task
(``llmflow.tasks.TEXT_TASKS``) it reports, per variant:

- ``follow``: the I-LLMP mass inside the text's interval, averaged over the constrained
  targets (how much the LLM's density says what the text says);
- ``constraint`` rates: the fraction of joint samples meeting the text at every target, for
  NDP alone (the baseline: it cannot read), I-LLMP (independent marginals, exact product of
  the per-target masses) and LLM-NDP (the trained NDP × the expert, guided ODE);
- ``crps_adj``: CRPS at the targets nearest to the context points (where the context decides
  the answer; tasks with known truth), NDP vs LLM-NDP: the text must not cost the context fit;
- ``s/target``: seconds of expert computation per target (the expert stage's cost).

The same seeds are used for NDP and LLM-NDP, so their difference is the expert's alone.
Variants override the schema's defaults; the variant ``config.yaml`` is the config's own
``llm``, ``expert`` and ``sample`` sections. Expert results are cached under ``--cache`` keyed by
(task, model, settings). The default run compares the naive prompt with the config's setting on
the built-in text tasks (a few minutes on 2 cores); ``--variants all`` runs every row of docs/text-conditioning.md. The last line is machine-readable:
``best=<variant> fig2=<LLM-NDP rate on text-zero_after_30> ndp=<NDP rate> llmp=<I-LLMP rate>``.

    python bench/text_conditioning.py [--variants all] [--n-samples 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from llmflow import expert, llm
from llmflow.config import validate_config
from llmflow.frame import TaskFrame
from llmflow.io import write_zarr
from llmflow.metrics import ensemble_crps
from llmflow.ndp import TrainedNDP
from llmflow.binned import BinnedDensity
from llmflow.poe import ExpertTerm
from llmflow.predict import SampleConfig, sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import TEXT_TASKS, Task, task_seed

FIG2 = "text-zero_after_30"
PAPER = "The following is a set of (x, y) pairs."


@dataclass(frozen=True)
class Variant:
    model: str
    expert: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)


G, S = "gemma3-270m", "smollm2-135m"
NAIVE = {"layout": "plain", "text_numbers": False, "rule_before_query": False, "preamble": ""}
BEST = {"layout": "xy", "text_numbers": True, "rule_before_query": True, "x_decimals": 1,
        "preamble": PAPER}
# The product settings adopted in config.yaml; prompt variants are compared under them.
POE = {"expert_weight": 2.0, "expert_temperature": 0.25}
VARIANTS: dict[str, Variant] = {
    # prompt styles, each row adding one option (λ = 2, T = 0.25)
    "gemma naive": Variant(G, NAIVE, POE),
    "gemma no text": Variant(G, {**NAIVE, "use_text": False}, POE),
    "gemma text numbers": Variant(G, {**NAIVE, "text_numbers": True}, POE),
    "gemma rule before query": Variant(G, {**NAIVE, "text_numbers": True, "rule_before_query": True}, POE),
    "gemma x=,y= layout": Variant(G, {**NAIVE, "layout": "xy", "text_numbers": True}, POE),
    "gemma best prompt, no preamble": Variant(G, {**BEST, "preamble": ""}, POE),
    "gemma best prompt": Variant(G, BEST, POE),
    "gemma best prompt, no text": Variant(G, {**BEST, "use_text": False}, POE),
    "gemma best prompt, 1 decimal": Variant(G, {**BEST, "decimals": 1}, POE),
    "gemma best prompt, x 0 decimals": Variant(G, {**BEST, "x_decimals": 0}, POE),
    "gemma best prompt, x 2 decimals": Variant(G, {**BEST, "x_decimals": 2}, POE),
    # product-of-experts settings on the best prompt
    "gemma best, λ=1": Variant(G, BEST, {"expert_weight": 1.0}),
    "gemma best, λ=2": Variant(G, BEST, {"expert_weight": 2.0}),
    "gemma best, λ=4": Variant(G, BEST, {"expert_weight": 4.0}),
    "gemma best, λ=1, T=0.5": Variant(G, BEST, {"expert_temperature": 0.5}),
    "gemma best, λ=2, T=0.5": Variant(G, BEST, {"expert_weight": 2.0, "expert_temperature": 0.5}),
    "gemma best, λ=1, T=0.25": Variant(G, BEST, {"expert_temperature": 0.25}),
    "gemma best, λ=4, T=0.25": Variant(G, BEST, {"expert_weight": 4.0, "expert_temperature": 0.25}),
    "gemma best, lost flat": Variant(G, BEST, {**POE, "lost_mass": "flat"}),
    # the expert's weight fading near the context points (sample.expert_fade, NDP x units)
    "gemma best, fade 0.25": Variant(G, BEST, {**POE, "expert_fade": 0.25}),
    "gemma best, fade 0.5": Variant(G, BEST, {**POE, "expert_fade": 0.5}),
    "gemma best, fade 1": Variant(G, BEST, {**POE, "expert_fade": 1.0}),
    # the smaller model
    "smollm2 naive": Variant(S, NAIVE, POE),
    "smollm2 best prompt": Variant(S, BEST, POE),
    "smollm2 best prompt, chat": Variant(S, {**BEST, "chat": True}, POE),
}
DEFAULT_RUN = ("gemma naive", "config.yaml")


def adjacent_targets(task: Task) -> np.ndarray:
    """Indices of the targets nearest to each context point that have a known truth."""
    dist = np.linalg.norm(task.x_target[:, None, :] - task.x_context[None, :, :], axis=-1)
    near = np.unique(dist.argmin(axis=0))
    return near[np.isfinite(task.y_target[near])]


def crps(samples: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(ensemble_crps(samples, y))) if len(y) else float("nan")


def compute_expert(task: Task, variant: Variant, base: dict, models: dict, cache: Path,
                   models_dir: str) -> tuple[xr.Dataset, float]:
    """The variant's expert store of ``task`` (cached) and its compute seconds per target."""
    section = {**base, **variant.expert}
    ds_task = task.to_dataset()
    key = expert.fingerprint(ds_task, {"model": variant.model, "expert": section})
    path = cache / f"{task.name}-{variant.model}-{key}.zarr"
    if path.exists():
        ds = xr.open_zarr(path).load()
        return ds, float(ds.attrs["seconds_per_target"])
    if variant.model not in models:
        models[variant.model] = llm.load_model(variant.model, models_dir=models_dir)
    model, tok = models[variant.model]
    t0 = time.perf_counter()
    ds = expert.task_expert(model, tok, ds_task, expert.ExpertConfig.from_config(section),
                            variant.model, progress=False)
    ds.attrs["seconds_per_target"] = (time.perf_counter() - t0) / len(task.x_target)
    write_zarr(ds, path)
    return ds, float(ds.attrs["seconds_per_target"])


def evaluate(name: str, variant: Variant, config: dict, ndp: TrainedNDP, tasks: list[Task],
             models: dict, cache: Path, models_dir: str, n_samples: int) -> list[dict]:
    sample_cfg = SampleConfig.from_config({**config["sample"], **variant.sample})
    sampler = SamplerConfig.from_config(config["sampler"])
    rows = []
    for task in tasks:
        ds, sec = compute_expert(task, variant, config["expert"], models, cache, models_dir)
        frame = TaskFrame.fit(task, tuple(config["prior"]["x_range"]), sample_cfg.y_scale_min)
        seed = task_seed(config["seed"], task.name)
        ys = {
            "ndp": sample_task(ndp, task, frame, n_samples, sampler, seed),
            "llm-ndp": sample_task(ndp, task, frame, n_samples, sampler, seed, ExpertTerm.from_store(ds, task, sample_cfg)),
        }
        inside = BinnedDensity.from_store(ds).mass_inside(task.constraint_lo, task.constraint_hi)[0]
        constrained = np.isfinite(task.constraint_lo) | np.isfinite(task.constraint_hi)
        adj = adjacent_targets(task)
        rows.append({
            "variant": name, "task": task.name, "follow": float(inside[constrained].mean()),
            "ndp": float(task.satisfies(ys["ndp"]).mean()),
            "i-llmp": float(np.prod(inside[constrained])),
            "llm-ndp": float(task.satisfies(ys["llm-ndp"]).mean()),
            "crps_adj_ndp": crps(ys["ndp"][:, adj], task.y_target[adj]),
            "crps_adj_llm_ndp": crps(ys["llm-ndp"][:, adj], task.y_target[adj]),
            "lost_invalid": float(ds["lost_invalid"].mean()),
            "s_per_target": sec,
        })
    return rows


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        fig2 = next(r for r in mine if r["task"] == FIG2)
        mean = {k: float(np.nanmean([r[k] for r in mine])) for k in
                ("follow", "ndp", "i-llmp", "llm-ndp", "crps_adj_ndp", "crps_adj_llm_ndp",
                 "lost_invalid", "s_per_target")}
        out[name] = {"fig2_ndp": fig2["ndp"], "fig2_i-llmp": fig2["i-llmp"],
                     "fig2_llm-ndp": fig2["llm-ndp"], **{f"mean_{k}": v for k, v in mean.items()}}
    return out


def markdown(summary: dict[str, dict[str, float]]) -> str:
    """The table of docs/text-conditioning.md (variant definitions: ``VARIANTS``)."""
    head = ("| variant | follow | Fig. 2: NDP / I-LLMP / LLM-NDP | all tasks: NDP / I-LLMP / LLM-NDP | "
            "CRPS adj. NDP / LLM-NDP | invalid | s/target |")
    lines = [head, "|" + "---|" * 7]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['mean_follow']:.2f} | {s['fig2_ndp']:.2f} / {s['fig2_i-llmp']:.2f} / "
            f"{s['fig2_llm-ndp']:.2f} | {s['mean_ndp']:.2f} / {s['mean_i-llmp']:.2f} / {s['mean_llm-ndp']:.2f} | "
            f"{s['mean_crps_adj_ndp']:.3f} / {s['mean_crps_adj_llm_ndp']:.3f} | {s['mean_lost_invalid']:.2f} | "
            f"{s['mean_s_per_target']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", default="results/ndp/model.pt", help="trained NDP")
    ap.add_argument("--models-dir", default="results/models")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_RUN), help="names, or 'all'")
    ap.add_argument("--tasks", nargs="+", default=sorted(TEXT_TASKS))
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=None, help="override expert.threshold")
    ap.add_argument("--cache", default="results/bench/text_conditioning/cache")
    ap.add_argument("--out", default="results/bench/text_conditioning.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    # Variants override the schema's defaults (not config.yaml's prompt), so that each row of the
    # table means the same whatever the config; "config.yaml" is the config's own setting.
    defaults = validate_config({"seed": config["seed"], "prior": config["prior"]})
    VARIANTS["config.yaml"] = Variant(config["llm"]["model"], config["expert"], config["sample"])
    config["expert"] = {**defaults["expert"], "threshold": config["expert"]["threshold"]}
    config["sample"] = defaults["sample"]
    if args.threshold is not None:
        config["expert"]["threshold"] = args.threshold
        VARIANTS["config.yaml"].expert["threshold"] = args.threshold
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    tasks = []
    for ident in args.tasks:
        task = copy.copy(TEXT_TASKS[ident]())
        task.name = f"text-{ident}"
        tasks.append(task)
    ndp = TrainedNDP.load(args.model)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models: dict = {}
    rows = []
    for name in names:
        t0 = time.perf_counter()
        rows += evaluate(name, VARIANTS[name], config, ndp, tasks, models, cache, args.models_dir,
                         args.n_samples)
        for r in rows[-len(tasks):]:
            print(f"{name:<34} {r['task']:<22} follow {r['follow']:.2f}  NDP {r['ndp']:.2f}  "
                  f"I-LLMP {r['i-llmp']:.2f}  LLM-NDP {r['llm-ndp']:.2f}  CRPS adj {r['crps_adj_ndp']:.3f}"
                  f" / {r['crps_adj_llm_ndp']:.3f}  {r['s_per_target']:.2f} s/target", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarise(rows)
    table = markdown(summary)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print(table)
    best = max(summary, key=lambda n: (summary[n]["fig2_llm-ndp"], summary[n]["mean_llm-ndp"]))
    s = summary[best]
    print(f"best={best.replace(' ', '_')} fig2={s['fig2_llm-ndp']:.4f} ndp={s['fig2_ndp']:.4f} "
          f"llmp={s['fig2_i-llmp']:.4f} mean_llm_ndp={s['mean_llm-ndp']:.4f}")


if __name__ == "__main__":
    main()
