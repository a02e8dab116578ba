"""Covariance functions for the GP prior and the GP oracle: stationary, plus an optional trend.

Every kernel maps inputs ``x1`` of shape (n, D) and ``x2`` of shape (m, D) to a covariance matrix
of shape (n, m), in float64. Length-scales and periods are in the units of x; ``variance`` is in
units of y².

- ``se``: ``v * exp(-r² / (2 ℓ²))``
- ``matern52``: ``v * (1 + √5 r/ℓ + 5 r²/(3 ℓ²)) * exp(-√5 r/ℓ)``
- ``periodic``: ``v * exp(-2 Σ_d sin²(π |x_d - x'_d| / p) / ℓ_p²)``, a product over dimensions of the
  1-D periodic kernel (the Euclidean-distance form is not positive definite for D > 1)
- ``weakly_periodic``: SE × periodic, ``v * exp(-r² / (2 ℓ²)) * exp(-2 Σ_d sin²(π |x_d - x'_d| / p) / ℓ_p²)``

``r`` is the Euclidean distance. Any of them takes a linear trend term ``+ s² x·x'``
(``slope_variance`` = s², in y² per x² units; 0 = none): the covariance of ``f(x) + b·x`` with
a slope ``b ~ N(0, s² I)``, so a function can keep rising beyond its data (a trending series
forecast) where a stationary draw reverts to its mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KERNEL_NAMES: tuple[str, ...] = ("se", "matern52", "periodic", "weakly_periodic")
# Kernel's fields after its name: the one list that prior shards, task attrs and the oracle's
# grids store and read a kernel by.
HYPERPARAMETERS: tuple[str, ...] = ("lengthscale", "variance", "period", "periodic_lengthscale", "slope_variance")


@dataclass(frozen=True)
class Kernel:
    """A stationary kernel with its hyper-parameters, plus an optional linear trend term.

    ``lengthscale`` is the SE / Matérn length-scale (for ``periodic`` it is unused);
    ``period`` and ``periodic_lengthscale`` parameterise the periodic factor of ``periodic``
    and ``weakly_periodic``; ``slope_variance`` ≥ 0 the variance of the trend's slope.
    """

    name: str
    lengthscale: float = 1.0
    variance: float = 1.0
    period: float = 1.0
    periodic_lengthscale: float = 1.0
    slope_variance: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in KERNEL_NAMES:
            raise ValueError(f"unknown kernel {self.name!r}; expected one of {KERNEL_NAMES}")
        for field in ("lengthscale", "variance", "period", "periodic_lengthscale"):
            if not getattr(self, field) > 0:
                raise ValueError(f"kernel {self.name}: {field} must be > 0, got {getattr(self, field)}")
        if not self.slope_variance >= 0:
            raise ValueError(f"kernel {self.name}: slope_variance must be >= 0, got {self.slope_variance}")

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> Kernel:
        """The kernel ``name`` with the hyper-parameters found in ``record`` by field name (a
        task's attrs, one function of a prior shard); one it lacks keeps its default (stores
        written before trends existed have no ``slope_variance``: 0, no trend)."""
        return cls(str(name), **{k: float(record[k]) for k in HYPERPARAMETERS if k in record})

    def hyperparameters(self) -> dict[str, float]:
        """The fields of ``HYPERPARAMETERS`` by name, as ``from_record`` reads them back."""
        return {k: getattr(self, k) for k in HYPERPARAMETERS}

    def __call__(self, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        """Covariance matrix (n, m) between ``x1`` (n, D) and ``x2`` (m, D)."""
        x1, x2, diff, sq = _pairs(x1, x2)
        k = _stationary(self.name, diff, sq, self.lengthscale, self.lengthscale**2, self.period, self.periodic_lengthscale**2)
        return self.variance * k + self.slope_variance * (x1 @ x2.T)


def covariances(kernels: Sequence[Kernel], x1: np.ndarray, x2: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Covariance matrices (J, n, m) of ``kernels`` (J of them) between ``x1`` (n, D) and ``x2``
    (m, D); matrix j equals ``kernels[j](x1, x2)`` bit for bit.

    The pairwise distances are computed once and each kernel family's formula runs on up to
    ``chunk`` of its members' hyper-parameters at once (the temporaries stay a few MB): the GP
    oracle's hyper-parameter grid holds tens of thousands of kernels, which one call each spent
    most of its time on in Python.
    """
    x1, x2, diff, sq = _pairs(x1, x2)
    trend = x1 @ x2.T
    out = np.empty((len(kernels), len(x1), len(x2)))
    for name in dict.fromkeys(k.name for k in kernels):
        members = [j for j, k in enumerate(kernels) if k.name == name]
        for lo in range(0, len(members), chunk):
            at = members[lo:lo + chunk]

            def field(value: Callable[[Kernel], float]) -> np.ndarray:  # (J, 1, 1), against (n, m)
                # squares by Python's float power, as Kernel.__call__ takes them (numpy's x*x
                # differs from it in the last bit for a few values)
                return np.array([value(kernels[j]) for j in at])[:, None, None]

            k = _stationary(name, diff, sq, field(lambda k: k.lengthscale), field(lambda k: k.lengthscale**2),
                            field(lambda k: k.period), field(lambda k: k.periodic_lengthscale**2))
            out[at] = field(lambda k: k.variance) * k + field(lambda k: k.slope_variance) * trend
    return out


def _pairs(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x1, x2 as float64, their differences (n, m, D) and squared distances (n, m)."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    diff = x1[:, None, :] - x2[None, :, :]
    return x1, x2, diff, np.sum(diff**2, axis=-1)


def _stationary(name: str, diff: np.ndarray, sq: np.ndarray, lengthscale, lengthscale_sq, period,
                periodic_lengthscale_sq) -> np.ndarray:
    """Kernel ``name``'s stationary factor (k / variance) at differences ``diff`` (n, m, D) and
    squared distances ``sq`` (n, m); hyper-parameters (and the squares the caller took) floats,
    or arrays (J, 1, 1) for J kernels at once (then (J, n, m))."""
    if name == "se":
        return np.exp(-0.5 * sq / lengthscale_sq)
    if name == "matern52":
        s = np.sqrt(5.0) * np.sqrt(sq) / lengthscale
        return (1.0 + s + s**2 / 3.0) * np.exp(-s)
    # one period per kernel, broadcast over the D input dimensions of diff
    sin2 = np.sum(np.sin(np.pi * np.abs(diff) / np.expand_dims(period, -1)) ** 2, axis=-1)
    periodic = np.exp(-2.0 * sin2 / periodic_lengthscale_sq)
    return periodic if name == "periodic" else np.exp(-0.5 * sq / lengthscale_sq) * periodic  # weakly periodic
