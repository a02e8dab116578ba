"""The GP-oracle benchmark: held-out GP regression tasks where the exact answer is known.

Protocol (as reported in the NDP / neural-process literature): 1-D inputs ``x ~ U(−2, 2)``,
context size uniform in 1..9, 50 targets, observation noise variance 0.05², and three kernels
with variance 1 — SE (ℓ = 0.25), Matérn-5/2 (ℓ = 0.25), weakly periodic = SE(ℓ = 0.5) ×
periodic(p = 0.25, ℓ_p = 1) with ``k_per = exp(−2 sin²(π|x − x'|/p)/ℓ_p²)``.

Every row is scored on the same tasks (paired), per target and in nats:

- ``loglik``: the joint log-likelihood of the noisy targets, ``log p(y_tgt | ctx) / m``
  (higher is better), averaged over tasks with its standard error; ``gap``: the paired mean of
  ``gp_optimum − row`` per task, with its own standard error (tighter than either row's).
- ``nll``: the mean over targets of ``−log p(y_i | ctx)`` under each target's marginal;
  ``crps``: the mean continuous ranked probability score (``scoringrules``), lower is better.

Rows, per kernel:

- ``gp_optimum``: the exact GP posterior predictive with the true kernel and noise (exact
  joint, exact Gaussian marginals, closed-form CRPS).
- ``ndp_exact``: the NDP's own conditional by the probability-flow ODE (:mod:`llmflow.likelihood`),
  the one the sampler's ``conditioning`` draws from — direct with context tokens, else
  ``p(ctx ∪ tgt) / p(ctx)`` — exact up to ODE discretisation; marginal NLL the same way with
  one target at a time; no CRPS (the ODE gives densities, not a CDF).
- ``ndp``: S samples of the sampler (``sampler.*``) scored as the NDP literature does: a Gaussian fitted
  to the samples (mean, unbiased covariance + 10⁻⁶ I) evaluated at the targets; marginal NLL
  from a per-target kernel density (:func:`llmflow.metrics.kde_log_density`), fair ensemble CRPS
  (:func:`llmflow.metrics.ensemble_crps`).
- ``gp_samples_gaussfit``: S exact GP posterior samples through the very estimators of the
  ``ndp`` row: what a perfect sampler scores, the protocol's own ceiling at this S. A Gaussian
  fitted to S samples of m = 50 targets is biased low unless S ≫ m; ``gp_optimum −
  gp_samples_gaussfit`` measures that bias, ``gp_samples_gaussfit − ndp`` the model's gap
  under the protocol.
- ``bayes_mixture`` (on held-out draws of the training prior, kernel ``mixture``): the Bayes-optimal
  joint predictive under the prior's mixture over kernels and hyper-parameters,

      p(y_tgt | y_ctx) = Σ_j w_j p(y_ctx, y_tgt | θ_j) / Σ_j w_j p(y_ctx | θ_j),

  a quadrature over θ = (kernel, ℓ, p, ℓ_p, variance, noise): midpoint grids on each
  hyper-parameter's range (in log space for the log-uniform ones), weights = kernel weight ×
  grid-cell prior mass. Resolution per hyper-parameter comes from config; it must resolve the
  sharp likelihood in the period, so that axis gets the most points.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scoringrules as sr
import torch
import xarray as xr
from scipy import stats
from scipy.special import logsumexp

from llmflow.config import Section
from llmflow.gp import LOG_2PI, posterior, stable_cholesky
from llmflow.io import write_file
from llmflow.kernels import HYPERPARAMETERS, Kernel, covariances
from llmflow.likelihood import LikelihoodConfig, conditional_log_likelihood, marginal_log_likelihood
from llmflow.metrics import ensemble_crps, gaussian_fit_loglik, kde_log_density
from llmflow.ndp import TrainedNDP
from llmflow.prior import PriorConfig
from llmflow.sampler import SamplerConfig, sample
from llmflow.tasks import GP_PROTOCOL

BENCH_KERNELS: dict[str, Kernel] = GP_PROTOCOL

# Which hyper-parameters each kernel uses (the others do not change its covariance).
_USES = {
    "se": ("lengthscale",),
    "matern52": ("lengthscale",),
    "periodic": ("period", "periodic_lengthscale"),
    "weakly_periodic": ("lengthscale", "period", "periodic_lengthscale"),
}
# Matches llmflow.prior.draw_kernel: length-scales and periods log-uniform, the rest uniform.
_LOG_UNIFORM = {"lengthscale", "period", "periodic_lengthscale"}


@dataclass(frozen=True)
class GPTasks:
    """Regression tasks, padded: x_ctx (T, n, D), y_ctx (T, n), ctx_mask (T, n); x_tgt (T, m, D),
    y_tgt (T, m), tgt_mask (T, m); kernels[i] / noise_std[i]: the true generating process."""

    x_ctx: np.ndarray
    y_ctx: np.ndarray
    ctx_mask: np.ndarray
    x_tgt: np.ndarray
    y_tgt: np.ndarray
    tgt_mask: np.ndarray
    kernels: tuple[Kernel, ...]
    noise_std: np.ndarray

    def __len__(self) -> int:
        return len(self.kernels)

    def task(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_ctx, y_ctx, x_tgt, y_tgt) of task i without padding."""
        c, t = self.ctx_mask[i], self.tgt_mask[i]
        return self.x_ctx[i][c], self.y_ctx[i][c], self.x_tgt[i][t], self.y_tgt[i][t]


