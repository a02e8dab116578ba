"""Tasks outside the repository's own: six US quarterly series as user tasks, to check the
methods on data the defaults were not chosen on.

statsmodels' `macrodata` (shipped with statsmodels, offline), 1999 Q1–2008 Q4: real GDP, CPI,
unemployment, the 3-month T-bill rate, M1 and real investment; x is the quarter 1–40, y at
three decimals, the first 28 quarters the context and the last 12 a forecast, each with one
sentence of what the series is. Writes ``<out>/<name>.csv`` and ``<out>.yaml``, a config file
to add to the default one:

    python bench/outside_tasks.py user            # writes user/*.csv and user.yaml
    snakemake -j4 --configfile config.yaml user.yaml

The family `user` in `results/metrics/summary.md` then holds every method on the six series
(docs/calibration.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import statsmodels.api as sm
import yaml

FIRST, LAST, CONTEXT = 1999, 2008, 28
UNITS = "x is the quarter, counting from 1999 Q1."
SERIES = {  # name: (macrodata column, sentence)
    "gdp": ("realgdp", "US real gross domestic product, quarterly, in billions of chained 2005 dollars"),
    "cpi": ("cpi", "US consumer price index for all urban consumers, quarterly, 1982-84 = 100"),
    "unemp": ("unemp", "US unemployment rate in percent, quarterly"),
    "tbill": ("tbilrate", "US 3-month Treasury bill rate in percent, quarterly average"),
    "m1": ("m1", "US M1 money stock in billions of dollars, quarterly"),
    "realinv": ("realinv", "US real gross private domestic investment, quarterly, in billions of chained 2005 dollars"),
}


def write_tasks(out: Path) -> list[dict]:
    """Write the six CSVs into ``out`` and return their ``tasks.user`` entries."""
    data = sm.datasets.macrodata.load_pandas().data
    window = data[(data.year >= FIRST) & (data.year <= LAST)].reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (column, sentence) in SERIES.items():
        rows = [f"{k + 1},{v:.3f}" for k, v in enumerate(window[column])]
        (out / f"{name}.csv").write_text("\n".join([f"quarter,{column}", *rows]) + "\n")
        entries.append({"name": name, "csv": str(out / f"{name}.csv"), "x": "quarter", "y": column,
                        "text": f"{sentence}; {UNITS}", "context": {"first": CONTEXT}})
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the CSVs; the config file is <out>.yaml")
    args = ap.parse_args()
    config = {"tasks": {"user": write_tasks(args.out)}}
    args.out.with_suffix(".yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {len(SERIES)} tasks to {args.out}/ and {args.out.with_suffix('.yaml')}")


if __name__ == "__main__":
    main()
