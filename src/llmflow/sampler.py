"""Sampling the NDP: ODE integration of the (guided) velocity from t0 > 0 to 1.

Two ways to condition on the context (``conditioning``):

- ``tokens`` (networks with context tokens, :class:`llmflow.ndp.NDPConfig`): the context points
  enter the network as clean, flagged inputs and stay fixed; only the targets flow, so the ODE
  carries noise to the model's own conditional ``p(y_tgt | context)`` (CSDI-style). Its noise
  model is the training prior's; ``noise_std`` is not used.
- ``guidance`` (the paper's; any network): all points of a task — context and targets — are one
  set ``y ∈ R^{n+m}`` that flows from noise to data, and noisy context observations
  ``z = y1[c] + ε``, ``ε ~ N(0, s_n² I)``, guide it as in ΠGDM: with
  ``p(y1 | y_t) ≈ N(ŷ, r_t² I)`` (see :mod:`llmflow.flow`),

      ∇_{y_t} log p(z | y_t) ≈ g_ctx = Jᵀ v_ctx,   v_ctx = 1_c ⊙ (z − ŷ) / (s_n² + r_t²).

``auto`` is ``tokens`` where the network has them, else ``guidance``. ``J = ∂ŷ/∂y_t`` is either
exact (one vector-Jacobian product through the network per velocity evaluation,
``jacobian="exact"``) or ``J ≈ c_t I`` (``jacobian="free"``, no backward pass). The LLM expert
adds its measurement gradient at the targets through the same Jacobian in both modes,

    v = v_ctx + 1_{w>0} ⊙ ∂/∂ŷ log q̃_{r_t}(ŷ_tgt),
    u_guided = u + ((1 − t) / t) · Jᵀ v,

(``v_ctx = 0`` with tokens), which is the score-to-velocity map ``u = (y + (1 − t) s)/t``
applied to the corrected score. The expert enters as a :class:`llmflow.poe.ExpertTerm`: its
score at ``r_t = √posterior_var(t)`` (the sampler owns t and r_t), ``q̃_{r_t} = q^w / Z ∗
N(0, σ² + r_t²)`` with each target's weight w (λ, fade, share) folded into its density as a
power (:mod:`llmflow.poe`). With ``jacobian="free"`` and w = 1 this is exactly the paper's
``g_exp,i = J_ii · d/dy log q̃(ŷ_i)`` with ``J_ii = c_t``; with ``"exact"`` the same gradient is
pulled back through the full Jacobian. Both treat p(y1 | y_t) as isotropic, so the product is
exact for targets the network draws independently and approximate for dependent ones
(four targets of correlation 0.98, q = N(2, 0.5), λ = 1: product variance 0.125, free 0.18,
exact 0.045).

Solvers on the grid ``t0 = τ_0 < … < τ_K = 1`` (uniform or sine, :func:`time_grid`): Euler (K
evaluations) and Heun (2K − 1: the last step is an Euler step, because guidance is singular at t = 1 when s_n = 0).
The start ``y_{t0} ~ N(0, (σ_{t0}² + α_{t0}²) I)`` is the path's marginal for unit-variance data.

Units: inputs and outputs are in data units; internally everything is in the model's
normalised units (``y_model = (y − loc)/scale``, noise std ``s_n = noise_std / scale``), and the
extra score is called with model-unit ŷ and must return a gradient in model units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from llmflow.config import Section
from llmflow.flow import denoised, jacobian_scale, posterior_var
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm

SOLVERS = ("euler", "heun")
JACOBIANS = ("exact", "free")
CONDITIONINGS = ("auto", "tokens", "guidance")
SPACINGS = ("uniform", "sine")


def time_grid(steps: int, t0: float, spacing: str) -> np.ndarray:
    """The ODE's ``steps + 1`` times from t0 to 1: ``uniform``, or ``sine``
    (``t_k = t0 + (1 − t0) sin(π k / 2K)``), dense near t = 1 where data with a small noise floor
    make the velocity change on the scale ``1 − t ≈`` the noise std."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be in {SPACINGS}, got {spacing!r}")
    if spacing == "uniform":
        return np.linspace(t0, 1.0, steps + 1)
    return t0 + (1.0 - t0) * np.sin(0.5 * np.pi * np.arange(steps + 1) / steps)