def _split(x: np.ndarray, y: np.ndarray, n_ctx: np.ndarray, n_valid: np.ndarray, n_tgt: int):
    """Pad function draws (T, N, D)/(T, N) into the first n_ctx points as context, the next ≤ n_tgt as targets."""
    n_max = int(n_ctx.max())
    t_count = np.minimum(n_tgt, n_valid - n_ctx)
    shape = (len(x), n_max)
    xc, yc, cm = np.zeros(shape + x.shape[2:]), np.zeros(shape), np.zeros(shape, bool)
    xt, yt, tm = np.zeros((len(x), n_tgt) + x.shape[2:]), np.zeros((len(x), n_tgt)), np.zeros((len(x), n_tgt), bool)
    for i, (c, k) in enumerate(zip(n_ctx, t_count)):
        xc[i, :c], yc[i, :c], cm[i, :c] = x[i, :c], y[i, :c], True
        xt[i, :k], yt[i, :k], tm[i, :k] = x[i, c : c + k], y[i, c : c + k], True
    return xc, yc, cm, xt, yt, tm


def make_gp_tasks(
    kernel: Kernel,
    n_tasks: int,
    rng: np.random.Generator,
    *,
    x_range: tuple[float, float] = (-2.0, 2.0),
    n_ctx: tuple[int, int] = (1, 9),
    n_tgt: int = 50,
    noise_std: float = 0.05,
) -> GPTasks:
    """Held-out tasks from one GP: x ~ U(x_range), context size uniform in n_ctx (inclusive)."""
    counts = rng.integers(n_ctx[0], n_ctx[1] + 1, size=n_tasks)
    n_all = int(counts.max()) + n_tgt
    x = rng.uniform(*x_range, size=(n_tasks, n_all, 1))
    y = np.zeros((n_tasks, n_all))
    for i in range(n_tasks):
        n = counts[i] + n_tgt  # draw only the points the task uses, so tasks are independent of padding
        chol = stable_cholesky(kernel(x[i, :n], x[i, :n]) + noise_std**2 * np.eye(n))
        y[i, :n] = chol @ rng.standard_normal(n)
    parts = _split(x, y, counts, counts + n_tgt, n_tgt)
    return GPTasks(*parts, kernels=(kernel,) * n_tasks, noise_std=np.full(n_tasks, noise_std))


