"""The sample stage's library: replicate x reach the NDP and the prompt, absurd draws stop it, and
the calibrated product shares its weight."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from llmflow.expert import build_prompt, prompt_style
from llmflow.frame import SANE_SCALES, TaskFrame, check_samples
from llmflow.ndp import TrainedNDP, YNormalisation
from llmflow.predict import sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, user_task

from experts import gaussian_bins

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


def _gaussian_store(task: Task, centres: np.ndarray, sd: float, loo_centres: np.ndarray, loo_sd: float,
                    held: np.ndarray):
    """An expert store whose bins carry N(centre, sd²) at each target and N(loo_centre, loo_sd²)
    at the held-out context points ``held`` (96 bins over ±6 sd)."""
    from llmflow.binned import store_dataset

    def bins(centres, sd):
        density = gaussian_bins(centres, sd, width=sd / 8)
        return (a[0].numpy() for a in (density.lower, density.upper, density.log_prob))

    lower, upper, logp = bins(centres, sd)
    l_lo, l_up, l_lp = bins(loo_centres, loo_sd)
    m = len(centres)
    loo = {"x": task.x_context[held], "y": task.y_context[held], "lower": l_lo, "upper": l_up, "logp": l_lp,
           "nll": np.zeros(len(held))}
    return store_dataset(task.x_target, task.y_target, lower, upper, logp, np.ones_like(logp, bool),
                         {"lost_mass": np.zeros(m), "nll_target": np.zeros(m)}, {"task": task.name}, loo)


def test_the_calibrated_product_shares_the_weight_among_tied_targets():
    from llmflow.binned import BinnedDensity
    from llmflow.calibrate import target_shares
    from llmflow.poe import ExpertTerm
    from llmflow.predict import SampleConfig, sample_calibrated

    x_ctx = np.linspace(0.0, 5.0, 8)[:, None]
    x_tgt = np.array([[5.5], [5.6], [5.7], [5.8]])  # four targets the NDP ties together
    task = Task("synth-tied", "synth", "", x_ctx, np.sin(x_ctx[:, 0]), x_tgt, np.sin(x_tgt[:, 0]))
    held = np.array([1, 3, 5, 6])
    # the LLM is sharp and right at the held-out points, so the fit keeps it
    store = _gaussian_store(task, np.sin(x_tgt[:, 0]), 0.3, task.y_context[held], 0.05, held)
    model, frame, cfg = TrainedNDP(GPField(), YNormalisation()), TaskFrame.fit(task, (-2.0, 2.0), 1.0), SampleConfig(n_samples=256)
    ndp = sample_task(model, task, frame, 256, SAMPLER, seed=1)
    shares = target_shares(ndp)
    assert np.all(shares < 0.5)
    draws, fit = sample_calibrated(model, task, frame, store, cfg, SAMPLER, seed=2, ndp=ndp)
    assert fit.weight > 0
    term = ExpertTerm(BinnedDensity.from_store(store, task), fit.weight, smoothing=fit.smoothing)
    shared = sample_task(model, task, frame, 256, SAMPLER, 2, replace(term, shares=torch.as_tensor(shares)))
    unshared = sample_task(model, task, frame, 256, SAMPLER, 2, term)
    np.testing.assert_array_equal(draws, shared)
    assert draws.std(axis=0).mean() > 1.5 * unshared.std(axis=0).mean()  # 1.96 here


def test_the_calibrated_product_is_the_ndp_where_the_llm_is_wrong_at_held_out_points():
    from llmflow.predict import SampleConfig, sample_calibrated

    x_ctx = np.linspace(0.0, 5.0, 8)[:, None]
    x_tgt = np.array([[5.5], [6.5]])
    task = Task("synth-wrong", "synth", "", x_ctx, np.sin(x_ctx[:, 0]), x_tgt, np.sin(x_tgt[:, 0]))
    held = np.array([1, 3, 5, 6])
    # sharp and 3 units off at every held-out point: no weight of it beats the NDP alone
    store = _gaussian_store(task, np.sin(x_tgt[:, 0]) + 3.0, 0.05, task.y_context[held] + 3.0, 0.05, held)
    model, frame, cfg = TrainedNDP(GPField(), YNormalisation()), TaskFrame.fit(task, (-2.0, 2.0), 1.0), SampleConfig(n_samples=64)
    ndp = sample_task(model, task, frame, 64, SAMPLER, seed=1)
    draws, fit = sample_calibrated(model, task, frame, store, cfg, SAMPLER, seed=2, ndp=ndp)
    assert fit.weight == 0 and fit.n_held == 4 and fit.score == fit.ndp_score
    # the NDP's own draws come back, not a second draw of the same product (seed 2 would differ)
    np.testing.assert_array_equal(draws, ndp)
    assert not np.array_equal(sample_task(model, task, frame, 64, SAMPLER, seed=2), ndp)
