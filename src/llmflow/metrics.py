"""Scores of predictive distributions at the targets of a task.

A method's prediction at the m targets of a task is a set of joint samples (S, m) (NDP,
A-LLMP, LLM-NDP), independent binned densities (I-LLMP) or a Gaussian N(mean, cov) (the fitted
GP, with samples of it too; the GP oracle). Metrics, all per target unless said otherwise,
averaged over targets whose truth is known:

- ``nll``: negative log predictive density in nats per target, exact: binned densities and
  Gaussians (the fitted GP, the GP oracle).
- ``nll_kde``: the same for samples, estimated by a Gaussian kernel density estimate per target
  with Silverman's bandwidth ``0.9 · min(sd, IQR/1.34) · S^(−1/5)`` (documented estimator,
  checked against the exact marginal on GP samples in the tests). Named apart because it is
  heavy-tailed over tasks: a truth outside collapsed samples gets an enormous value.
- ``crps``: continuous ranked probability score (``scoringrules.crps_ensemble``; binned
  densities enter through ``n_quantiles`` evenly spaced quantiles of their CDF).
- ``energy``: energy score of the joint target vector (``scoringrules.es_ensemble``), samples only.
- ``coverage50`` / ``coverage90``: fraction of truths inside the central 50% / 90% interval.
- ``mae``: mean absolute error of the median.
- ``roughness``: mean squared second difference of each trajectory along its sorted x
  (1-D x, samples only): the paper's smoothness contrast between joint and independent draws.
- ``constraint``: fraction of samples meeting the task's text constraint at every target; only
  where the text constrains some target (a finite bound).
- ``joint_loglik``: log-likelihood per target of the whole target vector under a Gaussian
  fitted to the samples (mean, covariance + 1e-6 I): the NDP literature's protocol.

Draws are scored as estimates of the method's predictive distribution, not of the finite
ensemble, so that methods with 10 draws (A-LLMP) and 64 (NDP) compare on one scale: CRPS and
energy score by the fair estimators (Ferro 2014, Statistical scoring of ensemble forecasts:
unbiased for the score of the distribution the draws come from; the empirical-ensemble CRPS
of 10 N(0, 1) draws is 10% above the exact one), interval ends by the Weibull plotting
positions p·(S + 1) (E F(X_(k)) = k/(S + 1), so the interval holds about 90% of the
predictive's mass on average; numpy's default positions 1 + p·(S − 1) hold about 0.76 at 10
Gaussian draws and 0.875 at 64). With S draws the 90% interval can hold at most
(S − 1)/(S + 1) (the draws' range): 0.82 at 10 draws.
"""

from __future__ import annotations

import numpy as np
import scoringrules as sr
from scipy import stats

from llmflow.binned import BinnedDensity
from llmflow.gp import LOG_2PI, stable_cholesky
from llmflow.tasks import Task

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# What only joint draws give: a method with an exact Gaussian predictive takes these from its
# samples and the rest from :func:`gaussian_metrics`.
SAMPLE_ONLY = ("energy", "roughness", "constraint")


def constrains(task: Task) -> bool:
    """Whether the task's text bounds some target (a constraint of ±inf everywhere says nothing)."""
    return task.constraint_lo is not None and bool(np.any(np.isfinite(task.constraint_lo) | np.isfinite(task.constraint_hi)))


def _estimator(n_draws: int) -> str:
    # the fair estimators divide by S·(S − 1): one draw has only |x − y|
    return "fair" if n_draws >= 2 else "nrg"