def prior_tasks(
    shard_paths: Sequence[str], n_tasks: int, rng: np.random.Generator, *, n_ctx: tuple[int, int] = (1, 9), n_tgt: int = 50
) -> GPTasks:
    """Tasks from held-out prior draws (e.g. the test split): the first points of each function are
    its context (size uniform in n_ctx), the next up to n_tgt its targets (x is i.i.d. within a
    function, so this is a random split)."""
    ds = xr.concat([xr.open_zarr(p) for p in shard_paths], dim="function").isel(function=slice(0, n_tasks))
    x, y, mask = ds["x"].values, ds["y"].values, ds["mask"].values
    n_valid = mask.sum(1)
    counts = np.minimum(rng.integers(n_ctx[0], n_ctx[1] + 1, size=len(y)), n_valid - 1)
    hypers = {k: ds[k].values for k in HYPERPARAMETERS if k in ds}
    kernels = tuple(Kernel.from_record(k, {h: v[i] for h, v in hypers.items()}) for i, k in enumerate(ds["kernel"].values))
    return GPTasks(*_split(x, y, counts, n_valid, n_tgt), kernels=kernels, noise_std=ds["noise_std"].values.astype(float))


@dataclass(frozen=True)
class Scores:
    """Per-task scores of one row (T,) each: joint per-target log-likelihood, mean marginal NLL
    and mean CRPS over the task's targets (NaN where the row has no such score)."""

    loglik: np.ndarray
    nll: np.ndarray
    crps: np.ndarray


def sample_scores(tasks: GPTasks, y_samples: np.ndarray, jitter: float = 1e-6) -> Scores:
    """The sample-based estimators on samples (T, S, m) (padded targets ignored): Gaussian-fit
    joint, per-target KDE marginal NLL, ensemble CRPS."""
    ll, nll, crps = (np.empty(len(tasks)) for _ in range(3))
    for i in range(len(tasks)):
        s, y = y_samples[i][:, tasks.tgt_mask[i]], tasks.task(i)[3]
        ll[i] = gaussian_fit_loglik(s, y, jitter)
        nll[i] = -kde_log_density(s, y).mean()
        crps[i] = ensemble_crps(s, y).mean()
    return Scores(ll, nll, crps)


