"""NDP networks of different architectures on the GP-oracle tasks, paired against the first.

    .venv/bin/python bench/ndp_architecture.py --model default=results/ndp/model.pt \
        --model rope=variants/rope/model.pt --prior results/prior/test/shard-*.zarr [--step-cost]

Every network is scored by :func:`llmflow.oracle.run_kernel` on the benchmark's tasks for the
config's ``bench.gp_oracle`` (same seeds, so the tasks are the same for every network). Per kernel
and network: the ``ndp_exact`` gap to ``gp_optimum`` (what a network has to win, docs/gp-oracle.md)
and the ``ndp`` row's Gaussian-fit gap, KDE marginal NLL and CRPS, per target; for every network
after the first the paired mean ± standard error over tasks of its change against the first
(negative = better). ``--step-cost`` also times one training step (forward and backward of a
batch of the config's size, tasks of the prior's largest size) of each architecture, in turn in
one process, and prints the median milliseconds and the ratio to the first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from llmflow.config import validate_config
from llmflow.ndp import NDP, TrainedNDP
from llmflow.oracle import OracleConfig, oracle_kernels, run_kernel
from llmflow.sampler import SamplerConfig


def mean_se(d: np.ndarray) -> str:
    return f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}"


def step_cost(models: dict[str, TrainedNDP], batch: int, n_points: int, rounds: int = 30) -> None:
    """Median ms of a forward-backward pass per architecture, interleaved so drift hits all alike."""
    torch.manual_seed(0)
    x_dim = next(iter(models.values())).net.config.x_dim
    x = torch.rand(batch, n_points, x_dim) * 4 - 2
    y, t = torch.randn(batch, n_points), torch.rand(batch)
    context = torch.rand(batch, n_points) < 0.3
    nets = {label: NDP(m.net.config).train() for label, m in models.items()}
    times: dict[str, list[float]] = {label: [] for label in nets}
    for i in range(rounds + 3):
        for label, net in nets.items():
            start = time.perf_counter()
            net(x, y, t, None, context).square().mean().backward()
            if i >= 3:  # warm-up
                times[label].append(time.perf_counter() - start)
    base = np.median(times[next(iter(nets))])
    for label, ts in times.items():
        print(f"step cost {label}: {1000 * np.median(ts):.1f} ms (ratio {np.median(ts) / base:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--model", action="append", required=True, help="LABEL=path/to/model.pt (repeatable; the first is the baseline)")
    parser.add_argument("--prior", nargs="+", required=True, help="held-out prior shards (mixture tasks and the Bayes row)")
    parser.add_argument("--kernels", nargs="+", default=None, help="kernels (default: all)")
    parser.add_argument("--step-cost", action="store_true", help="also time a training step of each architecture")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch intra-op)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = validate_config(yaml.safe_load(Path(args.config).read_text()) or {})
    cfg = OracleConfig.from_config(config["bench"]["gp_oracle"])
    sampler = SamplerConfig.from_config(config["sampler"])
    models = {label: TrainedNDP.load(path) for label, path in (m.split("=", 1) for m in args.model)}
    if args.step_cost:
        step_cost(models, config["train"]["batch_size"], config["prior"]["n_points"][1])
    for name in args.kernels or oracle_kernels(cfg):
        runs = {label: run_kernel(m, cfg, sampler, name, args.prior, int(config["seed"]), progress=False) for label, m in models.items()}
        base = next(iter(runs.values())).scores
        optimum = base["gp_optimum"].loglik
        for label, run in runs.items():
            exact, ndp = run.scores["ndp_exact"], run.scores["ndp"]
            line = (f"{name} ({len(run.tasks)} tasks) {label}: ndp_exact gap {np.mean(optimum - exact.loglik):.3f}, "
                    f"ndp gap {np.mean(optimum - ndp.loglik):.3f}, KDE NLL {ndp.nll.mean():.3f}, CRPS {ndp.crps.mean():.4f}")
            if run.scores is not base:
                line += (f" | change: exact gap {mean_se(base['ndp_exact'].loglik - exact.loglik)}, "
                         f"KDE NLL {mean_se(ndp.nll - base['ndp'].nll)}, CRPS {mean_se(ndp.crps - base['ndp'].crps)}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
