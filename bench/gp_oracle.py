"""GP-oracle benchmark from the command line (the same computation as the Snakemake target).

    .venv/bin/python bench/gp_oracle.py --config config.yaml --model results/ndp/model.pt \
        --mixture results/prior/test/shard-*.zarr --out results/bench/gp_oracle.csv

Reads ``bench.gp_oracle``, ``sampler``, ``seed`` and ``device`` from the config (missing keys take
the library defaults); prints the table and writes the CSV (and a .txt beside it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from llmflow.ndp import TrainedNDP
from llmflow.oracle import OracleConfig, format_table, run_gp_oracle, write_table
from llmflow.sampler import SamplerConfig
from llmflow.train import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml", help="workflow config (YAML)")
    parser.add_argument("--model", default="results/ndp/model.pt", help="trained NDP (model.pt)")
    parser.add_argument("--mixture", nargs="*", default=[], help="held-out prior shards for the mixture row")
    parser.add_argument("--out", default="results/bench/gp_oracle.csv", help="output CSV")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text()) or {}
    model = TrainedNDP.load(args.model, resolve_device(args.device or config.get("device", "auto")))
    table = run_gp_oracle(
        model,
        OracleConfig(**config.get("bench", {}).get("gp_oracle", {})),
        SamplerConfig(**config.get("sampler", {})),
        mixture_shards=args.mixture,
        seed=int(config.get("seed", 0)),
    )
    write_table(table, args.out, str(Path(args.out).with_suffix(".txt")))
    print(format_table(table))


if __name__ == "__main__":
    main()
