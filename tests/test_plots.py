"""Figures from hand-made inputs: a task whose A-LLMP was not sampled still gets its figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmflow import plots
from llmflow.binned import BinnedDensity
from llmflow.tasks import Task


def _task(m: int = 6) -> Task:
    x = np.linspace(0.0, 1.0, m + 3)[:, None]
    y = np.sin(3 * x[:, 0])
    return Task("user-demo", "user", "a sentence", x[:3], y[:3], x[3:], y[3:])


def _bins(m: int) -> BinnedDensity:
    lower = np.tile(np.arange(-2.0, 2.0, 0.5), (1, m, 1))
    return BinnedDensity.from_arrays(lower, lower + 0.5, np.zeros_like(lower))


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


def test_task_figure_breaks_bands_at_the_context(tmp_path: Path, monkeypatch):
    x = np.arange(10.0)[:, None]
    ctx = np.array([0, 1, 4, 5, 6, 8])  # targets 2, 3 | 7 | 9: three pieces
    tgt = np.setdiff1d(np.arange(10), ctx)
    task = Task("user-gap", "user", "", x[ctx], np.sin(x[ctx, 0]), x[tgt], np.full(len(tgt), np.nan))
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    plots.task_figure(task, {"ndp": np.zeros((8, len(tgt)))}, _bins(len(tgt)), tmp_path / "user-gap.png")
    ax = drawn[0].axes[0]
    medians = [line.get_xdata().tolist() for line in ax.lines if line.get_color() == plots.COLORS["ndp"]]
    assert [2.0, 3.0] in medians  # the only piece with two targets is a line; 7 and 9 are bars
    assert len(ax.containers) == 2


def test_task_figure_keeps_the_bands_in_view_despite_wild_draws(tmp_path: Path, monkeypatch):
    task = _task()
    rng = np.random.default_rng(1)
    samples = {m: rng.normal(size=(10, len(task.y_target))) for m in ("ndp", "a-llmp", "llm-ndp")}
    samples["a-llmp"][0] = 300.0  # one draw with a digit too many at every target
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    plots.task_figure(task, samples, _bins(len(task.y_target)), tmp_path / "user-demo.png")
    lo, hi = drawn[0].axes[0].get_ylim()
    assert -6 < lo < -1 and 1 < hi < 6


def test_training_curve_is_written_and_deterministic(tmp_path: Path):
    import pandas as pd

    curve = pd.DataFrame({"step": [10, 20, 30], "loss": [1.0, 0.6, 0.5], "val_loss": [np.nan, np.nan, 0.7],
                          "lr": [1e-3, 5e-4, 0.0], "steps_per_s": [5.0, 5.0, 5.0], "wall_s": [2.0, 4.0, 6.0]})
    plots.training_curve(curve, tmp_path / "a.png")
    plots.training_curve(curve.assign(steps_per_s=9.0, wall_s=1.0), tmp_path / "b.png")  # timing is not drawn
    plots.training_curve(curve.assign(val_loss=np.nan), tmp_path / "c.png")  # no validation rows
    a = (tmp_path / "a.png").read_bytes()
    assert a[:4] == b"\x89PNG" and a == (tmp_path / "b.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]


def test_task_figure_keeps_the_data_readable_beside_wild_bands(tmp_path: Path, monkeypatch):
    # a series near 1e4 with one method's draws at 20x (digit slips): the panels stay on the
    # data's scale, the wild band runs off the panel
    task = _task()
    task = Task(task.name, task.family, task.text, task.x_context, 1e4 + 500 * task.y_context, task.x_target, 1e4 + 500 * task.y_target)
    rng = np.random.default_rng(1)
    m = len(task.y_target)
    samples = {"ndp": 1e4 + 300 * rng.normal(size=(16, m)), "a-llmp": 2e5 * rng.uniform(size=(16, m))}
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    plots.task_figure(task, samples, _bins(m), tmp_path / "user-wild.png")
    lo, hi = drawn[0].axes[0].get_ylim()
    data = np.concatenate([task.y_context, task.y_target])
    assert lo <= data.min() and hi >= data.max() and hi - lo < 10 * np.ptp(data)


def test_gp_oracle_figure_draws_every_rows_gap_at_one_height_per_row(tmp_path: Path, monkeypatch):
    import pandas as pd

    from llmflow.oracle import COLUMNS

    def row(kernel, method, gap):
        return {"kernel": kernel, "method": method, "gap": gap, "gap_stderr": 0.1 * gap, "n_tasks": 3}
    base = ["gp_optimum", "ndp_exact", "ndp", "gp_samples_gaussfit", "bayes_samples_gaussfit"]
    table = pd.DataFrame([row("se", m, g) for m, g in zip(base, [0.0, 0.2, 0.8, 0.1, 1.5])]
                         + [row("mixture", m, g) for m, g in zip([*base, "bayes_mixture"], [0.0, 0.8, 1.4, 0.1, 0.6, 0.3])])
    table = table.reindex(columns=COLUMNS)
    drawn = []
    monkeypatch.setattr(plots.plt, "close", drawn.append)
    plots.gp_oracle(table, tmp_path / "a.png")
    se, mixture = drawn[0].axes
    widths = {ax.get_title(): {round(p.get_y() + p.get_height() / 2): p.get_width() for p in ax.patches} for ax in (se, mixture)}
    at = {m: k for k, m in enumerate(plots.ORACLE_ROWS)}
    assert widths["se (3 tasks)"] == {at["ndp_exact"]: 0.2, at["ndp"]: 0.8, at["gp_samples_gaussfit"]: 0.1, at["bayes_samples_gaussfit"]: 1.5}
    assert widths["mixture (3 tasks)"] == {at["ndp_exact"]: 0.8, at["ndp"]: 1.4, at["gp_samples_gaussfit"]: 0.1,
                                           at["bayes_samples_gaussfit"]: 0.6, at["bayes_mixture"]: 0.3}
    plots.gp_oracle(table, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
