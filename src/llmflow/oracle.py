"""The GP-oracle benchmark: held-out GP regression tasks where the exact answer is known.

Protocol (as reported in the NDP / neural-process literature): 1-D inputs ``x ~ U(−2, 2)``,
context size uniform in 1..9, 50 targets, observation noise variance 0.05², and three kernels
with variance 1 — SE (ℓ = 0.25), Matérn-5/2 (ℓ = 0.25), weakly periodic = SE(ℓ = 0.5) ×
periodic(p = 0.25, ℓ_p = 1) with ``k_per = exp(−2 sin²(π|x − x'|/p)/ℓ_p²)``.

Score: the per-target joint log-likelihood of the noisy targets, ``log p(y_tgt | ctx) / m``
in nats (higher is better), averaged over tasks, with its standard error.

- ``ndp``: a Gaussian fitted to S NDP samples (sample mean, unbiased covariance + 10⁻⁶ I),
  evaluated at the true targets — the estimator the NDP papers report.
- ``gp_optimum``: the exact GP posterior predictive with the true kernel and noise.
- ``gp_samples``: the ``ndp`` estimator applied to as many exact GP posterior samples, on the
  same tasks: the score of a perfect sampler, so ``gp_samples − ndp`` is the model's own gap
  and ``gp_optimum − gp_samples`` the estimator's bias at this sample budget.
- ``bayes_mixture`` (on held-out draws of the training prior, row ``mixture``): the Bayes-optimal
  predictive under the prior's mixture over kernels and hyper-parameters,

      p(y_tgt | y_ctx) = Σ_j w_j p(y_ctx, y_tgt | θ_j) / Σ_j w_j p(y_ctx | θ_j),

  a quadrature over θ = (kernel, ℓ, p, ℓ_p, variance, noise): midpoint grids on each
  hyper-parameter's range (in log space for the log-uniform ones), weights = kernel weight ×
  grid-cell prior mass. Resolution per hyper-parameter comes from config; it must resolve the
  sharp likelihood in the period, so that axis gets the most points.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.special import logsumexp

from llmflow.gp import LOG_2PI, posterior, stable_cholesky
from llmflow.io import write_file
from llmflow.kernels import Kernel
from llmflow.metrics import gaussian_fit_loglik
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
    kernels = tuple(
        Kernel(str(k), lengthscale=float(ls), variance=float(v), period=float(p), periodic_lengthscale=float(pl))
        for k, ls, v, p, pl in zip(*(ds[n].values for n in ("kernel", "lengthscale", "variance", "period", "periodic_lengthscale")))
    )
    return GPTasks(*_split(x, y, counts, n_valid, n_tgt), kernels=kernels, noise_std=ds["noise_std"].values.astype(float))


def ndp_loglik(tasks: GPTasks, y_samples: np.ndarray, jitter: float = 1e-6) -> np.ndarray:
    """Per-task Gaussian-fit per-target log-likelihood of NDP samples (T, S, m) (padded targets ignored)."""
    return np.array([gaussian_fit_loglik(y_samples[i][:, tasks.tgt_mask[i]], tasks.task(i)[3], jitter) for i in range(len(tasks))])


def gp_samples_loglik(tasks: GPTasks, n_samples: int, rng: np.random.Generator, jitter: float = 1e-6) -> np.ndarray:
    """The Gaussian-fit estimator applied to ``n_samples`` exact GP posterior draws per task (T,).

    What a perfect sampler would score with the NDP's sample budget: the estimator is biased low
    when n_samples is not ≫ m (≈ −2 nats/target at S = 64, m = 50; ≈ −0.2 at S = 128).
    """
    out = np.empty(len(tasks))
    for i in range(len(tasks)):
        xc, yc, xt, yt = tasks.task(i)
        post = posterior(tasks.kernels[i], xc, yc, xt, float(tasks.noise_std[i]))
        out[i] = gaussian_fit_loglik(post.sample(rng, n_samples), yt, jitter)
    return out


def gp_optimum_loglik(tasks: GPTasks) -> np.ndarray:
    """Per-task per-target log p(y_tgt | ctx) under the true GP (T,)."""
    out = np.empty(len(tasks))
    for i in range(len(tasks)):
        xc, yc, xt, yt = tasks.task(i)
        out[i] = posterior(tasks.kernels[i], xc, yc, xt, float(tasks.noise_std[i])).log_prob(yt) / len(yt)
    return out


@dataclass(frozen=True)
class HyperGrid:
    """Quadrature nodes over the prior's hyper-parameters: kernels[j], noise_std[j], log_weight[j]
    (log prior mass of node j; the weights sum to 1)."""

    kernels: tuple[Kernel, ...]
    noise_std: np.ndarray
    log_weight: np.ndarray


def hyper_grid(prior: PriorConfig, resolution: dict[str, int]) -> HyperGrid:
    """Midpoint grid over every hyper-parameter a kernel uses, ``resolution[name]`` nodes per axis."""

    def axis(name: str) -> np.ndarray:
        lo, hi = getattr(prior, name)
        n = 1 if lo == hi else resolution[name]
        mid = (np.arange(n) + 0.5) / n
        return np.exp(np.log(lo) + mid * np.log(hi / lo)) if name in _LOG_UNIFORM else lo + mid * (hi - lo)

    weights = np.asarray(prior.kernel_weights or [1.0] * len(prior.kernels), dtype=float)
    weights = weights / weights.sum()
    kernels, noise, logw = [], [], []
    defaults = Kernel("se")
    for name, w in zip(prior.kernels, weights):
        names = _USES[name] + ("variance", "noise_std")
        nodes = list(itertools.product(*(axis(n) for n in names)))
        for values in nodes:
            hp = dict(zip(names, values))
            kernels.append(Kernel(name, **{k: float(hp.get(k, getattr(defaults, k))) for k in ("lengthscale", "variance", "period", "periodic_lengthscale")}))
            noise.append(float(hp["noise_std"]))
            logw.append(np.log(w / len(nodes)))
    return HyperGrid(tuple(kernels), np.asarray(noise), np.asarray(logw))


def _log_evidences(grid: HyperGrid, x: np.ndarray, y: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """``log p(y | x, θ_j)`` and ``log p(y[:n_ctx] | x[:n_ctx], θ_j)`` for every node (J,) each.

    One batched Cholesky of the joint covariance serves both: the leading n_ctx × n_ctx block of
    its factor is the factor of the context covariance, and forward substitution is causal.
    """
    n = len(y)
    cov = np.stack([k(x, x) for k in grid.kernels]) + (grid.noise_std**2 + 1e-9)[:, None, None] * np.eye(n)
    chol = np.linalg.cholesky(cov)
    alpha = np.linalg.solve(chol, np.broadcast_to(y, (len(cov), n))[..., None])[..., 0]
    terms = -0.5 * alpha**2 - np.log(np.diagonal(chol, axis1=1, axis2=2)) - 0.5 * LOG_2PI
    return terms.sum(-1), terms[:, :n_ctx].sum(-1)


def bayes_mixture_loglik(tasks: GPTasks, grid: HyperGrid) -> np.ndarray:
    """Per-task per-target log p(y_tgt | ctx) under the prior's hyper-parameter mixture (T,)."""
    out = np.empty(len(tasks))
    for i in range(len(tasks)):
        xc, yc, xt, yt = tasks.task(i)
        joint, ctx = _log_evidences(grid, np.concatenate([xc, xt]), np.concatenate([yc, yt]), len(yc))
        out[i] = (logsumexp(grid.log_weight + joint) - logsumexp(grid.log_weight + ctx)) / len(yt)
    return out