def ensemble_crps(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fair CRPS per target of draws samples (S, m) at truths y (m,): unbiased for the CRPS of the
    distribution the draws come from (Ferro 2014); |x − y| for a single draw."""
    return sr.crps_ensemble(y, samples.T, estimator=_estimator(len(samples)))


def sample_quantiles(samples: np.ndarray, levels) -> np.ndarray:
    """Quantiles (m, len(levels)) of draws samples (S, m) at the Weibull plotting positions
    level·(S + 1), whose expected probability content is the level itself (NaN draws ignored).
    The scores, the predictions CSVs and the figures' bands all take their intervals here."""
    return np.nanquantile(samples, levels, axis=0, method="weibull").T


def kde_log_density(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-target Gaussian KDE log density (Silverman's bandwidth). samples (S, m), y (m,)."""
    s = samples.shape[0]
    sd = samples.std(axis=0, ddof=1)
    iqr = np.subtract(*np.percentile(samples, [75, 25], axis=0))
    spread = np.minimum(sd, iqr / 1.34)
    spread = np.where(spread > 0, spread, sd)
    h = np.maximum(0.9 * spread * s ** (-0.2), 1e-12)
    z = (y[None, :] - samples) / h[None, :]
    return np.logaddexp.reduce(-0.5 * z**2, axis=0) - np.log(s * h * np.sqrt(2 * np.pi))


def gaussian_fit_loglik(samples: np.ndarray, y: np.ndarray, jitter: float = 1e-6) -> float:
    """Joint log-likelihood per target of y (m,) under N(mean, cov + δ I) of samples (S, m): δ is
    ``jitter`` times the mean variance, grown until the factorisation succeeds
    (:func:`llmflow.gp.stable_cholesky`), so fewer samples than targets (a singular sample
    covariance) or large units score (very low) instead of failing."""
    mean = samples.mean(axis=0)
    chol = stable_cholesky(np.atleast_2d(np.cov(samples, rowvar=False)), jitter=jitter)
    diff = np.linalg.solve(chol, y - mean)
    return float(-0.5 * diff @ diff - np.log(np.diag(chol)).sum() - 0.5 * len(y) * LOG_2PI) / len(y)


def roughness(samples: np.ndarray, x: np.ndarray) -> float:
    """Mean squared second difference along sorted 1-D x; samples (S, m), x (m,)."""
    order = np.argsort(x)
    return float(np.mean(np.diff(samples[:, order], n=2, axis=1) ** 2)) if len(x) >= 3 else float("nan")


def _interval_metrics(quant: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """quant (m, 5) at QUANTILES; truth (m,)."""
    return {
        "coverage50": float(np.mean((truth >= quant[:, 1]) & (truth <= quant[:, 3]))),
        "coverage90": float(np.mean((truth >= quant[:, 0]) & (truth <= quant[:, 4]))),
        "mae": float(np.mean(np.abs(quant[:, 2] - truth))),
    }


def sample_metrics(task: Task, samples: np.ndarray) -> dict[str, float]:
    """Every metric of a sample-based method on ``task``; samples (S, m) in data units."""
    out: dict[str, float] = {}
    known = np.isfinite(task.y_target)
    if task.x_target.shape[1] == 1:
        out["roughness"] = roughness(samples, task.x_target[:, 0])
    if constrains(task):
        out["constraint"] = float(task.satisfies(samples).mean())
    if known.any():
        s, y = samples[:, known], task.y_target[known]
        out["nll_kde"] = float(-kde_log_density(s, y).mean())
        out["crps"] = float(np.mean(ensemble_crps(s, y)))
        out["energy"] = float(sr.es_ensemble(y, s, estimator=_estimator(len(s)))) / len(y)
        out |= _interval_metrics(sample_quantiles(s, QUANTILES), y)
        if known.sum() >= 2:
            out["joint_loglik"] = gaussian_fit_loglik(s, y)
    return out


def bins_metrics(task: Task, bins: BinnedDensity, n_quantiles: int = 512) -> dict[str, float]:
    """Every metric of a binned-density method (I-LLMP) on ``task``; ``bins``: its one-task
    density (T = 1).

    ``constraint`` is exact: the targets are independent, so the probability that a joint draw
    meets the text everywhere is the product of the per-target masses inside its interval.
    """
    out: dict[str, float] = {}
    if constrains(task):
        out["constraint"] = float(np.prod(bins.mass_inside(task.constraint_lo, task.constraint_hi)[0]))
    known = np.isfinite(task.y_target)
    if not known.any():
        return out
    y = task.y_target[known]
    sub = bins.targets(known)
    out["nll"] = float(sub.nll(y[None])[0].mean())
    levels = (np.arange(n_quantiles) + 0.5) / n_quantiles
    out["crps"] = float(np.mean(sr.crps_ensemble(y, sub.quantiles(levels)[0])))
    out |= _interval_metrics(sub.quantiles(np.asarray(QUANTILES))[0], y)
    return out


def gaussian_quantiles(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Quantiles (m, 5) at QUANTILES of the marginals of N(mean (m,), cov (m, m))."""
    return mean[:, None] + np.sqrt(np.diag(cov))[:, None] * stats.norm.ppf(QUANTILES)[None, :]


def gaussian_metrics(task: Task, mean: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """Exact metrics of a Gaussian predictive (the fitted GP, the GP oracle) at the targets whose
    truth is known (none: no metric); mean (m,), cov (m, m), data units."""
    known = np.isfinite(task.y_target)
    if not known.any():
        return {}
    y, mu, c = task.y_target[known], mean[known], cov[np.ix_(known, known)]
    sd = np.sqrt(np.diag(c))
    quant = gaussian_quantiles(mu, c)
    return {
        "nll": float(-stats.norm.logpdf(y, mu, sd).mean()),
        "crps": float(np.mean(sr.crps_normal(y, mu, sd))),
        **_interval_metrics(quant, y),
        "joint_loglik": float(stats.multivariate_normal(mu, c, allow_singular=True).logpdf(y)) / len(y),
    }


def prediction_table(x: np.ndarray, quant: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of the predictions export: x (or x0, x1, …), mean, median, q05, q25, q75, q95."""
    cols = {"x": x[:, 0]} if x.shape[1] == 1 else {f"x{d}": x[:, d] for d in range(x.shape[1])}
    cols |= {"mean": mean, "median": quant[:, 2], "q05": quant[:, 0], "q25": quant[:, 1], "q75": quant[:, 3], "q95": quant[:, 4]}
    return cols
