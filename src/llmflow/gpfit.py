"""The fitted-GP baseline (method ``gp``): a GP fitted to each task's context by maximum
marginal likelihood, the baseline a reviewer asks for first.

The fit runs in the task's :class:`llmflow.frame.TaskFrame` (x's span on the prior's
``x_range``, y centred and scaled; GP tasks are already in that frame), so the fixed bounds
below hold for every task. scikit-learn's ``GaussianProcessRegressor`` (zero prior mean in the
frame, i.e. the context mean in data units) with the kernel family

    k(x, x') = a · Matérn-5/2(x, x'; ℓ_1..ℓ_D) + σ² · δ(x, x')

(one length-scale per x dimension, ARD): amplitude ``a`` in ``AMPLITUDE_BOUNDS``, length-scales
in ``LENGTHSCALE_BOUNDS`` (frame x units; the default ``x_range`` spans 4), observation noise
variance ``σ²`` in ``NOISE_BOUNDS`` (frame y units²). The log marginal likelihood is maximised
by L-BFGS-B from the initial values and from ``N_RESTARTS`` starts drawn log-uniformly inside
the bounds by a generator with a fixed seed, so a fit is deterministic. Matérn-5/2 sits between
the prior's smooth SE and its rougher kernels and is the common default (Rasmussen & Williams,
*Gaussian Processes for Machine Learning*, 2006, §4.2 and §5.4).

Tiny contexts: with fewer than ``MIN_FIT_POINTS`` points the marginal likelihood cannot tell
signal from noise (one centred point is fitted best by a vanishing amplitude and noise, an
absurdly sure predictive), so the kernel keeps its initial values: ``a = 1``, ``ℓ = 1``,
``σ = 0.1`` in the frame (``GPFit.optimised`` is False): a predictive about one frame y scale
wide away from the points (the frame's y scale is at least ``sample.y_scale_min``, as the
NDP's). Some larger contexts still drive ``ℓ`` or ``σ`` to a bound (a short noisy series is
fitted as white noise, a few smooth points as noiseless); the bounds keep the predictive finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from llmflow.gp import GaussianPosterior
from llmflow.frame import TaskFrame
from llmflow.tasks import Task, samples_dataset, task_rng

AMPLITUDE_BOUNDS = (1e-4, 1e2)
LENGTHSCALE_BOUNDS = (1e-2, 1e2)
NOISE_BOUNDS = (1e-6, 1e1)
INITIAL = {"amplitude": 1.0, "lengthscale": 1.0, "noise_var": 1e-2}
N_RESTARTS = 4
MIN_FIT_POINTS = 3
RANDOM_STATE = 0


@dataclass(frozen=True)
class GPFit:
    """A fitted GP's predictive at a task's targets, in data units, and its hyper-parameters.

    ``predictive``: N(mean (m,), cov (m, m)) of noisy observations (the fitted noise included);
    ``amplitude`` (frame y units²), ``lengthscale`` (D,) (frame x units), ``noise_std`` (frame y
    units); ``log_marginal_likelihood`` of the context in the frame (nats);
    ``optimised``: False where the context was too small to fit (module docstring).
    """

    predictive: GaussianPosterior
    amplitude: float
    lengthscale: np.ndarray
    noise_std: float
    log_marginal_likelihood: float
    optimised: bool

    def attrs(self) -> dict[str, object]:
        """The hyper-parameters as store attributes (plain floats and lists)."""
        return {"amplitude": self.amplitude, "lengthscale": self.lengthscale.tolist(), "noise_std": self.noise_std,
                "log_marginal_likelihood": self.log_marginal_likelihood, "optimised": int(self.optimised)}


def fit_gp(task: Task, frame: TaskFrame) -> GPFit:
    """Fit the module's kernel to ``task``'s context (n ≥ 1 points: x (n, D), y (n,)) in
    ``frame`` and predict at its targets (m, D). Deterministic. Raises ValueError if the context
    holds a non-finite value."""
    x_ctx, y_ctx = frame.x(task.x_context), frame.y(task.y_context)
    if not (np.isfinite(x_ctx).all() and np.isfinite(y_ctx).all()):
        raise ValueError(f"task {task.name!r}: the GP baseline needs a finite context")
    dim = task.x_context.shape[1]
    kernel = (ConstantKernel(INITIAL["amplitude"], AMPLITUDE_BOUNDS)
              * Matern(np.full(dim, INITIAL["lengthscale"]), LENGTHSCALE_BOUNDS, nu=2.5)
              + WhiteKernel(INITIAL["noise_var"], NOISE_BOUNDS))
    optimised = len(y_ctx) >= MIN_FIT_POINTS
    gpr = GaussianProcessRegressor(kernel, optimizer="fmin_l_bfgs_b" if optimised else None,
                                   n_restarts_optimizer=N_RESTARTS, random_state=RANDOM_STATE)
    gpr.fit(x_ctx, y_ctx)
    fitted = gpr.kernel_
    # The white term is part of the kernel, so the predictive covariance at the targets holds
    # the observation noise: the density of a new noisy y, as the truth is one.
    mean, cov = gpr.predict(frame.x(task.x_target), return_cov=True)
    predictive = GaussianPosterior(frame.y_back(mean), cov * frame.y_scale**2)
    return GPFit(predictive, float(fitted.k1.k1.constant_value), np.atleast_1d(fitted.k1.k2.length_scale).astype(float),
                 float(np.sqrt(fitted.k2.noise_level)), float(gpr.log_marginal_likelihood_value_), optimised)


def gp_dataset(task: Task, fit: GPFit, n_samples: int, seed: int) -> xr.Dataset:
    """The ``gp`` method's store: ``n_samples`` joint draws ``y (sample, target)`` of the
    predictive (data units) like every sample method's, plus its exact ``mean (target)`` and
    ``cov (target, target_)``, and the hyper-parameters as attributes. The draws come from a
    random stream of their own per task and ``seed``."""
    draws = fit.predictive.sample(task_rng(seed, f"{task.name}:gp"), n_samples)
    ds = samples_dataset(task, draws, "gp", **fit.attrs())
    return ds.assign(mean=("target", fit.predictive.mean), cov=(("target", "target_"), fit.predictive.cov))