def prior_config_of(shard_path: str) -> PriorConfig:
    """The prior's generating config stored in a shard's ``attrs["config"]``."""
    return PriorConfig.from_config(json.loads(xr.open_zarr(shard_path).attrs["config"])["prior"])


def summarise(kernel: str, method: str, per_task: np.ndarray) -> dict:
    """One table row: mean per-target log-likelihood and its standard error over tasks."""
    n = len(per_task)
    return {"kernel": kernel, "method": method, "loglik": float(per_task.mean()),
            "stderr": float(per_task.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"), "n_tasks": n}


@dataclass(frozen=True)
class OracleConfig:
    """``config["bench"]["gp_oracle"]``.

    n_tasks × n_samples NDP tasks per kernel; n_oracle_tasks tasks for the cheap exact rows
    (gp_optimum on the fixed kernels); n_mixture_tasks held-out prior draws for the ``mixture``
    row (0 = skip it); bayes_grid: quadrature nodes per hyper-parameter axis.
    """

    n_tasks: int = 32
    n_samples: int = 128
    n_oracle_tasks: int = 4096
    n_mixture_tasks: int = 32
    n_ctx: tuple[int, int] = (1, 9)
    n_tgt: int = 50
    noise_std: float = 0.05
    x_range: tuple[float, float] = (-2.0, 2.0)
    bayes_grid: dict | None = None

    def grid_resolution(self) -> dict[str, int]:
        return {"lengthscale": 24, "period": 96, "periodic_lengthscale": 8, "variance": 4, "noise_std": 3, **(self.bayes_grid or {})}


def run_gp_oracle(
    model: TrainedNDP,
    cfg: OracleConfig,
    sampler: SamplerConfig,
    mixture_shards: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """The benchmark table: rows (kernel, method, loglik, stderr, n_tasks), per-target nats.

    Fixed kernels ``se, matern52, weakly_periodic``: methods ``ndp`` and ``gp_optimum``;
    ``mixture`` (held-out prior draws from ``mixture_shards``): ``ndp``, ``gp_optimum`` (each
    function's true kernel) and ``bayes_mixture``. Every kernel row draws its tasks from its
    own seeded stream, so rows do not depend on each other.
    """
    rows = []
    families: list[tuple[str, GPTasks, GPTasks | None]] = []
    for i, (name, kernel) in enumerate(BENCH_KERNELS.items()):
        rng = np.random.default_rng([seed, i])
        kw = dict(x_range=cfg.x_range, n_ctx=cfg.n_ctx, n_tgt=cfg.n_tgt, noise_std=cfg.noise_std)
        families.append((name, make_gp_tasks(kernel, cfg.n_tasks, rng, **kw), make_gp_tasks(kernel, cfg.n_oracle_tasks, rng, **kw)))
    if cfg.n_mixture_tasks and mixture_shards:
        rng = np.random.default_rng([seed, len(BENCH_KERNELS)])
        families.append(("mixture", prior_tasks(mixture_shards, cfg.n_mixture_tasks, rng, n_ctx=cfg.n_ctx, n_tgt=cfg.n_tgt), None))

    for i, (name, tasks, oracle_tasks) in enumerate(families):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        samples = sample(
            model, tasks.x_ctx, tasks.y_ctx, tasks.x_tgt, cfg.n_samples, ctx_mask=tasks.ctx_mask, tgt_mask=tasks.tgt_mask,
            solver=sampler.solver, steps=sampler.steps, t0=sampler.t0, noise_std=tasks.noise_std,
            jacobian=sampler.jacobian, generator=gen, batch_size=sampler.batch_size, progress=progress,
        )
        rows.append(summarise(name, "ndp", ndp_loglik(tasks, samples.y_tgt)))
        rows.append(summarise(name, "gp_optimum", gp_optimum_loglik(oracle_tasks or tasks)))
        rows.append(summarise(name, "gp_samples", gp_samples_loglik(tasks, cfg.n_samples, np.random.default_rng([seed, i, 1]))))
        if name == "mixture":
            grid = hyper_grid(prior_config_of(mixture_shards[0]), cfg.grid_resolution())
            rows.append(summarise(name, "bayes_mixture", bayes_mixture_loglik(tasks, grid)))
    return pd.DataFrame(rows, columns=["kernel", "method", "loglik", "stderr", "n_tasks"])


def format_table(table: pd.DataFrame) -> str:
    """kernel × (ndp, gp_samples, gp_optimum, gap = gp_optimum − ndp, bayes_mixture) as aligned text."""
    methods = [m for m in ("ndp", "gp_samples", "gp_optimum", "bayes_mixture") if m in set(table.method)]
    cell = {(r.kernel, r.method): f"{r.loglik:.3f} ± {r.stderr:.3f}" for r in table.itertuples()}
    value = {(r.kernel, r.method): r.loglik for r in table.itertuples()}
    header = f"{'kernel':<16}" + "".join(f"{m:>18}" for m in methods[:3]) + f"{'gap':>8}" + "".join(f"{m:>18}" for m in methods[3:])
    lines = [header]
    for k in dict.fromkeys(table.kernel):
        gap = value.get((k, "gp_optimum"), np.nan) - value.get((k, "ndp"), np.nan)
        lines.append(f"{k:<16}" + "".join(f"{cell.get((k, m), ''):>18}" for m in methods[:3]) + f"{gap:8.3f}"
                     + "".join(f"{cell.get((k, m), ''):>18}" for m in methods[3:]))
    return "\n".join(lines)


def write_table(table: pd.DataFrame, csv_path: str, text_path: str | None = None) -> None:
    """The CSV (the contract: kernel, method, loglik, stderr, n_tasks) and the aligned text table, atomically."""
    write_file(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    if text_path:
        write_file(text_path, lambda tmp: tmp.write_text(format_table(table) + "\n"))
