"""The evaluate stage: metrics per task × method, the summary over tasks, and the predictions export.

``summarise`` turns the per-task rows into the per-family table a comparison needs: the mean ±
standard error over tasks and the paired difference against the NDP on the same tasks (a
method's advantage shared by hard and easy tasks shows there even when the spread over tasks
swamps the plain means).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from llmflow.binned import BinnedDensity
from llmflow.gp import GaussianPosterior, posterior
from llmflow.io import write_file
from llmflow.kernels import Kernel
from llmflow.metrics import (QUANTILES, SAMPLE_ONLY, bins_metrics, gaussian_metrics, gaussian_quantiles,
                             prediction_table, sample_metrics, sample_quantiles)
from llmflow.tasks import Task

SAMPLE_METHODS: tuple[str, ...] = ("ndp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp")
METHODS: tuple[str, ...] = ("ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal", "gp")
BASELINE = "ndp"  # the method every other is paired against in the summary


def allmp_tasks(tasks: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The tasks A-LLMP samples: those matching any shell-style pattern (``allmp.tasks``)."""
    return [t for t in tasks if any(fnmatchcase(t, p) for p in patterns)]


def read_samples(paths: Mapping[str, str | Path]) -> tuple[dict[str, np.ndarray], dict[str, GaussianPosterior]]:
    """Each method's draws ``y`` (S, m) from its sample store, and the exact Gaussian predictive
    (``mean``, ``cov``, data units) of the stores that hold one (the fitted GP's)."""
    samples, gaussians = {}, {}
    for method, path in paths.items():
        ds = xr.open_zarr(path)
        samples[method] = ds["y"].values
        if "cov" in ds:
            gaussians[method] = GaussianPosterior(ds["mean"].values, ds["cov"].values)
    return samples, gaussians


def gp_oracle(task: Task) -> GaussianPosterior:
    """Exact GP posterior predictive at the targets with the task's true hyper-parameters."""
    a = task.attrs
    kernel = Kernel.from_record(a["kernel"], a)
    return posterior(kernel, task.x_context, task.y_context, task.x_target, float(a["noise_std"]))


def task_rows(task: Task, samples: Mapping[str, np.ndarray], bins: BinnedDensity,
              gaussians: Mapping[str, GaussianPosterior]) -> list[dict]:
    """Long-format metric rows (task, family, method, metric, value) of one task.

    A method in ``gaussians`` is scored exactly from its Gaussian, and takes from its samples
    only what needs draws (``metrics.SAMPLE_ONLY``); GP tasks also score the GP oracle.
    """
    scores = {method: sample_metrics(task, s) for method, s in samples.items()}
    for method, g in gaussians.items():
        scores[method] = {k: v for k, v in scores[method].items() if k in SAMPLE_ONLY} | gaussian_metrics(task, g.mean, g.cov)
    scores["i-llmp"] = bins_metrics(task, bins)
    if task.family == "gp":
        oracle = gp_oracle(task)
        scores["gp_oracle"] = gaussian_metrics(task, oracle.mean, oracle.cov)
    return [
        {"task": task.name, "family": task.family, "method": method, "metric": metric, "value": value}
        for method, metrics in scores.items()
        for metric, value in sorted(metrics.items())
    ]


def predictions(task: Task, samples: Mapping[str, np.ndarray], bins: BinnedDensity,
                gaussians: Mapping[str, GaussianPosterior]) -> dict[str, pd.DataFrame]:
    """Per method: x, mean, median, q05, q25, q75, q95 at the targets (data units).

    Every target gets a row, whether its truth is known or not. A method in ``gaussians`` (the
    fitted GP) gets its exact quantiles. A-LLMP leaves NaN where a draw found no valid number
    (``allmp.max_retries``); its statistics are over the other draws.
    """
    out = {}
    for method, s in samples.items():
        if method in gaussians:
            g = gaussians[method]
            out[method] = pd.DataFrame(prediction_table(task.x_target, gaussian_quantiles(g.mean, g.cov), g.mean))
            continue
        quant = sample_quantiles(s, QUANTILES)
        out[method] = pd.DataFrame(prediction_table(task.x_target, quant, np.nanmean(s, axis=0)))
    out["i-llmp"] = pd.DataFrame(prediction_table(task.x_target, bins.quantiles(np.asarray(QUANTILES))[0], bins.mean()[0]))
    return out


def write_predictions(task: Task, samples: Mapping[str, np.ndarray], bins: BinnedDensity,
                      gaussians: Mapping[str, GaussianPosterior], folder: str | Path) -> None:
    """:func:`predictions` as ``folder/<method>.csv``, one atomic write each."""
    for method, frame in predictions(task, samples, bins, gaussians).items():
        write_file(Path(folder) / f"{method}.csv", lambda p, f=frame: f.to_csv(p, index=False, float_format="%.6g"))


SUMMARY_COLUMNS = ["family", "method", "metric", "n_tasks", "mean", "se", "median", "diff_mean", "diff_se", "n_paired"]


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error sd/√n (ddof = 1; NaN for fewer than two values)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(np.mean(values)), se


