"""The prior stage: Gaussian-process function draws for training and evaluating the NDP.

Each function gets a kernel drawn from the configured mixture, hyper-parameters drawn from
their ranges (length-scales and periods log-uniform, variance and noise uniform), a number of
points uniform in ``n_points`` and inputs uniform in the ``x_range`` box of dimension
``x_dim``; a share ``trend_fraction`` of the functions also gets a linear trend ``b·x`` with
``b ~ N(0, s²)``, s uniform in ``slope_std`` (the kernel's ``slope_variance`` = s²).
Observations are ``y = f(x) + ε`` with ``ε ~ N(0, noise_std²)``.

A shard is a function of (config, seed, split, shard index) only: its random stream is
``SeedSequence(seed, spawn_key=(split_id, shard))``, so shards can be made in any order, on any
number of workers, and are byte-identical every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from llmflow.config import Section
from llmflow.gp import sample_prior
from llmflow.kernels import HYPERPARAMETERS, Kernel

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class PriorConfig(Section):
    """The ``prior`` section of the config (see workflow/schemas/config.schema.yaml); ``shards``:
    shards per split (the workflow's)."""

    KEY: ClassVar[str] = "prior"
    x_range: tuple[float, float]
    n_points: tuple[int, int]
    kernels: tuple[str, ...]
    lengthscale: tuple[float, float]
    x_dim: int = 1
    kernel_weights: tuple[float, ...] | None = None
    variance: tuple[float, float] = (1.0, 1.0)
    noise_std: tuple[float, float] = (0.05, 0.05)
    period: tuple[float, float] = (0.25, 1.0)
    periodic_lengthscale: tuple[float, float] = (1.0, 1.0)
    trend_fraction: float = 0.0
    slope_std: tuple[float, float] = (0.0, 0.0)
    functions_per_shard: int = 1024
    shards: dict[str, int] = field(default_factory=dict)


def shard_rng(seed: int, split: str, shard: int) -> np.random.Generator:
    """The independent random stream of one shard."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), shard)))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_kernel(cfg: PriorConfig, rng: np.random.Generator) -> tuple[Kernel, float]:
    """A kernel from the mixture with its hyper-parameters, and the noise standard deviation."""
    probs = None
    if cfg.kernel_weights is not None:
        probs = np.asarray(cfg.kernel_weights, dtype=float) / np.sum(cfg.kernel_weights)
    name = cfg.kernels[rng.choice(len(cfg.kernels), p=probs)]
    kernel = Kernel(
        name=name,
        lengthscale=_log_uniform(rng, cfg.lengthscale),
        variance=float(rng.uniform(*cfg.variance)),
        period=_log_uniform(rng, cfg.period),
        periodic_lengthscale=_log_uniform(rng, cfg.periodic_lengthscale),
    )
    noise_std = float(rng.uniform(*cfg.noise_std))
    # drawn only when trends are on, so a trend-free prior's draws stay as they were
    if cfg.trend_fraction > 0 and rng.uniform() < cfg.trend_fraction:
        kernel = replace(kernel, slope_variance=float(rng.uniform(*cfg.slope_std)) ** 2)
    return kernel, noise_std


def make_shard(cfg: PriorConfig, seed: int, split: str, shard: int, config_json: str = "") -> xr.Dataset:
    """One shard of ``cfg.functions_per_shard`` GP draws.

    Returns a Dataset with ``x (function, point, x_dim)``, ``y (function, point)``,
    ``mask (function, point)`` (True where a point exists; functions shorter than the longest
    are padded with zeros) and per function ``kernel``, ``lengthscale``, ``variance``,
    ``period``, ``periodic_lengthscale``, ``slope_variance``, ``noise_std``.
    """
    rng = shard_rng(seed, split, shard)
    n_fn, max_pts, dim = cfg.functions_per_shard, cfg.n_points[1], cfg.x_dim
    x = np.zeros((n_fn, max_pts, dim))
    y = np.zeros((n_fn, max_pts))
    mask = np.zeros((n_fn, max_pts), dtype=bool)
    params: dict[str, list] = {k: [] for k in ("kernel", *HYPERPARAMETERS, "noise_std")}
    for i in range(n_fn):
        kernel, noise_std = draw_kernel(cfg, rng)
        n = int(rng.integers(cfg.n_points[0], cfg.n_points[1] + 1))
        xi = rng.uniform(cfg.x_range[0], cfg.x_range[1], size=(n, dim))
        x[i, :n] = xi
        y[i, :n] = sample_prior(kernel, xi, noise_std, rng)[0]
        mask[i, :n] = True
        for key, value in kernel.hyperparameters().items():
            params[key].append(value)
        params["kernel"].append(kernel.name)
        params["noise_std"].append(noise_std)

    fn_vars = {
        key: (("function",), np.asarray(vals, dtype=object if key == "kernel" else np.float64))
        for key, vals in params.items()
    }
    ds = xr.Dataset(
        {
            "x": (("function", "point", "x_dim"), x),
            "y": (("function", "point"), y),
            "mask": (("function", "point"), mask),
            **fn_vars,
        },
        attrs={
            "split": split,
            "shard": shard,
            "seed": seed,
            "units": "x and y are dimensionless (as configured); lengthscale and period in x units; "
            "variance in y units squared; slope_variance in y² per x² units; noise_std in y units",
            "config": config_json,
        },
    )
    ds["x"].attrs["description"] = "inputs, uniform in the configured box"
    ds["y"].attrs["description"] = "noisy GP observations f(x) + noise"
    ds["mask"].attrs["description"] = "True where the point exists (functions have varying sizes)"
    return ds


def prior_config_json(section: dict[str, Any], seed: int) -> str:
    """The generating config, stored in every shard's attrs (sorted keys, so it is stable)."""
    return json.dumps({"seed": seed, "prior": section}, sort_keys=True)
