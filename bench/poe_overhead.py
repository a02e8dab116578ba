"""Cost of the LLM expert in the product-of-experts sampler, measured side by side.

    .venv/bin/python bench/poe_overhead.py [--model results/ndp/model.pt] [--expert STORE.zarr]

Same tasks, samples, solver and steps: NDP-only conditional sampling versus LLM-NDP sampling
with the convolved expert score from cached bins. The two are timed alternately (``--repeats``
rounds, median of each) so machine noise hits both alike. Without ``--model`` a freshly
initialised NDP of the configured size is timed (the cost does not depend on the weights);
without ``--expert`` every target gets ``--bins`` bins of width 0.01 (a typical I-LLMP store at
threshold 1e-3 has a few hundred). Ends with one line ``overhead=<float>`` (LLM-NDP time / NDP
time; the goal is ≤ 1.10). The expert is tempered and its lost mass handled as the config's
``sample`` section says, as in the sample stage.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import xarray as xr
import yaml

from llmflow.config import validate_config
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation
from llmflow.binned import BinnedDensity
from llmflow.poe import ExpertTerm
from llmflow.sampler import sample


def synthetic_bins(n_tasks: int, m: int, n_bins: int, rng: np.random.Generator) -> BinnedDensity:
    """Bins of width 0.01 around a random centre per target, with random log-probabilities."""
    centre = rng.normal(size=(n_tasks, m, 1))
    lower = centre + 0.01 * (np.arange(n_bins) - n_bins // 2)
    logits = rng.normal(size=(n_tasks, m, n_bins))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return BinnedDensity.from_arrays(lower, lower + 0.01, logp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--model", default=None, help="trained model.pt (default: fresh NDP of the config's size)")
    parser.add_argument("--expert", default=None, help="an expert-stage store (results/expert/<model>/shard-<k>/<task>.zarr)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--bins", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = yaml.safe_load(open(args.config))
    validate_config(config)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if args.model:
        model = TrainedNDP.load(args.model)
    else:
        net = NDP(NDPConfig.from_config(config["ndp"], x_dim=config["prior"]["x_dim"])).eval()
        model = TrainedNDP(net, YNormalisation())
    if args.expert:
        store = xr.open_zarr(args.expert).load()
        expert = BinnedDensity.stack([BinnedDensity.from_store(store, lost=config["sample"]["lost_mass"])] * args.tasks)
        args.targets = store.sizes["target"]
    else:
        expert = synthetic_bins(args.tasks, args.targets, args.bins, rng)
    # as the sample stage runs it (poe.ExpertTerm.from_store, then float32)
    term = ExpertTerm(expert.temper(config["sample"]["expert_temperature"]).to(torch.float32))

    x_ctx = rng.uniform(-2, 2, (args.tasks, args.context, 1))
    y_ctx = np.sin(3 * x_ctx[..., 0])
    x_tgt = rng.uniform(-2, 2, (args.tasks, args.targets, 1))
    s = config["sampler"]
    common = dict(solver=s["solver"], steps=s["steps"], t0=s["t0"], noise_std=s["noise_std"], jacobian=s["jacobian"])

    def run(with_expert: bool) -> float:
        start = time.perf_counter()
        sample(model, x_ctx, y_ctx, x_tgt, args.samples, expert=term if with_expert else None,
               generator=torch.Generator().manual_seed(0), **common)
        return time.perf_counter() - start

    run(False), run(True)  # warm-up: allocator, thread pools
    times: dict[str, list[float]] = {"ndp": [], "llm-ndp": []}
    for _ in range(args.repeats):
        times["ndp"].append(run(False))
        times["llm-ndp"].append(run(True))
    ndp, llm_ndp = statistics.median(times["ndp"]), statistics.median(times["llm-ndp"])
    n_bins = expert.lower.shape[-1]
    print(f"tasks={args.tasks} context={args.context} targets={args.targets} samples={args.samples} "
          f"bins={n_bins} solver={s['solver']} steps={s['steps']} jacobian={s['jacobian']}")
    print(f"{'method':<10}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, ts in times.items():
        print(f"{name:<10}{statistics.median(ts):>10.3f}{min(ts):>10.3f}{max(ts):>10.3f}")
    print(f"overhead={llm_ndp / ndp:.3f}")


if __name__ == "__main__":
    main()
