"""Benchmark: digit trie + KV cache versus scoring every bin's full prompt (the LLMP grid).

Both score the same bins of the same targets: the trie's complete and coarse bins are then
re-scored one prompt each (``score_strings``: the prompt plus the bin's text, no shared cache,
equal-length prompts batched as the reference does). Reports wall time, token positions
evaluated and max |delta log p|, then targets/second of the trie alone for a 20-point context
at 2 decimals. The last line is ``speedup=<float> max_abs_dlogp=<float>``.

float64 is the default so that the agreement is exact to round-off; in float32 the two paths
use different kernels (cached short queries vs. full causal prompts) and differ by ~1e-5.

    python bench/expert_trie.py [--model smollm2-135m] [--targets 1] [--threshold 5e-2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmflow import expert, llm

# The brute-force reference lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from brute_force import score_strings  # noqa: E402


def synthetic_task(n_context: int, n_targets: int, seed: int = 0):
    """A noisy sine on [0, 10]: context (n, 1), y (n,), targets (m, 1) between context points."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 10, n_context))
    y = 2.0 * np.sin(x) + 0.1 * rng.standard_normal(n_context) + 3.0
    return x[:, None], y, np.linspace(0.5, 9.5, n_targets)[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="embedded name or HF folder")
    ap.add_argument("--models-dir", default=os.environ.get("LLMFLOW_MODELS", "results/models"))
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--targets", type=int, default=1)
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=5e-2)
    ap.add_argument("--rate-threshold", type=float, default=1e-3,
                    help="threshold of the targets/second measurement (float32)")
    ap.add_argument("--rate-targets", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--grid-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    models_dir = Path(args.models_dir)
    if args.model in llm.EMBEDDED and not (models_dir / args.model / "config.json").exists():
        models_dir = Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
        print(f"materialising {args.model} into {models_dir} ...", flush=True)
        llm.materialise(args.model, models_dir / args.model)
    model, tok = llm.load_model(args.model, models_dir=models_dir, dtype=args.dtype)
    style = expert.prompt_style("default")
    xc, yc, xt = synthetic_task(args.context, args.targets)

    rows = []
    for j in range(len(xt)):
        prompt = expert.build_prompt(xc, yc, xt[j], "", style)
        t0 = time.perf_counter()
        bins = expert.binned_distribution(model, tok, prompt, style.decimals, lead=style.lead,
                                          threshold=args.threshold, max_int_digits=2,
                                          batch_size=args.batch_size)
        t_trie = time.perf_counter() - t0
        tokens = expert.number_tokens(tok, prompt, style.lead)
        texts = [style.lead + s + (style.terminator if c else "")
                 for s, c in zip(bins.strings, bins.complete)]
        # A prefix left without its integer part is one bin per digit count, sharing its mass.
        pieces = np.array([bins.strings.count(s) for s in bins.strings])
        t0 = time.perf_counter()
        grid, n_grid = score_strings(model, tok, prompt, texts, restrict_to=tokens.vocab,
                                     batch_size=args.grid_batch)
        t_grid = time.perf_counter() - t0
        rows.append((j, len(bins.logp), t_trie, bins.n_positions, t_grid, n_grid,
                     float(np.abs(grid - bins.logp - np.log(pieces)).max()), bins.lost_mass))

    print(f"model={args.model} dtype={args.dtype} context={args.context} "
          f"threshold={args.threshold} threads={torch.get_num_threads()}")
    print(f"{'target':>6} {'bins':>6} {'trie_s':>8} {'trie_pos':>9} {'grid_s':>8} "
          f"{'grid_pos':>9} {'max|dlogp|':>11} {'lost':>8}")
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>6} {r[2]:>8.2f} {r[3]:>9} {r[4]:>8.2f} {r[5]:>9} "
              f"{r[6]:>11.2e} {r[7]:>8.1e}")
    t_trie, t_grid = sum(r[2] for r in rows), sum(r[4] for r in rows)
    pos_trie, pos_grid = sum(r[3] for r in rows), sum(r[5] for r in rows)
    dmax = max(r[6] for r in rows)
    print(f"{'total':>6} {sum(r[1] for r in rows):>6} {t_trie:>8.2f} {pos_trie:>9} "
          f"{t_grid:>8.2f} {pos_grid:>9} {dmax:>11.2e}")

    # Throughput as the pipeline runs it: float32, 20 context points, 2 decimals.
    model32, _ = llm.load_model(args.model, models_dir=models_dir, dtype="float32")
    xc20, yc20, xt20 = synthetic_task(20, args.rate_targets, seed=1)
    t0 = time.perf_counter()
    for x in xt20:
        expert.binned_distribution(model32, tok, expert.build_prompt(xc20, yc20, x, "", style),
                                   style.decimals, lead=style.lead, threshold=args.rate_threshold,
                                   max_int_digits=2, batch_size=args.batch_size)
    rate = len(xt20) / (time.perf_counter() - t0)
    print(f"20-point context, 2 decimals, float32, threshold {args.rate_threshold}: "
          f"{rate:.3f} targets/s")
    print(f"speedup={t_grid / t_trie:.2f} max_abs_dlogp={dmax:.3e}")


if __name__ == "__main__":
    main()
