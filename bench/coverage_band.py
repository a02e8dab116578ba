"""What a family's 90% coverage can tell at the run's size: the spread of a perfectly calibrated
method's family coverage, simulated on the run's own tasks.

    .venv/bin/python bench/coverage_band.py [--tasks results/tasks] [--low 0.80 --high 0.95]

A calibrated method's probability integral transform at each target is uniform; summary.md's
family coverage is the mean over tasks of the share of targets inside the central 90%
interval. Targets of one task are not independent (one misjudged level moves them all), so
the transform is drawn from a Gaussian copula with correlation ρ² between any two targets of a
task (ρ² = 0: independent targets, the narrowest spread) and none between tasks. Per family
(the tasks under ``--tasks`` with a known truth, each with its number of scored targets) and ρ²
it prints the central 90% band of that mean and the probability that it lands in
[low, high]; then the probability that every family does at once.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from llmflow.tasks import Task


def family_coverage(n_targets: list[int], rho2: float, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """(n_runs,) family mean of per-task 90% coverage of a calibrated method, tasks of
    ``n_targets`` scored targets each, within-task correlation ρ² (Gaussian copula)."""
    edge = stats.norm.ppf(0.95)
    per_task = []
    for m in n_targets:
        z = np.sqrt(rho2) * rng.standard_normal((n_runs, 1)) + np.sqrt(1.0 - rho2) * rng.standard_normal((n_runs, m))
        per_task.append((np.abs(z) <= edge).mean(axis=1))
    return np.mean(per_task, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, default=Path("results/tasks"), help="a run's task stores")
    parser.add_argument("--low", type=float, default=0.80)
    parser.add_argument("--high", type=float, default=0.95)
    parser.add_argument("--rho2", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    families: dict[str, list[int]] = defaultdict(list)
    for path in sorted(args.tasks.glob("*.zarr")):
        task = Task.from_dataset(xr.open_zarr(path))
        known = int(np.isfinite(task.y_target).sum())
        if known:
            families[task.family].append(known)
    if not families:
        raise SystemExit(f"{args.tasks}: no task store with a known truth")
    print(f"90% coverage of a calibrated method, family mean over tasks; P(in [{args.low}, {args.high}])")
    rng = np.random.default_rng(args.seed)
    for rho2 in args.rho2:
        every = np.ones(args.runs, dtype=bool)
        for family, n_targets in families.items():
            cov = family_coverage(n_targets, rho2, args.runs, rng)
            inside = (cov >= args.low) & (cov <= args.high)
            every &= inside
            lo, hi = np.quantile(cov, [0.05, 0.95])
            print(f"ρ² {rho2:.1f}  {family:6s} {len(n_targets):2d} tasks, {sum(n_targets):3d} targets: "
                  f"90% band [{lo:.3f}, {hi:.3f}], P(inside) {inside.mean():.3f}")
        print(f"ρ² {rho2:.1f}  every family inside at once: {every.mean():.3f}")


if __name__ == "__main__":
    main()
