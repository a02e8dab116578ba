"""The NDP against the Bayes-optimal predictor under its own training prior, paired per task.

    .venv/bin/python bench/bayes_ceiling.py --model results/ndp/model.pt \
        --prior results/prior/test/shard-*.zarr [--exact-bayes]

The GP-oracle benchmark's tasks, seeds and rows for the config's ``bench.gp_oracle`` (the same
:func:`llmflow.oracle.run_kernel` calls), and per kernel the paired mean ± standard error over
tasks of what the ``ndp`` row loses to ``bayes_samples_gaussfit`` (joint Gaussian fit, KDE
marginal NLL, CRPS; per target, positive = the NDP is worse) and, with ``--exact-bayes``, what
``ndp_exact`` loses to the Bayes predictor's exact density (quadrature over the prior's
hyper-parameters: about 7 s per task on the default grid, so not a default benchmark row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from llmflow.config import validate_config
from llmflow.device import choose_device
from llmflow.ndp import TrainedNDP
from llmflow.oracle import OracleConfig, bayes_mixture_scores, hyper_grid, oracle_kernels, prior_config_of, run_kernel
from llmflow.sampler import SamplerConfig


def paired(loss: np.ndarray) -> str:
    return f"{loss.mean():+.3f} ± {loss.std(ddof=1) / np.sqrt(len(loss)):.3f} (median {np.median(loss):+.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--model", default="results/ndp/model.pt", help="trained NDP (model.pt)")
    parser.add_argument("--prior", nargs="+", required=True, help="held-out prior shards (their config is the training prior)")
    parser.add_argument("--kernels", nargs="+", default=None, help="kernels (default: all)")
    parser.add_argument("--exact-bayes", action="store_true", help="also ndp_exact against the Bayes predictor's exact density")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch intra-op)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = validate_config(yaml.safe_load(Path(args.config).read_text()) or {})
    cfg = OracleConfig.from_config(config["bench"]["gp_oracle"])
    sampler = SamplerConfig.from_config(config["sampler"])
    model = TrainedNDP.load(args.model, choose_device(config["device"]))
    grid = hyper_grid(prior_config_of(args.prior[0]), cfg.grid_resolution())
    for name in args.kernels or oracle_kernels(cfg):
        run = run_kernel(model, cfg, sampler, name, args.prior, int(config["seed"]), progress=False)
        ndp, bayes = run.scores["ndp"], run.scores["bayes_samples_gaussfit"]
        print(f"{name} ({len(run.tasks)} tasks): ndp − bayes_samples_gaussfit: joint {paired(bayes.loglik - ndp.loglik)}, "
              f"KDE NLL {paired(ndp.nll - bayes.nll)}, CRPS {paired(ndp.crps - bayes.crps)}", flush=True)
        if args.exact_bayes:
            exact = (run.scores["bayes_mixture"] if name == "mixture" else bayes_mixture_scores(run.tasks, grid)).loglik
            optimum = run.scores["gp_optimum"].loglik
            print(f"{name}: gap to gp_optimum: ndp_exact {paired(optimum - run.scores['ndp_exact'].loglik)}, "
                  f"Bayes exact {paired(optimum - exact)}; ndp_exact − Bayes exact: {paired(exact - run.scores['ndp_exact'].loglik)}",
                  flush=True)


if __name__ == "__main__":
    main()