def gp_posterior_samples(tasks: GPTasks, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` exact GP posterior draws of each task's noisy targets (T, S, m_max), 0 at padding."""
    out = np.zeros((len(tasks), n_samples, tasks.tgt_mask.shape[1]))
    for i in range(len(tasks)):
        xc, yc, xt, _ = tasks.task(i)
        out[i][:, tasks.tgt_mask[i]] = posterior(tasks.kernels[i], xc, yc, xt, float(tasks.noise_std[i])).sample(rng, n_samples)
    return out


def gp_optimum_scores(tasks: GPTasks) -> Scores:
    """Exact scores of the true GP posterior: joint, Gaussian marginal NLL, closed-form CRPS."""
    ll, nll, crps = (np.empty(len(tasks)) for _ in range(3))
    for i in range(len(tasks)):
        xc, yc, xt, yt = tasks.task(i)
        post = posterior(tasks.kernels[i], xc, yc, xt, float(tasks.noise_std[i]))
        sd = np.sqrt(np.diag(post.cov))
        ll[i] = post.log_prob(yt) / len(yt)
        nll[i] = -stats.norm.logpdf(yt, post.mean, sd).mean()
        crps[i] = sr.crps_normal(yt, post.mean, sd).mean()
    return Scores(ll, nll, crps)


def ndp_exact_scores(model: TrainedNDP, tasks: GPTasks, cfg: LikelihoodConfig, marginals: bool = True,
                     conditioning: str = SamplerConfig.conditioning) -> Scores:
    """The NDP's exact conditional by the probability-flow ODE — the one the sampler's
    ``conditioning`` draws from: joint and (optionally) marginal NLL; no CRPS. With context
    tokens each marginal is a one-row ODE solve, a small part of the joint's cost."""
    args = (model, tasks.x_ctx, tasks.y_ctx, tasks.x_tgt, tasks.y_tgt, tasks.ctx_mask, tasks.tgt_mask, cfg, None, conditioning)
    ll = conditional_log_likelihood(*args)
    nll = -np.nanmean(marginal_log_likelihood(*args), axis=1) if marginals else np.full(len(tasks), np.nan)
    return Scores(ll, nll, np.full(len(tasks), np.nan))


@dataclass(frozen=True)
class HyperGrid:
    """Quadrature nodes over the prior's hyper-parameters: kernels[j], noise_std[j], log_weight[j]
    (log prior mass of node j; the weights sum to 1)."""

    kernels: tuple[Kernel, ...]
    noise_std: np.ndarray
    log_weight: np.ndarray


def hyper_grid(prior: PriorConfig, resolution: dict[str, int]) -> HyperGrid:
    """Midpoint grid over every hyper-parameter a kernel uses and the trend's slope sd
    (``slope_std``, where ``prior.trend_fraction`` > 0), ``resolution[name]`` nodes per axis."""

    def axis(name: str) -> np.ndarray:
        lo, hi = getattr(prior, name)
        n = 1 if lo == hi else resolution[name]
        mid = (np.arange(n) + 0.5) / n
        return np.exp(np.log(lo) + mid * np.log(hi / lo)) if name in _LOG_UNIFORM else lo + mid * (hi - lo)

    weights = np.asarray(prior.kernel_weights or [1.0] * len(prior.kernels), dtype=float)
    weights = weights / weights.sum()
    kernels, noise, logw = [], [], []
    # the trend: none (mass 1 − trend_fraction) or a slope sd s on its grid (slope_variance s²)
    slopes = [(0.0, 1.0 - prior.trend_fraction)] if prior.trend_fraction < 1 else []
    if prior.trend_fraction > 0:
        s_nodes = axis("slope_std")
        slopes += [(float(s) ** 2, prior.trend_fraction / len(s_nodes)) for s in s_nodes]
    for name, w in zip(prior.kernels, weights):
        names = _USES[name] + ("variance", "noise_std")
        nodes = list(itertools.product(*(axis(n) for n in names)))
        for values, (slope_variance, mass) in itertools.product(nodes, slopes):
            hp = dict(zip(names, values))
            kernels.append(Kernel.from_record(name, hp | {"slope_variance": slope_variance}))
            noise.append(float(hp["noise_std"]))
            logw.append(np.log(w * mass / len(nodes)))
    return HyperGrid(tuple(kernels), np.asarray(noise), np.asarray(logw))


def _log_evidences(grid: HyperGrid, x: np.ndarray, y: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """``log p(y | x, θ_j)`` and ``log p(y[:n_ctx] | x[:n_ctx], θ_j)`` for every node (J,) each.

    One batched Cholesky of the joint covariance serves both: the leading n_ctx × n_ctx block of
    its factor is the factor of the context covariance, and forward substitution is causal.
    """
    n = len(y)
    cov = covariances(grid.kernels, x, x) + (grid.noise_std**2 + 1e-9)[:, None, None] * np.eye(n)
    chol = np.linalg.cholesky(cov)
    alpha = np.linalg.solve(chol, np.broadcast_to(y, (len(cov), n))[..., None])[..., 0]
    terms = -0.5 * alpha**2 - np.log(np.diagonal(chol, axis1=1, axis2=2)) - 0.5 * LOG_2PI
    return terms.sum(-1), terms[:, :n_ctx].sum(-1)


def bayes_mixture_samples(tasks: GPTasks, grid: HyperGrid, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` draws (T, S, m_max) of each task's noisy targets from the Bayes-optimal
    predictive under the prior's hyper-parameter mixture (0 at padding): each draw picks a node
    by its posterior weight given the context (prior mass × context evidence), then samples that
    node's GP posterior. What a model trained on the prior should sample when it cannot tell the
    kernel, its length-scale or the noise from a few context points."""
    out = np.zeros((len(tasks), n_samples, tasks.tgt_mask.shape[1]))
    for i in range(len(tasks)):
        xc, yc, xt, _ = tasks.task(i)
        log_w = grid.log_weight + _log_evidences(grid, xc, yc, len(yc))[1]
        nodes = rng.choice(len(log_w), size=n_samples, p=np.exp(log_w - logsumexp(log_w)))
        draws = np.empty((n_samples, len(xt)))
        for j in np.unique(nodes):
            at = nodes == j
            draws[at] = posterior(grid.kernels[j], xc, yc, xt, float(grid.noise_std[j])).sample(rng, int(at.sum()))
        out[i][:, tasks.tgt_mask[i]] = draws
    return out


def bayes_mixture_scores(tasks: GPTasks, grid: HyperGrid) -> Scores:
    """Per-task per-target log p(y_tgt | ctx) under the prior's hyper-parameter mixture (joint only)."""
    ll = np.empty(len(tasks))
    for i in range(len(tasks)):
        xc, yc, xt, yt = tasks.task(i)
        joint, ctx = _log_evidences(grid, np.concatenate([xc, xt]), np.concatenate([yc, yt]), len(yc))
        ll[i] = (logsumexp(grid.log_weight + joint) - logsumexp(grid.log_weight + ctx)) / len(yt)
    nan = np.full(len(tasks), np.nan)
    return Scores(ll, nan, nan)


def prior_config_of(shard_path: str) -> PriorConfig:
    """The prior's generating config stored in a shard's ``attrs["config"]``."""
    return PriorConfig.from_config(json.loads(xr.open_zarr(shard_path).attrs["config"])["prior"])


COLUMNS = ["kernel", "method", "loglik", "stderr", "n_tasks", "gap", "gap_stderr", "nll", "nll_stderr",
           "crps", "crps_stderr", "n_samples"]


def _mean_se(a: np.ndarray) -> tuple[float, float]:
    """Mean over tasks and its standard error (NaN for fewer than two tasks or a NaN score)."""
    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.nan
    return float(a.mean()), float(se)


def summarise(kernel: str, method: str, scores: Scores, reference: Scores, n_samples: int | None) -> dict:
    """One table row: means over tasks with standard errors, and the paired gap
    ``reference − row`` of the joint log-likelihood (reference: ``gp_optimum`` on the same tasks)."""
    ll, ll_se = _mean_se(scores.loglik)
    gap, gap_se = _mean_se(reference.loglik - scores.loglik)
    nll, nll_se = _mean_se(scores.nll)
    crps, crps_se = _mean_se(scores.crps)
    return {"kernel": kernel, "method": method, "loglik": ll, "stderr": ll_se, "n_tasks": len(scores.loglik),
            "gap": gap, "gap_stderr": gap_se, "nll": nll, "nll_stderr": nll_se, "crps": crps, "crps_stderr": crps_se,
            "n_samples": n_samples}


@dataclass(frozen=True)
class OracleConfig(Section):
    """``config["bench"]["gp_oracle"]``.

    n_tasks tasks per fixed kernel and n_mixture_tasks held-out prior draws for the ``mixture``
    kernel (0 = skip it), every row on the same tasks; n_samples: samples per task for the
    sample-based rows; likelihood: the ODE likelihood of ``ndp_exact`` (its t0 is the
    sampler's, set by :func:`run_gp_oracle`); bayes_grid: quadrature nodes per hyper-parameter
    axis (None: :meth:`grid_resolution`'s).
    """

    KEY: ClassVar[str] = "bench.gp_oracle"
    n_tasks: int = 6
    n_samples: int = 128
    n_mixture_tasks: int = 6
    n_ctx: tuple[int, int] = (1, 9)
    n_tgt: int = 50
    noise_std: float = 0.05
    x_range: tuple[float, float] = (-2.0, 2.0)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    bayes_grid: dict | None = None

    def grid_resolution(self) -> dict[str, int]:
        return {"lengthscale": 24, "period": 96, "periodic_lengthscale": 8, "variance": 4, "noise_std": 3, "slope_std": 4,
                **(self.bayes_grid or {})}


# The settings only one kind of kernel reads: the fixed kernels draw their own GP tasks, the
# mixture reads held-out prior draws (every kernel integrates over the prior's hyper-parameters).
_FIXED_ONLY = ("n_tasks", "noise_std", "x_range")
_MIXTURE_ONLY = ("n_mixture_tasks",)


def kernel_settings(section: Mapping[str, Any], kernel: str) -> dict[str, Any]:
    """The part of ``config["bench"]["gp_oracle"]`` that kernel ``kernel``'s rows depend on (the
    workflow keys each kernel's job on it, so changing the mixture's settings does not rerun
    the fixed kernels, nor the other way round). :meth:`OracleConfig.from_config` fills the
    left-out settings with defaults, which that kernel does not read."""
    drop = _FIXED_ONLY if kernel == "mixture" else _MIXTURE_ONLY
    return {key: value for key, value in section.items() if key not in drop}


def oracle_kernels(cfg: OracleConfig) -> list[str]:
    """The benchmark's kernels in table order: the fixed ones, then ``mixture`` unless
    ``cfg.n_mixture_tasks`` is 0."""
    return [*BENCH_KERNELS, *(["mixture"] if cfg.n_mixture_tasks else [])]


@dataclass(frozen=True)
class KernelRun:
    """One kernel's benchmark: its tasks, per-task scores of every row (method → Scores, in
    table order) and the seconds the NDP's rows took (``ndp_exact``, ``ndp``)."""

    tasks: GPTasks
    scores: dict[str, Scores]
    seconds: dict[str, float]


# Rows scored from S samples (the table's n_samples column).
SAMPLE_ROWS = ("ndp", "gp_samples_gaussfit", "bayes_samples_gaussfit")


def _check_kernels(order: Sequence[str], kernels: Sequence[str], prior_shards: Sequence[str]) -> None:
    """ValueError for a kernel not in ``order``, or ``mixture`` without held-out prior shards."""
    unknown = [k for k in kernels if k not in order]
    if unknown:
        raise ValueError(f"unknown GP-oracle kernel(s) {unknown}; known with this config: {order}")
    if "mixture" in kernels and not prior_shards:
        raise ValueError("the mixture kernel needs held-out prior shards (prior_shards)")


def run_kernel(
    model: TrainedNDP,
    cfg: OracleConfig,
    sampler: SamplerConfig,
    name: str,
    prior_shards: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> KernelRun:
    """Every row of kernel ``name`` on its tasks (see :func:`run_gp_oracle`): tasks and samples
    from the kernel's own seeded streams, so the result does not depend on which other kernels
    run. Raises ValueError for an unknown kernel, or ``mixture`` without shards."""
    order = oracle_kernels(cfg)
    _check_kernels(order, [name], prior_shards)
    i = order.index(name)
    clock = time.perf_counter()
    if name == "mixture":
        tasks = prior_tasks(prior_shards, cfg.n_mixture_tasks, np.random.default_rng([seed, i]), n_ctx=cfg.n_ctx, n_tgt=cfg.n_tgt)
    else:
        tasks = make_gp_tasks(BENCH_KERNELS[name], cfg.n_tasks, np.random.default_rng([seed, i]), x_range=cfg.x_range,
                              n_ctx=cfg.n_ctx, n_tgt=cfg.n_tgt, noise_std=cfg.noise_std)
    lik = replace(cfg.likelihood, t0=sampler.t0)
    scores = {"gp_optimum": gp_optimum_scores(tasks),
              "ndp_exact": ndp_exact_scores(model, tasks, lik, lik.marginals, sampler.conditioning)}
    seconds = {"ndp_exact": time.perf_counter() - clock}
    samples = sample(
        model, tasks.x_ctx, tasks.y_ctx, tasks.x_tgt, cfg.n_samples, ctx_mask=tasks.ctx_mask, tgt_mask=tasks.tgt_mask,
        solver=sampler.solver, **{**sampler.path_kwargs(), "noise_std": tasks.noise_std},
        generator=torch.Generator().manual_seed(seed * 1000 + i),
        batch_size=sampler.batch_size, progress=progress,
    )
    seconds["ndp"] = time.perf_counter() - clock - seconds["ndp_exact"]
    scores["ndp"] = sample_scores(tasks, samples.y_tgt)
    scores["gp_samples_gaussfit"] = sample_scores(tasks, gp_posterior_samples(tasks, cfg.n_samples, np.random.default_rng([seed, i, 1])))
    if prior_shards:
        grid = hyper_grid(prior_config_of(prior_shards[0]), cfg.grid_resolution())
        bayes = bayes_mixture_samples(tasks, grid, cfg.n_samples, np.random.default_rng([seed, i, 2]))
        scores["bayes_samples_gaussfit"] = sample_scores(tasks, bayes)
        if name == "mixture":
            scores["bayes_mixture"] = bayes_mixture_scores(tasks, grid)
    return KernelRun(tasks, scores, seconds)


def run_gp_oracle(
    model: TrainedNDP,
    cfg: OracleConfig,
    sampler: SamplerConfig,
    prior_shards: Sequence[str] = (),
    seed: int = 0,
    kernels: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The benchmark table (columns :data:`COLUMNS`), per-target nats, one row per (kernel, method).

    Kernels ``se, matern52, weakly_periodic`` and ``mixture`` (held-out prior draws from
    ``prior_shards``, a split the NDP was not trained on, with each function's true kernel as
    ``gp_optimum`` and the extra row ``bayes_mixture``; skipped without shards); methods
    ``gp_optimum, ndp_exact, ndp, gp_samples_gaussfit`` and, with ``prior_shards`` (whose stored
    config is the prior the NDP learned), ``bayes_samples_gaussfit``: all on the same tasks.
    ``kernels`` (default: all) selects some of them: every kernel draws its tasks and samples
    from its own seeded stream (:func:`run_kernel`), so the rows of a kernel are the same
    whichever others run, and per-kernel tables concatenated in :func:`oracle_kernels` order are
    the whole table. ``log`` receives the wall time of each kernel. Raises ValueError for an
    unknown kernel, or ``mixture`` without shards or tasks.
    """
    order = oracle_kernels(cfg)
    if kernels is None:
        kernels = [k for k in order if k != "mixture" or prior_shards]
    _check_kernels(order, kernels, prior_shards)  # all of them before any kernel's work
    rows = []
    for name in (k for k in order if k in kernels):
        clock = time.perf_counter()
        run = run_kernel(model, cfg, sampler, name, prior_shards, seed, progress)
        optimum = run.scores["gp_optimum"]
        rows += [summarise(name, method, scores, optimum, cfg.n_samples if method in SAMPLE_ROWS else None)
                 for method, scores in run.scores.items()]
        if log:
            lik = cfg.likelihood
            log(f"{name}: {len(run.tasks)} tasks, ndp_exact {run.seconds['ndp_exact']:.1f} s ({lik.divergence}, {lik.steps} RK4 steps, "
                f"marginals={lik.marginals}), ndp sampling {run.seconds['ndp']:.1f} s, total {time.perf_counter() - clock:.1f} s")
    return pd.DataFrame(rows, columns=COLUMNS)


def read_tables(csv_paths: Sequence[str]) -> pd.DataFrame:
    """Per-kernel tables (CSVs of :func:`write_table`) as one, in the given order. Raises
    ValueError naming a file whose columns are not :data:`COLUMNS` or that repeats a kernel."""
    tables, seen = [], set()
    for path in csv_paths:
        table = pd.read_csv(path)
        if list(table.columns) != COLUMNS:
            raise ValueError(f"{path}: columns {list(table.columns)}, expected {COLUMNS}")
        if seen & set(table.kernel):
            raise ValueError(f"{path}: kernel(s) {sorted(seen & set(table.kernel))} already read from another table")
        seen |= set(table.kernel)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def format_table(table: pd.DataFrame) -> str:
    """kernel × method rows with joint loglik, paired gap to gp_optimum, marginal NLL and CRPS, as aligned text."""
    def pm(mean: float, se: float) -> str:
        return "—" if np.isnan(mean) else f"{mean:.3f} ± {se:.3f}" if np.isfinite(se) else f"{mean:.3f}"

    lines = [f"{'kernel':<16}{'method':<22}{'loglik':>18}{'gap to optimum':>18}{'marginal nll':>18}{'crps':>18}{'tasks':>7}{'S':>6}"]
    for r in table.itertuples():
        s = "" if pd.isna(r.n_samples) else str(int(r.n_samples))
        lines.append(f"{r.kernel:<16}{r.method:<22}{pm(r.loglik, r.stderr):>18}{pm(r.gap, r.gap_stderr):>18}"
                     f"{pm(r.nll, r.nll_stderr):>18}{pm(r.crps, r.crps_stderr):>18}{r.n_tasks:>7}{s:>6}")
    return "\n".join(lines)


def write_table(table: pd.DataFrame, csv_path: str, text_path: str | None = None) -> None:
    """The CSV (columns :data:`COLUMNS`) and the aligned text table, atomically."""
    write_file(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    if text_path:
        write_file(text_path, lambda tmp: tmp.write_text(format_table(table) + "\n"))
