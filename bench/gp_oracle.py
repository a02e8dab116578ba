"""GP-oracle benchmark from the command line (the same computation as the Snakemake target).

    .venv/bin/python bench/gp_oracle.py --config config.yaml --model results/ndp/model.pt \
        --prior results/prior/test/shard-*.zarr --out results/bench/gp_oracle.csv

Reads ``bench.gp_oracle``, ``sampler``, ``seed`` and ``device`` from the config, validated and
completed with the schema's defaults exactly as the workflow does; prints the wall time of each
kernel and the table, and writes the CSV (and a .txt beside it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from llmflow.config import validate_config
from llmflow.ndp import TrainedNDP
from llmflow.oracle import OracleConfig, format_table, run_gp_oracle, write_table
from llmflow.sampler import SamplerConfig
from llmflow.device import choose_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--model", default="results/ndp/model.pt", help="trained NDP (model.pt)")
    parser.add_argument("--prior", nargs="*", default=[],
                        help="held-out prior shards: the mixture kernel's tasks, and the prior of the Bayes rows")
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="kernels to run (default: all; the workflow runs one per job); needs --out")
    parser.add_argument("--out", default=None, help="output CSV (default, all kernels only: results/bench/gp_oracle.csv)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch intra-op), as the workflow rule")
    args = parser.parse_args()
    if args.kernels and args.out is None:
        parser.error("--kernels writes part of the table: name its file with --out (the default is the whole table's)")
    args.out = args.out or "results/bench/gp_oracle.csv"
    torch.set_num_threads(args.threads)

    config = validate_config(yaml.safe_load(Path(args.config).read_text()) or {})
    model = TrainedNDP.load(args.model, choose_device(args.device or config["device"]))
    table = run_gp_oracle(
        model,
        OracleConfig.from_config(config["bench"]["gp_oracle"]),
        SamplerConfig.from_config(config["sampler"]),
        prior_shards=args.prior,
        seed=int(config["seed"]),
        kernels=args.kernels,
        log=print,
    )
    write_table(table, args.out, str(Path(args.out).with_suffix(".txt")))
    print(format_table(table))


if __name__ == "__main__":
    main()
