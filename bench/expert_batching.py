"""Expert stage cost with a task's prompts searched side by side vs one at a time.

For each of the default config's tasks (or the first ``--tasks``) it runs the whole expert stage
of the task (``task_expert``: every target and leave-one-out point) twice per repeat, pairwise
in alternating order: with ``expert.prompts_per_forward: 1`` (each prompt's trie alone, as
before batching) and with the configured value. It prints per task the median seconds of each
and their ratio, and what batching changed in the result: the largest |Δ| of a bin's
log-probability (finite bins), of a target's NLL and of the mass kept (float round-off only,
if batching is exact). It ends with ``ratio_median=... (alone/batched) ...``.

    python bench/expert_batching.py --model gemma3-270m --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from llmflow import expert, llm
from llmflow.config import validate_config
from llmflow.tasks import build_task, task_names

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--models-dir", default=os.environ.get("LLMFLOW_MODELS", "results/models"))
    ap.add_argument("--config", default=str(REPO / "config.yaml"), help="its expert section and tasks")
    ap.add_argument("--tasks", nargs="*", default=None, help="task names (default: every non-user task)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    batched = expert.ExpertConfig.from_config(config["expert"])
    alone = dataclasses.replace(batched, prompts_per_forward=1)
    models_dir = Path(args.models_dir)
    if args.model in llm.EMBEDDED and not (models_dir / args.model / "config.json").exists():
        models_dir = Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
        llm.materialise(args.model, models_dir / args.model)
    model, tok = llm.load_model(args.model, models_dir=models_dir)
    names = args.tasks or [n for n in task_names(config) if not n.startswith("user-")]
    print(f"model={args.model} threads={torch.get_num_threads()} prompts_per_forward={batched.prompts_per_forward} "
          f"loo_points={batched.loo_points} repeats={args.repeats}")
    print(f"{'task':<26} {'prompts':>7} {'alone_s':>8} {'batched_s':>9} {'ratio':>6} {'dlogp_max':>10} "
          f"{'dnll_max':>9} {'dkept_max':>9}")
    ratios, t_alone, t_batched, worst = [], 0.0, 0.0, 0.0
    for name in names:
        task = build_task(name, config, REPO).to_dataset()
        secs: dict[str, list[float]] = {"alone": [], "batched": []}
        out = {}
        for rep in range(args.repeats):
            order = [("alone", alone), ("batched", batched)]
            for label, cfg in order if rep % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                out[label] = expert.task_expert(model, tok, task, cfg, args.model, progress=False)
                secs[label].append(time.perf_counter() - t0)
        a, b = out["alone"], out["batched"]
        finite = np.isfinite(a["logp"].values) & np.isfinite(b["logp"].values)
        dlogp = float(np.abs(a["logp"].values - b["logp"].values)[finite].max())
        dnll = float(np.nanmax(np.abs(a["nll_target"].values - b["nll_target"].values)))
        dkept = float(np.abs(a["lost_mass"].values - b["lost_mass"].values).max())
        same_bins = a["logp"].shape == b["logp"].shape and bool((finite == np.isfinite(a["logp"].values)).all())
        ma, mb = statistics.median(secs["alone"]), statistics.median(secs["batched"])
        ratios.append(ma / mb)
        t_alone, t_batched, worst = t_alone + ma, t_batched + mb, max(worst, dlogp)
        prompts = task.sizes["target"] + len(expert.loo_indices(task["x_context"].values, batched.loo_points))
        print(f"{name:<26} {prompts:>7} {ma:>8.2f} {mb:>9.2f} {ma / mb:>6.2f} {dlogp:>10.2e} {dnll:>9.2e} "
              f"{dkept:>9.2e}{'' if same_bins else '  (bins differ)'}", flush=True)
    print(f"ratio_median={statistics.median(ratios):.2f} (alone/batched) total_alone_s={t_alone:.1f} "
          f"total_batched_s={t_batched:.1f} ratio_total={t_alone / t_batched:.2f} dlogp_max={worst:.2e}")


if __name__ == "__main__":
    main()
