"""Expert fidelity: how much of the LLM's number mass the I-LLMP bins keep, and at what cost.

For each case (the default config's tasks, plus noisy series of 1-, 3- and 6-digit magnitude,
an offset series near 101,325 and a series near 1e-6, each with a 24-point context) it builds
the targets' prompts exactly as the expert stage does (``task_prompts``: scaling, text, order)
and runs the trie on the first ``--targets`` targets of each task. Per target it measures

- ``kept``: mass in bins that hold a whole integer part (not a union of magnitudes) over the
  LLM's number mass, ``exp(logp).sum() / (1 − lost_invalid)`` restricted to those bins;
- ``coarse``: mass in bins wider than the data's resolution (10^-decimals in LLM units);
- seconds of the whole target (prompt forward, trie, the truth's string) and that time divided
  by one forward of the same prompt (``forward_equiv``, the machine-independent figure).

It prints one row per case (worst and mean kept, mean coarse, median seconds and ratio) and
ends with ``mass_kept_min=... invalid_max=... s_per_target=... forward_equiv=...``.

    python bench/expert_fidelity.py --model gemma3-270m --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from llmflow import expert, llm
from llmflow.config import validate_config
from llmflow.tasks import build_task, task_names

REPO = Path(__file__).resolve().parents[1]


def series_task(name: str, level: float, spread: float, n_context: int = 24, n_target: int = 8,
                seed: int = 0) -> xr.Dataset:
    """A noisy seasonal series ``level + spread·(sine + trend + noise)`` on x = 0, 1, ...; the
    first ``n_context`` points are the context, the next ``n_target`` the targets."""
    rng = np.random.default_rng(seed)
    x = np.arange(n_context + n_target, dtype=float)
    y = level + spread * (np.sin(2 * np.pi * x / 12) + 0.02 * x + 0.2 * rng.standard_normal(len(x)))
    return xr.Dataset(
        {"x_context": (("context", "x_dim"), x[:n_context, None]), "y_context": (("context",), y[:n_context]),
         "x_target": (("target", "x_dim"), x[n_context:, None]), "y_target": (("target",), y[n_context:])},
        attrs={"name": name, "family": "series", "text": "A monthly series."})


SERIES = [("digits-1", 4.0, 2.0), ("digits-3", 480.0, 250.0), ("digits-6", 350_000.0, 120_000.0),
          ("offset-101325", 101_325.0, 100.0), ("tiny-1e-6", 3e-6, 1e-6)]


def cases(config_path: Path) -> list[xr.Dataset]:
    config = validate_config(yaml.safe_load(config_path.read_text()))
    tasks = [build_task(name, config, REPO).to_dataset() for name in task_names(config)
             if not name.startswith("user-")]
    return tasks + [series_task(*s) for s in SERIES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--models-dir", default=os.environ.get("LLMFLOW_MODELS", "results/models"))
    ap.add_argument("--config", default=str(REPO / "config.yaml"), help="its expert section and tasks")
    ap.add_argument("--targets", type=int, default=2, help="targets per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--expert", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the expert section (values parsed as YAML)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    section = dict(validate_config(yaml.safe_load(Path(args.config).read_text()))["expert"])
    section.update({k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.expert)})
    cfg = expert.ExpertConfig.from_config(section)

    models_dir = Path(args.models_dir)
    if args.model in llm.EMBEDDED and not (models_dir / args.model / "config.json").exists():
        models_dir = Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
        llm.materialise(args.model, models_dir / args.model)
    model, tok = llm.load_model(args.model, models_dir=models_dir)
    print(f"model={args.model} threads={torch.get_num_threads()} max_nodes={cfg.max_nodes} "
          f"threshold={cfg.threshold} rescale={cfg.rescale} targets/task={args.targets}")
    print(f"{'case':<24} {'scale':>9} {'shift':>9} {'kept_min':>9} {'kept_mean':>9} {'coarse':>7} "
          f"{'invalid':>8} {'nodes':>6} {'s/target':>9} {'fwd_s':>6} {'ratio':>6}")
    kept_all, invalid_all, seconds_all, ratio_all = [], [], [], []
    for task in cases(Path(args.config)):
        tp = expert.task_prompts(tok, task, cfg)
        kept, coarse, invalid, nodes, secs, ratios = [], [], [], [], [], []
        for j in range(min(args.targets, len(tp.prompts))):
            t0 = time.perf_counter()
            bins = expert.target_bins(model, tok, [(tp, j)], cfg)[0]
            secs.append(time.perf_counter() - t0)
            ids = torch.tensor([tok(tp.prompts[j])["input_ids"]])
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            ratios.append(secs[-1] / (time.perf_counter() - t0))
            mass = np.exp(bins.logp)
            kept.append((mass.sum() - bins.mass_union) / (1.0 - bins.lost_invalid))
            coarse.append(float(mass[bins.widths > 10.0 ** -tp.style.decimals * (1 + 1e-9)].sum()))
            invalid.append(bins.lost_invalid)
            nodes.append(bins.n_expanded)
        kept_all += kept
        invalid_all += invalid
        seconds_all += secs
        ratio_all += ratios
        print(f"{task.attrs['name']:<24} {tp.scale:>9.3g} {tp.shift:>9.6g} {min(kept):>9.4f} "
              f"{np.mean(kept):>9.4f} {np.mean(coarse):>7.3f} {max(invalid):>8.3f} "
              f"{int(np.mean(nodes)):>6} {statistics.median(secs):>9.2f} "
              f"{statistics.median(secs) / statistics.median(ratios):>6.2f} {statistics.median(ratios):>6.2f}",
              flush=True)
    print(f"mass_kept_min={min(kept_all):.4f} invalid_max={max(invalid_all):.4f} "
          f"s_per_target={statistics.median(seconds_all):.2f} forward_equiv={statistics.median(ratio_all):.2f}")


if __name__ == "__main__":
    main()
