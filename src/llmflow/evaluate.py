"""The evaluate stage: metrics per task × method, the summary tables, and the predictions export."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pandas as pd

from llmflow.gp import posterior
from llmflow.io import write_file
from llmflow.kernels import Kernel
from llmflow.binned import BinnedDensity
from llmflow.metrics import QUANTILES, bins_metrics, gaussian_metrics, prediction_table, sample_metrics
from llmflow.tasks import Task

SAMPLE_METHODS: tuple[str, ...] = ("ndp", "a-llmp", "llm-ndp", "llm-ndp-cal")
METHODS: tuple[str, ...] = ("ndp", "i-llmp", "a-llmp", "llm-ndp", "llm-ndp-cal")


def allmp_tasks(tasks: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The tasks A-LLMP samples: those matching any shell-style pattern (``allmp.tasks``)."""
    return [t for t in tasks if any(fnmatchcase(t, p) for p in patterns)]


def gp_oracle(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Exact GP posterior (mean (m,), cov (m, m)) with the task's true hyper-parameters."""
    a = task.attrs
    kernel = Kernel(a["kernel"], float(a["lengthscale"]), float(a["variance"]), float(a["period"]), float(a["periodic_lengthscale"]))
    post = posterior(kernel, task.x_context, task.y_context, task.x_target, float(a["noise_std"]))
    return post.mean, post.cov


def task_rows(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity) -> list[dict]:
    """Long-format metric rows (task, family, method, metric, value) of one task."""
    scores = {method: sample_metrics(task, s) for method, s in samples.items()}
    scores["i-llmp"] = bins_metrics(task, bins)
    if task.family == "gp":
        scores["gp_oracle"] = gaussian_metrics(task, *gp_oracle(task))
    return [
        {"task": task.name, "family": task.family, "method": method, "metric": metric, "value": value}
        for method, metrics in scores.items()
        for metric, value in sorted(metrics.items())
    ]


def predictions(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity) -> dict[str, pd.DataFrame]:
    """Per method: x, mean, median, q05, q25, q75, q95 at the targets (data units).

    Every target gets a row, whether its truth is known or not. A-LLMP leaves NaN where a draw
    found no valid number (``allmp.max_retries``); its statistics are over the other draws.
    """
    out = {}
    for method, s in samples.items():
        quant = np.nanquantile(s, QUANTILES, axis=0).T
        out[method] = pd.DataFrame(prediction_table(task.x_target, quant, np.nanmean(s, axis=0)))
    out["i-llmp"] = pd.DataFrame(prediction_table(task.x_target, bins.quantiles(np.asarray(QUANTILES))[0], bins.mean()[0]))
    return out


def write_predictions(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity, folder: str | Path) -> None:
    """:func:`predictions` as ``folder/<method>.csv``, one atomic write each."""
    for method, frame in predictions(task, samples, bins).items():
        write_file(Path(folder) / f"{method}.csv", lambda p, f=frame: f.to_csv(p, index=False, float_format="%.6g"))


def summary_markdown(summary: pd.DataFrame) -> str:
    """Mean of each metric per family and method, as a markdown table (methods as columns)."""
    table = summary.pivot_table(index=["family", "metric"], columns="method", values="value", aggfunc="mean")
    table = table[[m for m in (*METHODS, "gp_oracle") if m in table.columns]]
    header = "| family | metric | " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * (len(table.columns) + 2)]
    for (family, metric), row in table.iterrows():
        cells = " | ".join("" if pd.isna(v) else f"{v:.3f}" for v in row.values)
        lines.append(f"| {family} | {metric} | {cells} |")
    return "\n".join(lines) + "\n"
