"""Figures from hand-made inputs: a task whose A-LLMP was not sampled still gets its figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmflow import plots
from llmflow.metrics import Bins
from llmflow.tasks import Task


def _task(m: int = 6) -> Task:
    x = np.linspace(0.0, 1.0, m + 3)[:, None]
    y = np.sin(3 * x[:, 0])
    return Task("user-demo", "user", "a sentence", x[:3], y[:3], x[3:], y[3:])


def _bins(m: int) -> Bins:
    lower = np.tile(np.arange(-2.0, 2.0, 0.5), (m, 1))
    return Bins(lower, lower + 0.5, np.ones_like(lower))


@pytest.mark.parametrize("methods", [("ndp", "a-llmp", "llm-ndp"), ("ndp", "llm-ndp")])
def test_task_figure_with_and_without_a_llmp(tmp_path: Path, methods: tuple[str, ...]):
    task = _task()
    rng = np.random.default_rng(0)
    samples = {m: rng.normal(size=(8, len(task.y_target))) for m in methods}
    path = tmp_path / "user-demo.png"
    plots.task_figure(task, samples, _bins(len(task.y_target)), path)
    assert path.stat().st_size > 0 and path.with_suffix(".pdf").stat().st_size > 0


def test_task_figure_marks_the_truth_only_where_it_is_known(tmp_path: Path, monkeypatch):
    task = _task()
    task.y_target[[1, 4]] = np.nan  # rows whose y was empty in the CSV
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    samples = {m: np.zeros((8, len(task.y_target))) for m in ("ndp", "llm-ndp")}
    plots.task_figure(task, samples, _bins(len(task.y_target)), tmp_path / "user-demo.png")
    truth = [line for ax in drawn[0].axes for line in ax.lines if line.get_label() == "truth"]
    assert len(truth) == 3  # ndp, i-llmp, llm-ndp panels (a-llmp not sampled)
    for line in truth:
        np.testing.assert_array_equal(line.get_xdata(), task.x_target[[0, 2, 3, 5], 0])
