"""Conditioning candidates of the NDP, side by side on the same GP-oracle tasks.

    .venv/bin/python bench/ndp_conditioning.py --model joint=old/model.pt --model tokens=results/ndp/model.pt \
        --n-tasks 8 --out results/bench/ndp_conditioning.csv

For every model and kernel (``se, matern52, weakly_periodic``, the GP-oracle protocol) the
same tasks are scored by: ``gp_optimum`` (the exact posterior), ``gp_samples_gaussfit`` (exact
posterior samples through the sample estimators: a perfect sampler's score), ``exact:<c>`` (the
model's exact conditional by the ODE, direct for ``tokens`` and a ratio of joints for
``guidance``) and each sampler candidate (conditioning, Jacobian, solver, steps; the ODE or the SDE). Columns as
``results/bench/gp_oracle.csv`` plus ``seconds_per_task`` (sampling 128 draws, one thread).
The acceptance figures of the NDP-conditioning work: a candidate's ``gap`` minus
``gp_samples_gaussfit``'s, and its ``nll`` minus its ``exact`` row's.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmflow.likelihood import LikelihoodConfig
from llmflow.ndp import TrainedNDP
from llmflow.oracle import (BENCH_KERNELS, GPTasks, gp_optimum_scores, gp_posterior_samples, make_gp_tasks, ndp_exact_scores,
                            sample_scores, summarise)
from llmflow.sampler import SamplerConfig, SMCConfig, sample
from llmflow.smc import sample_smc

CANDIDATES: dict[str, SamplerConfig] = {
    "guidance-free-euler25": SamplerConfig(conditioning="guidance", jacobian="free", solver="euler", steps=25),
    "guidance-exact-euler25": SamplerConfig(conditioning="guidance", jacobian="exact", solver="euler", steps=25),
    "guidance-free-euler100": SamplerConfig(conditioning="guidance", jacobian="free", solver="euler", steps=100),
    "guidance-exact-heun25": SamplerConfig(conditioning="guidance", jacobian="exact", solver="heun", steps=25),
    "tokens-euler10": SamplerConfig(conditioning="tokens", solver="euler", steps=10),
    "tokens-euler25": SamplerConfig(conditioning="tokens", solver="euler", steps=25),
    "tokens-heun13": SamplerConfig(conditioning="tokens", solver="heun", steps=13),
    "guidance-free-euler25-sine": SamplerConfig(conditioning="guidance", jacobian="free", solver="euler", steps=25, spacing="sine"),
    "tokens-euler10-sine": SamplerConfig(conditioning="tokens", solver="euler", steps=10, spacing="sine"),
    "tokens-euler25-sine": SamplerConfig(conditioning="tokens", solver="euler", steps=25, spacing="sine"),
    "tokens-heun13-sine": SamplerConfig(conditioning="tokens", solver="heun", steps=13, spacing="sine"),
    "tokens-euler100": SamplerConfig(conditioning="tokens", solver="euler", steps=100),
    "tokens-heun25-sine": SamplerConfig(conditioning="tokens", solver="heun", steps=25, spacing="sine"),
    "tokens-euler50-sine": SamplerConfig(conditioning="tokens", solver="euler", steps=50, spacing="sine"),
    # Euler–Maruyama of the SDE with the flow's marginals (sample_smc without an expert: equal
    # weights), churn η: noise injected along the way instead of the ODE's deterministic path.
    "tokens-sde25": SamplerConfig(conditioning="tokens", steps=25, method="smc"),
    "tokens-sde50": SamplerConfig(conditioning="tokens", steps=50, method="smc"),
    "tokens-sde50-churn2": SamplerConfig(conditioning="tokens", steps=50, method="smc", smc=SMCConfig(churn=2.0)),
}


def draw(model: TrainedNDP, tasks: GPTasks, cfg: SamplerConfig, n_samples: int, seed: int) -> np.ndarray:
    """``n_samples`` draws (T, S, m_max) of every task's targets by the candidate ``cfg``."""
    kw = cfg.path_kwargs()
    if cfg.method == "ode":
        return sample(model, tasks.x_ctx, tasks.y_ctx, tasks.x_tgt, n_samples, ctx_mask=tasks.ctx_mask, tgt_mask=tasks.tgt_mask,
                      solver=cfg.solver, **{**kw, "noise_std": tasks.noise_std}, generator=torch.Generator().manual_seed(seed)).y_tgt
    out = np.zeros((len(tasks), n_samples, tasks.tgt_mask.shape[1]))
    for i in range(len(tasks)):  # sample_smc takes unpadded tasks
        xc, yc, xt, _ = tasks.task(i)
        out[i][:, tasks.tgt_mask[i]] = sample_smc(
            model, xc[None], yc[None], xt[None], n_samples, **{**kw, "noise_std": tasks.noise_std[i]}, **dataclasses.asdict(cfg.smc),
            generator=torch.Generator().manual_seed(seed * 1000 + i)).y_tgt[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="LABEL=path/to/model.pt (repeatable)")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--kernels", nargs="*", default=list(BENCH_KERNELS), choices=list(BENCH_KERNELS))
    parser.add_argument("--no-exact", action="store_true", help="skip the exact likelihood rows")
    parser.add_argument("--n-tasks", type=int, default=8, help="tasks per kernel")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="RK4 steps of the exact likelihood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench/ndp_conditioning.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lik = LikelihoodConfig(steps=args.steps)
    rows = []
    for spec in args.model:
        label, path = spec.split("=", 1)
        model = TrainedNDP.load(path)
        for k, (kernel_name, kernel) in enumerate(BENCH_KERNELS.items()):
            if kernel_name not in args.kernels:
                continue
            tasks = make_gp_tasks(kernel, args.n_tasks, np.random.default_rng([args.seed, k]))
            optimum = gp_optimum_scores(tasks)
            gp_draws = gp_posterior_samples(tasks, args.n_samples, np.random.default_rng([args.seed, k, 1]))
            found = [summarise(kernel_name, "gp_optimum", optimum, optimum, None),
                     summarise(kernel_name, "gp_samples_gaussfit", sample_scores(tasks, gp_draws), optimum, args.n_samples)]
            kinds = ("tokens", "guidance") if model.context_tokens else ("guidance",)
            for kind in () if args.no_exact else kinds:
                clock = time.perf_counter()
                exact = ndp_exact_scores(model, tasks, lik, True, kind)
                found.append({**summarise(kernel_name, f"exact:{kind}", exact, optimum, None),
                              "seconds_per_task": (time.perf_counter() - clock) / len(tasks)})
            for name in args.candidates:
                cfg = CANDIDATES[name]
                if cfg.conditioning not in kinds:
                    continue
                clock = time.perf_counter()
                draws = draw(model, tasks, cfg, args.n_samples, args.seed * 1000 + k)
                seconds = (time.perf_counter() - clock) / len(tasks)
                found.append({**summarise(kernel_name, name, sample_scores(tasks, draws), optimum, args.n_samples),
                              "seconds_per_task": seconds})
            for row in found:
                rows.append({"model": label, **row})
                print(f"{label:>8} {row['kernel']:>15} {row['method']:>24}  gap {row['gap']:7.3f} ± {row['gap_stderr']:.3f}"
                      f"  nll {row['nll']:7.3f} ± {row['nll_stderr']:.3f}  crps {row['crps']:6.3f}"
                      f"  s/task {row.get('seconds_per_task', float('nan')):6.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
