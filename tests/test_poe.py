"""The product of experts' term: one object owns the expert's settings, and a store must be its task's."""

import numpy as np
import pytest
import torch
import xarray as xr

from llmflow.binned import BinnedDensity, store_dataset
from llmflow.poe import ExpertTerm, fade_factor
from llmflow.predict import SampleConfig
from llmflow.tasks import Task


def test_fade_factor():
    x_ctx = torch.tensor([[[0.0], [4.0]]])
    x_tgt = torch.tensor([[[0.0], [1.0], [3.0], [20.0]]])
    both = torch.tensor([[True, True]])
    fade = fade_factor(x_ctx, both, x_tgt, 2.0)[0].numpy()
    np.testing.assert_allclose(fade, 1 - np.exp(-0.5 * (np.array([0.0, 1.0, 1.0, 16.0]) / 2.0) ** 2), rtol=1e-6)
    only_first = fade_factor(x_ctx, torch.tensor([[True, False]]), x_tgt, 2.0)[0].numpy()
    np.testing.assert_allclose(only_first[2], 1 - np.exp(-0.5 * (3.0 / 2.0) ** 2), rtol=1e-6)
    assert (fade_factor(x_ctx, both, x_tgt, 0.0) == 1).all()
    assert (fade_factor(x_ctx, torch.tensor([[False, False]]), x_tgt, 2.0) == 1).all()


def _task() -> Task:
    return Task("t", "synth", "", np.zeros((2, 1)), np.zeros(2), np.array([[1.0], [2.0]]), np.array([0.5, np.nan]))


def _store(task: Task) -> xr.Dataset:
    lower = np.array([[0.0, 1.0, np.nan], [0.0, 2.0, 4.0]])
    upper = np.array([[1.0, 2.0, np.nan], [2.0, 4.0, 5.0]])
    with np.errstate(divide="ignore"):
        logp = np.log([[0.3, 0.5, 0.0], [0.1, 0.2, 0.5]])
    return store_dataset(task.x_target, task.y_target, lower, upper, logp, np.isfinite(lower),
                         {"lost_mass": np.array([0.2, 0.2]), "nll_target": np.array([1.5, np.nan])}, {"task": "t"})


def test_expert_term_applies_every_setting_of_the_sample_section(tmp_path):
    task = _task()
    path = tmp_path / "t.zarr"
    _store(task).to_zarr(path)
    cfg = SampleConfig(expert_weight=2.0, expert_fade=0.5, expert_temperature=0.5, lost_mass="flat")
    term = ExpertTerm.from_store(str(path), task, cfg)
    assert (term.weight, term.fade) == (2.0, 0.5)
    expected = BinnedDensity.from_store(str(path), task, "flat").temper(0.5)
    np.testing.assert_array_equal(term.expert.log_prob, expected.log_prob)
    assert term.expert.lower.shape[-1] == 4  # the flat bin of the lost mass
    # weights: λ · fade at valid targets, 0 at padding
    w = term.target_weights(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor([[[0.0], [3.0]]]),
                            torch.tensor([[True, False]]))
    np.testing.assert_allclose(w.numpy(), [[0.0, 0.0]])
    w = term.target_weights(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor([[[3.0]]]),
                            torch.ones(1, 1, dtype=torch.bool))
    np.testing.assert_allclose(w.numpy(), [[2.0 * (1 - np.exp(-0.5 * 36.0))]], rtol=1e-6)


def test_a_store_of_other_targets_is_refused(tmp_path):
    task = _task()
    path = tmp_path / "t.zarr"
    _store(task).to_zarr(path)
    moved = Task("t", "synth", "", task.x_context, task.y_context, task.x_target + 1, task.y_target)
    with pytest.raises(ValueError, match=r"t\.zarr: the expert store's 2 targets are not those of task 't'"):
        BinnedDensity.from_store(str(path), moved)
    other_truth = Task("t", "synth", "", task.x_context, task.y_context, task.x_target, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="not those of task"):
        ExpertTerm.from_store(str(path), other_truth, SampleConfig())
    density = BinnedDensity.from_store(str(path), task)
    np.testing.assert_array_equal(density.nll_target, [[1.5, np.nan]])


def test_smoothing_adds_to_the_samplers_width_and_maps_with_y():
    task = _task()
    density = BinnedDensity.from_store(_store(task), task)
    term = ExpertTerm(density, weight=0.5, smoothing=0.3)
    y, rows = torch.tensor([[0.4, 1.1]], dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    np.testing.assert_allclose(term.score(y, rows, 0.4), density.score(y, rows, 0.5))
    np.testing.assert_allclose(term.log_density(y, rows), density.log_density(y, rows, 0.3))
    mapped = term.map_y(1.0, 2.0, torch.float64)
    assert mapped.smoothing == 0.15 and mapped.weight == 0.5
    np.testing.assert_allclose(mapped.log_density((y - 1.0) / 2.0, rows, 0.2),
                               term.log_density(y, rows, 0.4) + np.log(2.0), rtol=1e-10)
