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

from collections.abc import Mapping
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
        x1 = np.asarray(x1, dtype=np.float64)
        x2 = np.asarray(x2, dtype=np.float64)
        diff = x1[:, None, :] - x2[None, :, :]
        sq = np.sum(diff**2, axis=-1)
        r = np.sqrt(sq)
        if self.name == "se":
            k = np.exp(-0.5 * sq / self.lengthscale**2)
        elif self.name == "matern52":
            s = np.sqrt(5.0) * r / self.lengthscale
            k = (1.0 + s + s**2 / 3.0) * np.exp(-s)
        elif self.name == "periodic":
            k = self._periodic(diff)
        else:  # weakly_periodic
            k = np.exp(-0.5 * sq / self.lengthscale**2) * self._periodic(diff)
        return self.variance * k + self.slope_variance * (x1 @ x2.T)

    def _periodic(self, diff: np.ndarray) -> np.ndarray:
        sin2 = np.sum(np.sin(np.pi * np.abs(diff) / self.period) ** 2, axis=-1)
        return np.exp(-2.0 * sin2 / self.periodic_lengthscale**2)
