"""The sample stage's library: replicate x reach the NDP and the prompt, and absurd draws stop it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from llmflow.expert import build_prompt, prompt_style
from llmflow.ndp import TrainedNDP, YNormalisation
from llmflow.predict import SANE_SCALES, TaskFrame, check_samples, sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, user_task

SAMPLER = SamplerConfig()


class GPField(torch.nn.Module):
    """Exact velocity for y1 ~ N(0, K(x)) on whatever points it is given: K = SE(ℓ = 1) + 0.05² I,
    so two points at one x share their function value and differ by observation noise."""

    def forward(self, x, y, t, mask=None):
        t = t[:, None, None]
        k = torch.exp(-0.5 * torch.cdist(x, x) ** 2) + 0.05**2 * torch.eye(x.shape[1])
        a = t * k @ torch.linalg.inv(t**2 * k + (1 - t) ** 2 * torch.eye(x.shape[1]))
        yhat = (a @ y[..., None])[..., 0]
        return (yhat - y) / (1 - t[:, :, 0])


class Diverging(torch.nn.Module):
    """A velocity that runs away (the guided ODE's blow-up on a pressure series, in miniature)."""

    def forward(self, x, y, t, mask=None):
        return torch.full_like(y, -3e13)


def test_replicate_x_reach_prompt_and_ndp_and_the_prediction_lies_between_them(tmp_path: Path):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n10,1.0\n20,2.0\n20,2.6\n30,3.0\n20,\n")
    task = user_task("user-rep", {"name": "rep", "csv": str(csv), "x": "x", "y": "y", "empty_y": "predict"})
    style = prompt_style("default")
    prompt = build_prompt(task.x_context, task.y_context, task.x_target[0], "", style)
    lines = prompt.splitlines()  # both replicates, nearest last (ties in the reference's order)
    assert sorted(lines[-3:-1]) == ["20.00, 2.00", "20.00, 2.60"] and lines[-1] == "20.00,"
    frame = TaskFrame.fit(task, (-2.0, 2.0), 0.1)
    draws = sample_task(TrainedNDP(GPField(), YNormalisation()), task, frame, 512, SAMPLER, seed=0)
    assert draws.shape == (512, 1)
    # Between the replicates and away from both: with only one of them the NDP's median sits
    # within 0.03 of it (2.02 and 2.52 for this model).
    assert 2.15 < np.median(draws) < 2.45


def _task(y_context) -> Task:
    y = np.asarray(y_context, dtype=float)
    x = np.arange(len(y), dtype=float)[:, None]
    return Task("real-pressure", "real", "", x, y, x[:2] + 0.5, np.full(2, np.nan))


def test_absurd_draws_stop_the_sampler_with_one_line():
    # Air pressure near 10⁵ Pa: the ODE's runaway draw of −3·10¹³ must not become a prediction.
    task = _task([101_325.0, 101_410.0, 101_180.0])
    frame = TaskFrame.fit(task, (-2.0, 2.0), 1.0)
    model = TrainedNDP(Diverging(), YNormalisation())
    with pytest.raises(ValueError) as info:
        sample_task(model, task, frame, 4, SAMPLER, seed=0)
    assert str(info.value).startswith("task 'real-pressure', method 'ndp': a draw of -")
    assert "lies outside the sane range" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("y_context", "draw", "ok"),
    [
        ([101_325.0, 101_410.0], 1.01e6, True),  # an LLM's number with one digit too many: odd, not absurd
        ([101_325.0, 101_410.0], -3e13, False),
        ([0.2, 0.5], 99.99, True),  # the largest number the LLM may write for this context
        ([0.2, 0.5], 1.5e3, False),  # w = max(span, max|y|, y_scale = 1) = 1
        ([1e-6, 3e-6], 2.0, True),  # tiny data: the frame's y_scale floor sets the scale
        ([5.0], np.nan, False),
        ([5.0], -np.inf, False),
    ],
)
def test_sane_range(y_context, draw, ok):
    task = _task(y_context)
    frame = TaskFrame.fit(task, (-2.0, 2.0), 1.0)
    samples = np.array([[np.mean(y_context), draw]])
    if ok:
        check_samples(task, samples, "llm-ndp", frame)
    else:
        with pytest.raises(ValueError, match=r"^task 'real-pressure', method 'llm-ndp': "):
            check_samples(task, samples, "llm-ndp", frame)


def test_sane_range_is_the_documented_one():
    task = _task([0.0, 10.0])  # span 10, max |y| 10, y_scale 5
    frame = TaskFrame.fit(task, (-2.0, 2.0), 1.0)
    check_samples(task, np.array([[10.0 + SANE_SCALES * 10.0]]), "ndp", frame)
    with pytest.raises(ValueError, match=r"sane range \[-1e\+04, 1e\+04\]"):
        check_samples(task, np.array([[10.0 + SANE_SCALES * 10.0 + 1.0]]), "ndp", frame)


def test_leave_one_out_samples_refuse_points_of_other_data():
    from llmflow.predict import leave_one_out_samples

    task = Task("t", "synth", "", np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 1.0, 0.5]), np.array([[3.0]]), np.array([0.2]))
    frame = TaskFrame.fit(task, (-2.0, 2.0), 1.0)
    model = TrainedNDP(GPField(), YNormalisation())
    draws = leave_one_out_samples(model, task, frame, np.array([[0.0], [2.0]]), np.array([0.0, 0.5]), 8, SAMPLER, 0)
    assert draws.shape == (2, 8) and np.isfinite(draws).all()
    with pytest.raises(ValueError, match=r"task 't': a held-out point .* is not one of its context points"):
        leave_one_out_samples(model, task, frame, np.array([[0.5]]), np.array([0.0]), 8, SAMPLER, 0)