def summarise(tasks: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per (family, method, metric), over the tasks that scored it: ``n_tasks``, ``mean``, ``se``
    (sd/√n, ddof = 1; NaN for one task) and ``median`` of the per-task values; and, for every
    method but ``baseline``, the paired difference method − baseline over the tasks both scored
    (same family and metric): ``diff_mean``, ``diff_se`` and ``n_paired`` (0, NaN differences,
    where none; NaN for the baseline itself). ``tasks``: the rows of :func:`task_rows`.

    NaN values (a metric undefined on a task) do not count; ±inf ones (I-LLMP's ``nll`` where
    the truth has no mass) do, so the mean is inf, as it is. Rows come sorted by family, method
    in :data:`METHODS` order (then the GP oracle and any other) and metric.
    """
    rows = tasks.dropna(subset=["value"])
    base = rows.loc[rows["method"] == baseline, ["task", "metric", "value"]].rename(columns={"value": "base"})
    rows = rows.merge(base, on=["task", "metric"], how="left")
    out = []
    for (family, method, metric), group in rows.groupby(["family", "method", "metric"], sort=False):
        values = group["value"].to_numpy(float)
        mean, se = _mean_se(values)
        row = {"family": family, "method": method, "metric": metric, "n_tasks": len(values), "mean": mean, "se": se,
               "median": float(np.median(values)), "diff_mean": float("nan"), "diff_se": float("nan"), "n_paired": 0}
        if method != baseline:
            diff = (group["value"] - group["base"]).dropna().to_numpy(float)
            row["diff_mean"], row["diff_se"] = _mean_se(diff)
            row["n_paired"] = len(diff)
        out.append(row)
    summary = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    order = {m: i for i, m in enumerate((*METHODS, "gp_oracle"))}
    key = summary["method"].map(lambda m: order.get(m, len(order)))
    return summary.assign(_k=key).sort_values(["family", "_k", "method", "metric"]).drop(columns="_k").reset_index(drop=True)


def _g(v: float, digits: int = 3) -> str:
    return "" if pd.isna(v) else f"{v:.{digits}g}"


def _n(row: pd.Series, n_family: int) -> str:
    return f" [n={row['n_tasks']}]" if row["n_tasks"] != n_family else ""


def _cell(row: pd.Series, n_family: int, paired: bool = False) -> str:
    """``mean ± se``, with ``paired`` the difference to the baseline, and n where fewer tasks scored it."""
    text = _g(row["mean"]) + (f" ± {_g(row['se'], 2)}" if pd.notna(row["se"]) else "")
    if paired and row["n_paired"] > 0:
        text += f" (Δ {row['diff_mean']:+.3g}" + (f" ± {_g(row['diff_se'], 2)}" if pd.notna(row["diff_se"]) else "") + ")"
    return text + _n(row, n_family)


def _median_cell(row: pd.Series, n_family: int) -> str:
    """``median (mean)``: for the heavy-tailed KDE estimate."""
    return f"{_g(row['median'])} ({_g(row['mean'])})" + _n(row, n_family)


def _table(summary: pd.DataFrame, metric: str, cell: Callable[[pd.Series, int], str], methods: list[str]) -> list[str]:
    """A family × method markdown table of one metric, each cell ``cell(row, n_family)``."""
    rows = summary[summary["metric"] == metric]
    cols = [m for m in methods if m in set(rows["method"])]
    lines = ["| family | tasks | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for family, group in rows.groupby("family"):
        n = int(group["n_tasks"].max())
        by = group.set_index("method")
        lines.append(f"| {family} | {n} | " + " | ".join(cell(by.loc[m], n) if m in by.index else "" for m in cols) + " |")
    return lines


def summary_markdown(summary: pd.DataFrame, baseline: str = BASELINE) -> str:
    """The readable summary (:func:`summarise`'s table): CRPS, the headline, and the 90%
    coverage as mean ± se with the paired difference to the baseline; NLL exact and KDE apart;
    every other metric as mean ± se."""
    order = [*METHODS, "gp_oracle"]
    methods = order + sorted(set(summary["method"]) - set(order))
    paired = partial(_cell, paired=True)
    lines = [
        "# Metrics per task family",
        "",
        f"Mean ± standard error over the family's tasks; (Δ d ± se): the paired difference method − {baseline} "
        f"on the tasks both scored, its mean ± standard error; tasks: how many of the family's tasks a metric was "
        "scored on (a truth-based metric skips tasks without truth), [n=k]: only k of them for this method. "
        "`summary.csv` holds every number, with the medians.",
        "",
        "## CRPS (headline; lower is better; data units)",
        "", *_table(summary, "crps", paired, methods), "",
        "## Coverage of the central 90% interval (0.90 is calibrated)",
        "", *_table(summary, "coverage90", paired, methods), "",
        "## NLL (nats per target; lower is better)",
        "",
        "Exact (`nll`): the method's own density (I-LLMP's binned one, the fitted GP's and the GP oracle's Gaussian).",
        "", *_table(summary, "nll", _cell, methods), "",
        "Estimated (`nll_kde`): a Gaussian KDE of the sample methods' draws per target, heavy-tailed over tasks "
        "(a truth outside collapsed draws scores enormous); median over tasks, mean in brackets.",
        "",
        *_table(summary, "nll_kde", _median_cell, methods),
        "",
    ]
    for metric in sorted(set(summary["metric"]) - {"crps", "coverage90", "nll", "nll_kde"}):
        lines += [f"## {metric}", "", *_table(summary, metric, _cell, methods), ""]
    return "\n".join(lines)
