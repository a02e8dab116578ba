"""Sampling the methods on a task: NDP (context only) and LLM-NDP (context × LLM expert).

Every non-GP task is first mapped into the frame the NDP was trained in
(:class:`llmflow.frame.TaskFrame`); the expert's bins go through the same y map (edges move,
probabilities do not), and samples are mapped back to the data's units and checked
(:func:`llmflow.frame.check_samples`) before they are returned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import xarray as xr

from llmflow.binned import BinnedDensity
from llmflow.calibrate import CalibrationConfig, ProductFit, fit_product, target_shares
from llmflow.config import Section
from llmflow.frame import TaskFrame, check_samples
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm
from llmflow.sampler import SamplerConfig, sample
from llmflow.smc import sample_smc
from llmflow.tasks import Task, samples_dataset


@dataclass(frozen=True)
class SampleConfig(Section):
    """``config["sample"]``: n_samples per task and method; the LLM expert's weight λ, fade s
    (the NDP's x units), temperature and lost-mass policy (:class:`llmflow.poe.ExpertTerm`);
    y_scale_min, the smallest y scale of a :class:`TaskFrame`; calibration, the candidates of
    ``llm-ndp-cal`` (:func:`sample_calibrated`); shards, how many jobs the workflow deals the
    tasks over in rules ``sample`` and ``gp`` (one network load and one start-up each)."""

    KEY: ClassVar[str] = "sample"
    shards: int = 1
    n_samples: int = 64
    expert_weight: float = 1.0
    expert_fade: float = 0.0
    expert_temperature: float = 1.0
    lost_mass: str = "renormalise"
    y_scale_min: float = 1.0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


def sample_task(model: TrainedNDP, task: Task, frame: TaskFrame, n_samples: int, sampler: SamplerConfig,
                seed: int, expert: ExpertTerm | None = None) -> np.ndarray:
    """Joint samples (S, m) at the task's targets in data units; with ``expert`` (data units):
    LLM-NDP, drawn by the ODE or, with ``sampler.method: smc``, by :func:`llmflow.smc.sample_smc`.

    Raises ValueError (:func:`check_samples`) where a draw is not finite or absurdly far out.
    ``sampler.noise_std`` is in the task frame's y units. The same seed gives the same start
    noise for both methods, so their difference is the expert's effect alone. The expert's fade
    is in the NDP's x units (the task frame).
    """
    data = (frame.x(task.x_context)[None], frame.y(task.y_context)[None], frame.x(task.x_target)[None], n_samples)
    common = dict(sampler.path_kwargs(), generator=torch.Generator().manual_seed(seed))
    if expert is None:
        out = sample(model, *data, solver=sampler.solver, **common).y_tgt[0]
    else:
        # data units → task frame → the network's own normalisation; float32 like the network
        framed = expert.map_y(frame.y_shift, frame.y_scale, torch.float64).map_y(model.norm.loc, model.norm.scale)
        if sampler.method == "smc":
            out = sample_smc(model, *data, expert=framed, **common, **dataclasses.asdict(sampler.smc)).y_tgt[0]
        else:
            out = sample(model, *data, solver=sampler.solver, expert=framed, **common).y_tgt[0]
    draws = frame.y_back(out)
    check_samples(task, draws, "ndp" if expert is None else "llm-ndp", frame)
    return draws


def leave_one_out_samples(model: TrainedNDP, task: Task, frame: TaskFrame, x_held: np.ndarray, y_held: np.ndarray,
                          n_samples: int, sampler: SamplerConfig, seed: int) -> np.ndarray:
    """The NDP's samples (K, S) at each held-out context point (x_held (K, D), y_held (K,), data
    units) given the task's other context points, in the task's frame; one batch of K tasks.
    ValueError where a held-out point is not a context point of ``task``."""
    held = []
    for x, y in zip(x_held, y_held):
        match = np.flatnonzero(np.all(task.x_context == x, axis=1) & (task.y_context == y))
        if not len(match):
            raise ValueError(f"task {task.name!r}: a held-out point (x = {x}, y = {y:g}) is not one of its context "
                             "points; its expert store belongs to other data (rerun its expert job)")
        held.append(int(match[0]))
    keep = [np.arange(len(task.y_context)) != i for i in held]
    x_ctx = np.stack([frame.x(task.x_context[k]) for k in keep])
    y_ctx = np.stack([frame.y(task.y_context[k]) for k in keep])
    out = sample(model, x_ctx, y_ctx, frame.x(x_held)[:, None], n_samples, solver=sampler.solver,
                 **sampler.path_kwargs(), generator=torch.Generator().manual_seed(seed))
    return frame.y_back(out.y_tgt[:, :, 0])


def sample_calibrated(model: TrainedNDP, task: Task, frame: TaskFrame, store: xr.Dataset | str, cfg: SampleConfig,
                      sampler: SamplerConfig, seed: int, ndp: np.ndarray) -> tuple[np.ndarray, ProductFit]:
    """``llm-ndp-cal``: samples (S, m) of the product with the expert's weight and smoothing
    fitted to the task's leave-one-out scores (:func:`llmflow.calibrate.fit_product`), and the
    fit. The weight is shared among targets by the correlations of ``ndp`` (S', m), the NDP's
    own samples at the targets (:func:`llmflow.calibrate.target_shares`). λ = 0 (the LLM did not
    help on the held-out points, or none were held out) returns ``ndp`` itself: the product is
    the NDP, and drawing it again with the same seed would repeat the same draws. No fade and no
    temperature: the fit decides."""
    held, x_held, y_held = BinnedDensity.loo_from_store(store, cfg.lost_mass)
    fit = fit_product(leave_one_out_samples(model, task, frame, x_held, y_held, cfg.n_samples, sampler, seed)
                      if len(y_held) else np.zeros((0, cfg.n_samples)), y_held, held, cfg.calibration)
    if fit.weight == 0:
        return ndp, fit
    expert = ExpertTerm(BinnedDensity.from_store(store, task, cfg.lost_mass), fit.weight, smoothing=fit.smoothing,
                        shares=torch.as_tensor(target_shares(ndp)))
    return sample_task(model, task, frame, cfg.n_samples, sampler, seed, expert), fit


def sample_methods(model: TrainedNDP, task: Task, frame: TaskFrame, expert_store: xr.Dataset | str, cfg: SampleConfig,
                   sampler: SamplerConfig, seed: int) -> tuple[dict[str, xr.Dataset], ProductFit]:
    """The sample stores (:func:`llmflow.tasks.samples_dataset`) of ``ndp``, ``llm-ndp`` and
    ``llm-ndp-cal`` on one task, keyed by method, and the calibrated product's fit (its λ, w
    and leave-one-out scores also in that store's attrs). One seed for all three: the same
    start noise, so their differences are the expert's alone. ValueError where a draw is not
    finite or absurd (:func:`sample_task`)."""
    ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed)
    llm_ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed, ExpertTerm.from_store(expert_store, task, cfg))
    cal, fit = sample_calibrated(model, task, frame, expert_store, cfg, sampler, seed, ndp)
    return {
        "ndp": samples_dataset(task, ndp, "ndp"),
        "llm-ndp": samples_dataset(task, llm_ndp, "llm-ndp", expert_weight=cfg.expert_weight, expert_fade=cfg.expert_fade),
        "llm-ndp-cal": samples_dataset(task, cal, "llm-ndp-cal", expert_weight=fit.weight, expert_smoothing=fit.smoothing,
                                       loo_score=fit.score, loo_score_ndp=fit.ndp_score, n_held=fit.n_held),
    }, fit


def unconditional_samples(model: TrainedNDP, x: np.ndarray, n_samples: int, sampler: SamplerConfig, seed: int) -> np.ndarray:
    """Prior draws (S, m) of the NDP at x (m, D) in the model's frame (no context)."""
    out = sample(
        model, None, None, x[None], n_samples, solver=sampler.solver, **sampler.path_kwargs(),
        generator=torch.Generator().manual_seed(seed),
    )
    return out.y_tgt[0]