def uses_tokens(model: TrainedNDP, conditioning: str) -> bool:
    """Whether ``conditioning`` (auto | tokens | guidance) gives the context to ``model`` as
    tokens; ValueError for an unknown value or tokens on a network without them."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be in {CONDITIONINGS}, got {conditioning!r}")
    if conditioning == "tokens" and not model.context_tokens:
        raise ValueError("sampler.conditioning tokens needs a network trained with context tokens "
                         "(ndp.context_tokens: true); this one models the joint only: use guidance")
    return conditioning == "tokens" or (conditioning == "auto" and model.context_tokens)


@dataclass(frozen=True)
class SMCConfig(Section):
    """``config["sampler"]["smc"]``: see :func:`llmflow.smc.sample_smc`."""

    KEY: ClassVar[str] = "sampler.smc"
    churn: float = 1.0
    ess_threshold: float = 0.5
    r_min: float = 0.01


@dataclass(frozen=True)
class SamplerConfig(Section):
    """``config["sampler"]``: conditioning (auto | tokens | guidance), solver (euler | heun),
    steps, spacing (uniform | sine, :func:`time_grid`), t0, noise_std (context observation
    noise std of guidance, data units), jacobian (exact | free), batch_size (task×sample rows
    integrated at once) of :func:`sample`; method (ode | smc) and smc: how LLM-NDP is drawn
    (:func:`llmflow.predict.sample_task`)."""

    KEY: ClassVar[str] = "sampler"
    conditioning: str = "auto"
    solver: str = "euler"
    steps: int = 25
    spacing: str = "uniform"
    t0: float = 1e-3
    noise_std: float = 0.05
    jacobian: str = "free"
    batch_size: int = 4096
    method: str = "ode"
    smc: SMCConfig = field(default_factory=SMCConfig)

    def path_kwargs(self) -> dict:
        """The settings :func:`sample` and :func:`llmflow.smc.sample_smc` share (conditioning,
        steps, spacing, t0, noise_std, jacobian), as keyword arguments."""
        return dict(conditioning=self.conditioning, steps=self.steps, spacing=self.spacing, t0=self.t0,
                    noise_std=self.noise_std, jacobian=self.jacobian)


@dataclass(frozen=True)
class Samples:
    """Joint samples in data units.

    y_tgt (T, S, m): values at the targets; y_ctx (T, S, n): the flow's own values at the context
    points (close to the observations when the noise is small). T tasks, S samples per task;
    entries at padded points are meaningless.
    """

    y_tgt: np.ndarray
    y_ctx: np.ndarray


@dataclass(frozen=True)
class GuidedProblem:
    """One batch of tasks with its context and experts, all points in one set of n + m.

    x (T, n+m, D), mask (T, n+m) valid points, z (T, n+m) context observations in model units
    (0 at targets), is_ctx (T, n+m) float indicator of valid context points, noise_var (T,)
    context noise variance in model units, n the number of context slots, expert the LLM
    expert term in model units with each target's weight folded into its density (None: context
    only; :meth:`llmflow.poe.ExpertTerm.per_target`), expert_on (T, n+m) float 1 where it acts
    (targets of positive weight, never the context), tokens: the
    context is given to the network as fixed, flagged points (else it guides).
    """

    x: Tensor
    mask: Tensor
    z: Tensor
    is_ctx: Tensor
    noise_var: Tensor
    n: int
    expert: ExpertTerm | None
    expert_on: Tensor
    jacobian: str
    tokens: bool

    @classmethod
    def build(
        cls,
        model: TrainedNDP,
        x_ctx: np.ndarray | Tensor | None,
        y_ctx: np.ndarray | Tensor | None,
        x_tgt: np.ndarray | Tensor,
        ctx_mask: np.ndarray | Tensor | None,
        tgt_mask: np.ndarray | Tensor | None,
        noise_std: float | np.ndarray,
        expert: ExpertTerm | None,
        jacobian: str,
        conditioning: str = SamplerConfig.conditioning,
    ) -> GuidedProblem:
        """From the arguments of :func:`sample` (data units) to the model's units."""
        tokens = uses_tokens(model, conditioning)
        dev = model.device
        x_tgt = _as_tensor(x_tgt, dev)
        n_tasks, m = x_tgt.shape[:2]
        if x_ctx is None:
            x_ctx, y_ctx = x_tgt[:, :0], x_tgt[:, :0, 0]
        x_ctx, y_ctx = _as_tensor(x_ctx, dev), _as_tensor(y_ctx, dev)
        n = x_ctx.shape[1]
        ctx_mask = torch.ones(n_tasks, n, dtype=torch.bool, device=dev) if ctx_mask is None else _as_tensor(ctx_mask, dev, torch.bool)
        tgt_mask = torch.ones(n_tasks, m, dtype=torch.bool, device=dev) if tgt_mask is None else _as_tensor(tgt_mask, dev, torch.bool)
        noise = _as_tensor(np.broadcast_to(np.asarray(noise_std, dtype=float), (n_tasks,)), dev)
        on = torch.zeros(n_tasks, m, device=dev)
        if expert is not None:
            expert, on = expert.per_target(x_ctx, ctx_mask, x_tgt, tgt_mask)
        return cls(
            x=torch.cat([x_ctx, x_tgt], dim=1),
            mask=torch.cat([ctx_mask, tgt_mask], dim=1),
            z=torch.cat([model.norm.to_model(y_ctx) * ctx_mask, torch.zeros(n_tasks, m, device=dev)], dim=1),
            is_ctx=torch.cat([ctx_mask, torch.zeros_like(tgt_mask)], dim=1).float(),
            noise_var=(noise / model.norm.scale) ** 2,
            n=n,
            expert=expert,
            expert_on=torch.cat([torch.zeros_like(ctx_mask, dtype=torch.float32), on], dim=1),
            jacobian=jacobian,
            tokens=tokens,
        )

    def flowing(self, task: Tensor) -> Tensor:
        """(B, n+m) float: 1 where a point flows, 0 at the fixed context points of ``tokens``."""
        return 1.0 - self.is_ctx[task] if self.tokens else torch.ones_like(self.is_ctx[task])

    def start(self, task: Tensor, y0: Tensor) -> Tensor:
        """Rows at t0 from start noise y0 (B, n+m): the observations at fixed context points."""
        return torch.where(self.is_ctx[task].bool(), self.z[task], y0) if self.tokens else y0

    def velocity(self, model: TrainedNDP, task: Tensor, y: Tensor, t: float) -> Tensor:
        """The network's velocity u (B, n+m) at rows y of tasks ``task``, no guidance, 0 at fixed points."""
        tt = torch.full((len(y),), t, device=y.device)
        context = (self.is_ctx[task].bool(),) if self.tokens else ()
        return model.net(self.x[task], y, tt, self.mask[task], *context).float() * self.flowing(task)

    def terms(self, model: TrainedNDP, task: Tensor, y: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """(u, ŷ, Δs) for rows y (B, n+m) of tasks ``task`` (B,) at time t, all detached.

        ``Δs = Jᵀ v`` is the guidance added to the score (context correction plus the weighted
        expert's), so the guided velocity is ``u + ((1 − t)/t) Δs``.
        """
        exact = self.jacobian == "exact"
        with torch.enable_grad() if exact else torch.no_grad():
            y_in = y.detach().requires_grad_(exact)
            u = self.velocity(model, task, y_in, t)
            yhat = denoised(y_in, u, t)
            if self.tokens:
                v = torch.zeros_like(y)
            else:
                v = self.is_ctx[task] * (self.z[task] - yhat.detach()) / (self.noise_var[task, None] + posterior_var(t))
            if self.expert is not None:
                g_tgt = self.expert.score(yhat.detach()[:, self.n:], task, math.sqrt(posterior_var(t)))
                v = v + self.expert_on[task] * torch.cat([torch.zeros_like(v[:, : self.n]), g_tgt], dim=1)
            g = torch.autograd.grad(yhat, y_in, grad_outputs=v)[0] if exact else jacobian_scale(t) * v
        return u.detach(), yhat.detach(), (g * self.flowing(task)).detach()


def _as_tensor(a: np.ndarray | Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    return (a if isinstance(a, Tensor) else torch.from_numpy(np.array(a))).to(device=device, dtype=dtype)


def sample(
    model: TrainedNDP,
    x_ctx: np.ndarray | Tensor | None,
    y_ctx: np.ndarray | Tensor | None,
    x_tgt: np.ndarray | Tensor,
    n_samples: int,
    *,
    ctx_mask: np.ndarray | Tensor | None = None,
    tgt_mask: np.ndarray | Tensor | None = None,
    conditioning: str = SamplerConfig.conditioning,
    solver: str = SamplerConfig.solver,
    steps: int = SamplerConfig.steps,
    spacing: str = SamplerConfig.spacing,
    t0: float = SamplerConfig.t0,
    noise_std: float | np.ndarray = SamplerConfig.noise_std,
    jacobian: str = SamplerConfig.jacobian,
    expert: ExpertTerm | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = SamplerConfig.batch_size,
    progress: bool = False,
) -> Samples:
    """Draw ``n_samples`` joint samples per task from the NDP conditioned on its context.

    x_ctx (T, n, D), y_ctx (T, n) context in data units (None or n = 0: unconditional);
    x_tgt (T, m, D). ctx_mask (T, n) / tgt_mask (T, m) bool mark valid points when tasks of
    different sizes are padded to one array (None = all valid). conditioning: auto | tokens |
    guidance (module docstring). noise_std: the context observation noise std of guidance in
    data units, one for all tasks or one per task (T,). generator: a
    CPU ``torch.Generator`` for the start noise (results do not depend on ``batch_size``, the
    number of task×sample rows integrated at once). expert: the LLM expert (model units) with
    its weight λ and fade s (x units of the arguments), see :mod:`llmflow.poe`. Cost:
    ``steps`` (Euler) or ``2·steps − 1`` (Heun) network evaluations per row, each with a
    backward pass when ``jacobian="exact"``.
    """
    if solver not in SOLVERS or jacobian not in JACOBIANS:
        raise ValueError(f"solver must be in {SOLVERS} and jacobian in {JACOBIANS}")
    if not 0.0 < t0 < 1.0:
        raise ValueError(f"t0 must lie in (0, 1), got {t0}")
    dev = model.device
    problem = GuidedProblem.build(model, x_ctx, y_ctx, x_tgt, ctx_mask, tgt_mask, noise_std, expert, jacobian, conditioning)
    n_tasks, n, m = problem.x.shape[0], problem.n, problem.x.shape[1] - problem.n
    guided = (n > 0 and not problem.tokens) or expert is not None

    grid = time_grid(steps, t0, spacing)
    start_std = float(np.sqrt((1.0 - t0) ** 2 + t0**2))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    y_start = start_std * torch.randn(n_tasks * n_samples, n + m, generator=gen)

    def velocity(rows: Tensor, y: Tensor, t: float) -> Tensor:
        task = rows // n_samples
        if not guided:
            with torch.no_grad():
                return problem.velocity(model, task, y, t)
        u, _, g = problem.terms(model, task, y, t)
        return u + (1.0 - t) / t * g

    out = torch.empty(n_tasks * n_samples, n + m)
    chunks = range(0, n_tasks * n_samples, batch_size)
    bar = tqdm(total=len(chunks) * steps, desc=f"sample ({solver})", disable=not progress, dynamic_ncols=True)
    for lo in chunks:
        rows = torch.arange(lo, min(lo + batch_size, n_tasks * n_samples), device=dev)
        y = problem.start(rows // n_samples, y_start[lo : lo + len(rows)].to(dev))
        for k in range(steps):
            t, h = float(grid[k]), float(grid[k + 1] - grid[k])
            v = velocity(rows, y, t)
            if solver == "heun" and k < steps - 1:
                v = 0.5 * (v + velocity(rows, y + h * v, float(grid[k + 1])))
            y = y + h * v
            bar.update(1)
        out[lo : lo + len(rows)] = y.cpu()
    bar.close()
    y_data = model.norm.to_data(out).reshape(n_tasks, n_samples, n + m).double().numpy()
    return Samples(y_tgt=y_data[:, :, n:], y_ctx=y_data[:, :, :n])
