"""Benchmark: does the I-LLMP density follow the text? Mass where the statement says, with/without.

Each case is a statement the context points do not show (a region, a sign, a bound, a value at
a far x, a slope), a few context points, one query x, and the interval [lo, hi] the statement
puts y in. For each embedded model the I-LLMP bins are computed with the text prefix and
without it; the score is the probability mass in [lo, hi] (bins split uniformly). Prints a
table and ends with ``best=<model> gain=<float>`` (the model with the largest mean gain).
The prompt is the default style with 1 decimal and integer x unless ``--expert`` overrides
keys of the config's ``expert`` section (e.g. ``--expert layout=xy text_numbers=true``).

    python bench/text_following.py [--models smollm2-135m gemma3-270m] [--threshold 1e-2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from llmflow import expert, llm

INF = float("inf")
# (statement, context x, context y, query x, lo, hi)
CASES = [
    ("If x is greater than 30, y is 0.", [5, 10, 15, 20, 25], [12.1, 17.3, 21.8, 27.2, 31.9], 40, -0.5, 0.5),
    ("For x above 10, y is negative.", [1, 3, 5, 7, 9], [4.2, 3.1, 2.5, 1.4, 0.6], 12, -INF, 0.0),
    ("y never exceeds 5.", [1, 2, 3, 4, 5], [1.0, 2.1, 3.0, 3.9, 4.6], 9, -INF, 5.0),
    ("At x = 100, y equals 50.", [1, 2, 3, 4, 5], [1.2, 2.3, 2.9, 4.1, 5.2], 100, 49.5, 50.5),
    ("y decreases with slope -2 starting from 10 at x = 0.", [0], [10.0], 3, 3.5, 4.5),
    ("The value at x = 20 is about 100.", [1, 2, 3, 4, 5], [1.1, 1.9, 3.2, 4.0, 5.1], 20, 90.0, 110.0),
    ("y is always between 40 and 45.", [1, 2], [42.5, 43.1], 10, 40.0, 45.0),
    ("y is always positive.", [1, 2, 3, 4], [3.0, 2.0, 1.0, 0.5], 6, 0.0, INF),
    ("After x = 8, y jumps to 70.", [2, 4, 6, 8], [10.2, 10.5, 10.1, 10.4], 9, 65.0, 75.0),
    ("y is exactly twice x.", [1, 2, 3], [2.0, 4.0, 6.0], 11, 21.5, 22.5),
    ("Every value of y is below -20.", [1, 2, 3], [-21.3, -24.8, -22.0], 7, -INF, -20.0),
    ("The slope is 10 per unit of x.", [0, 1], [5.0, 15.0], 4, 44.0, 46.0),
]


def mass_in(bins: expert.TrieResult, lo: float, hi: float) -> float:
    """Probability of [lo, hi] under the binned distribution (uniform within each bin)."""
    overlap = np.clip(np.minimum(bins.upper, hi) - np.maximum(bins.lower, lo), 0, None)
    return float((np.exp(bins.logp) * overlap / (bins.upper - bins.lower)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--models-dir", default=os.environ.get("LLMFLOW_MODELS", "results/models"))
    ap.add_argument("--threshold", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expert", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the expert section (values parsed as YAML)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.expert)}
    cfg = expert.ExpertConfig.from_config({"decimals": 1, "x_decimals": 0, **overrides})
    style = cfg.prompt_style()

    gains: dict[str, float] = {}
    print(f"{'model':<14} {'case':<52} {'no text':>8} {'text':>8} {'gain':>7}")
    for name in args.models:
        models_dir = Path(args.models_dir)
        if name in llm.EMBEDDED and not (models_dir / name / "config.json").exists():
            models_dir = Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
            llm.materialise(name, models_dir / name)
        model, tok = llm.load_model(name, models_dir=models_dir)
        chat = expert.chat_wrapper(tok) if style.chat else None
        t0, diffs = time.perf_counter(), []
        for text, xc, yc, xq, lo, hi in CASES:
            xc, yc = np.asarray(xc, float)[:, None], np.asarray(yc, float)
            int_digits = expert.default_int_digits(yc) + 1
            masses = []
            for with_text in (False, True):
                words = expert.prepare_text(text, style) if with_text else ""
                prompt = expert.build_prompt(xc, yc, np.array([xq], float), words, style, chat)
                bins = expert.binned_distribution(model, tok, prompt, style.decimals,
                                                  lead=style.lead, threshold=args.threshold,
                                                  restricted=style.restricted,
                                                  rounding=style.rounding, max_int_digits=int_digits)
                masses.append(mass_in(bins, lo, hi))
            diffs.append(masses[1] - masses[0])
            print(f"{name:<14} {text[:52]:<52} {masses[0]:>8.3f} {masses[1]:>8.3f} "
                  f"{diffs[-1]:>+7.3f}", flush=True)
        gains[name] = float(np.mean(diffs))
        print(f"{name:<14} mean gain {gains[name]:+.3f} ({time.perf_counter() - t0:.0f} s)")
    best = max(gains, key=gains.get)
    print(f"best={best} gain={gains[best]:.4f}")


if __name__ == "__main__":
    main()
