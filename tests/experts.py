"""Analytic experts for the tests: Gaussian densities as binned LLM densities."""

import numpy as np
from scipy import stats

from llmflow.binned import BinnedDensity


def gaussian_bins(centres: np.ndarray, sd: float, width: float = 0.05) -> BinnedDensity:
    """One task, one target per centre: bins of ``width`` carrying N(centre, sd²)'s mass."""
    edges = centres[:, None] + np.arange(-6 * sd, 6 * sd + width, width)[None, :]
    mass = np.diff(stats.norm.cdf(edges, centres[:, None], sd), axis=1)
    with np.errstate(divide="ignore"):
        return BinnedDensity.from_arrays(edges[None, :, :-1], edges[None, :, 1:], np.log(mass)[None])
