"""The Neural Diffusion Process network: a diffusion transformer (DiT) over the points of a task.

A task is a set of N points ``(x_i, y_i)`` with ``x_i ∈ R^D``. Each point is one token; the
network maps the noisy values ``y_t`` at flow time ``t`` to a velocity per point,

    u_θ(y_t, t | x) ∈ R^N.

Architecture (Peebles & Xie's DiT, with points in place of image patches):

- token embedding: ``h_i = W₂ GeLU(W₁ [x_i, y_i, c_i] + b₁) + b₂`` — low-dimensional raw inputs are
  lifted before any layer norm sees them. With context tokens (``context_tokens``, the default)
  ``c_i`` flags a context point whose ``y_i`` is its clean observed value, while the other
  points carry the noisy ``y_t,i`` (CSDI's conditioning, Tashiro et al. 2021): the network then
  models ``p(y_tgt | context)`` directly and the joint is the case of no flagged point. Without
  context tokens there is no flag and the network models the joint only;
- time embedding: sinusoidal features of ``t`` → MLP → ``c ∈ R^dim``, shared by all tokens;
- ``depth`` blocks, each conditioned on ``c`` by adaLN-zero: ``(β₁, γ₁, α₁, β₂, γ₂, α₂) =
  W SiLU(c)`` with ``W`` zero-initialised, and

      h ← h + α₁ ⊙ Attn(LN(h) ⊙ (1 + γ₁) + β₁)
      h ← h + α₂ ⊙ MLP(LN(h) ⊙ (1 + γ₂) + β₂)

  so every block starts as the identity;
- final layer: ``u_i = W_o (LN(h_i) ⊙ (1 + γ) + β)`` with ``W_o`` and its adaLN zero-initialised,
  so the untrained network outputs u = 0.

Attention runs over the points of a task with no positional encoding, so permuting the points
permutes the output (equivariance). With ``rope`` each query and key is turned by angles
``2π f x`` (RoFormer's rotary embedding, with the input x as the position), so the attention
weights see x through the differences ``x_i − x_j``, as a stationary kernel does; x still enters
the token, for what is not stationary (trends). A validity mask (True = real point) removes padded points
from every attention so tasks of different sizes share a batch; outputs at padded points are
meaningless and must be ignored by the caller.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmflow.config import Section
from llmflow.flow import VelocityNet


@dataclass(frozen=True)
class NDPConfig(Section):
    """Architecture of the DiT (``config["ndp"]``).

    x_dim: input dimension D ≥ 1 (derived: ``prior.x_dim``). dim: token width. depth: number of blocks. heads: attention
    heads (dim must be divisible). mlp_ratio: hidden width of the block MLP / dim.
    time_freqs: number of sinusoidal time features. context_tokens: the network takes flagged,
    clean context points (trained on random context/target splits) instead of modelling only
    the joint. rope: rotary embedding of the inputs in every attention, so that query·key
    products depend on the points' inputs only through ``x_i − x_j`` (needs dim / heads ≥ 2·x_dim).
    """

    KEY: ClassVar[str] = "ndp"
    DERIVED: ClassVar[tuple[str, ...]] = ("x_dim",)
    x_dim: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    time_freqs: int = 64
    context_tokens: bool = True
    rope: bool = True

    def __post_init__(self) -> None:
        if self.x_dim < 1:
            raise ValueError(f"x_dim must be >= 1, got {self.x_dim}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} not divisible by heads {self.heads}")
        if self.rope and self.dim // self.heads < 2 * self.x_dim:
            raise ValueError(f"rope needs a head width (dim / heads = {self.dim // self.heads}) of at least 2·x_dim = {2 * self.x_dim}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_features(t: Tensor, n_freqs: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of flow time ``t`` (B,) in [0, 1] → (B, n_freqs).

    ``[cos(1000 t ω_k), sin(1000 t ω_k)]`` with ``ω_k = max_period^(-k/(n_freqs/2))``; the factor
    1000 spreads t ∈ [0, 1] over the frequency range the DiT embedding was designed for.
    """
    half = n_freqs // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``h ⊙ (1 + scale) + shift`` with per-task (B, dim) modulation broadcast over points."""
    return h * (1.0 + scale[:, None, :]) + shift[:, None, :]


def rotate(q: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (Su et al. 2021, RoFormer): turn each pair ``(q_m, q_{m+h/2})`` of the
    head's h features by the point's angle, so that a query·key product depends on the points'
    inputs only through their difference. q (B, heads, N, h); cos, sin (B, 1, N, h/2)."""
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # bf16 under CUDA autocast
    # q is a strided view of the qkv projection: products on a contiguous copy are the same
    # numbers, 1.1x (a task's samples) to 1.4x (the exact likelihood's copies) faster per forward
    q1, q2 = q.contiguous().chunk(2, dim=-1)
    return torch.cat([q1 * cos - q2 * sin, q1 * sin + q2 * cos], dim=-1)


class PointAttention(nn.Module):
    """Multi-head self-attention over the points of a task; no positional encoding, optionally
    rotary embedding of the inputs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, key_mask: Tensor | None, rotation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """h (B, N, dim); key_mask (B, 1, 1, N) bool, True = attend to that point; rotation: cos
        and sin of the rotary angles, each (B, 1, N, head_dim / 2), or None."""
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rotation is not None:
            q, k = rotate(q, *rotation), rotate(k, *rotation)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero time conditioning."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = PointAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # adaLN-zero: six modulation vectors from the time embedding, all zero at initialisation,
        # so the gates α₁ = α₂ = 0 and the block is the identity map.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: Tensor, c: Tensor, key_mask: Tensor | None, rotation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        h = h + gate1[:, None, :] * self.attn(modulate(self.norm1(h), shift1, scale1), key_mask, rotation)
        h = h + gate2[:, None, :] * self.mlp(modulate(self.norm2(h), shift2, scale2))
        return h


class FinalLayer(nn.Module):
    """adaLN-modulated layer norm then a zero-initialised projection to one velocity per point."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, 1)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm(h), shift, scale)).squeeze(-1)


class NDP(nn.Module):
    """Velocity network ``u_θ(y_t, t | x)`` of the Neural Diffusion Process."""

    def __init__(self, config: NDPConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.embed = nn.Sequential(nn.Linear(config.x_dim + 1 + config.context_tokens, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        if config.rope:
            # Each coordinate turns P = ⌊head_dim / 2 / D⌋ feature pairs at log-spaced frequencies
            # from 1/8 to 8 cycles per unit of x (the prior's x spans 4 units, its shortest period
            # is 0.25); pairs left over stay unturned.
            n_freqs = d // config.heads // 2 // config.x_dim
            self.register_buffer("rope_freqs", torch.logspace(-3, 3, n_freqs, base=2.0), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(config.time_freqs, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(d)

    def forward(self, x: Tensor, y: Tensor, t: Tensor, mask: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """Velocity per point.

        x: (B, N, D) inputs. y: (B, N) values in normalised units: y_t at flowing points, the
        clean observation at context points. t: (B,) or scalar flow time in [0, 1]. mask: (B, N)
        bool, True = valid point; None = all valid. context: (B, N) bool, True = context point
        (only with ``context_tokens``; None = none, the joint).
        Returns (B, N) velocities (normalised units per unit time); entries at padded and
        context points are arbitrary.
        """
        b = y.shape[0]
        t = t.expand(b) if t.dim() == 0 else t
        tokens = [x, y[..., None]]
        if self.config.context_tokens:
            tokens.append(torch.zeros_like(y)[..., None] if context is None else context[..., None].to(y.dtype))
        elif context is not None:
            raise ValueError("this network has no context tokens (NDPConfig.context_tokens=False): condition by guidance")
        h = self.embed(torch.cat(tokens, dim=-1))
        c = self.time_embed(timestep_features(t, self.config.time_freqs).to(h.dtype))
        key_mask = None if mask is None else mask[:, None, None, :]
        rotation = self._rotation(x) if self.config.rope else None
        for block in self.blocks:
            h = block(h, c, key_mask, rotation)
        return self.final(h, c)

    def _rotation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of the rotary angles ``2π f_p x_d``, each (B, 1, N, head_dim / 2)."""
        angle = (2 * math.pi * x[..., None] * self.rope_freqs).flatten(-2)  # (B, N, D·P)
        angle = F.pad(angle, (0, self.config.dim // self.config.heads // 2 - angle.shape[-1]))[:, None]
        return angle.cos(), angle.sin()


@dataclass(frozen=True)
class YNormalisation:
    """Affine map between data units and the model's units: ``y_model = (y − loc) / scale``.

    Learned once from the training prior (``global``: mean and standard deviation of every valid
    training y) or the identity (``none``). Everything that talks to the network — the sampler,
    the context noise (``noise_std / scale``), an expert's bin edges — goes through this map;
    densities in data units pick up the Jacobian ``1 / scale`` per point.
    """

    loc: float = 0.0
    scale: float = 1.0

    def to_model(self, y: Tensor) -> Tensor:
        return (y - self.loc) / self.scale

    def to_data(self, y: Tensor) -> Tensor:
        return y * self.scale + self.loc


@dataclass
class TrainedNDP:
    """A velocity network with the normalisation it was trained under (the content of model.pt).

    ``net`` is usually an :class:`NDP`; any callable ``(x, y_t, t, mask) → u`` in model units
    works (tests use analytic velocity fields).
    """

    net: VelocityNet
    norm: YNormalisation

    @property
    def context_tokens(self) -> bool:
        """Whether the network takes flagged context points (:class:`NDPConfig`); False for
        other velocity fields."""
        config = getattr(self.net, "config", None)
        return bool(getattr(config, "context_tokens", False))

    @property
    def device(self) -> torch.device:
        params = getattr(self.net, "parameters", None)
        first = next(iter(params()), None) if params else None
        return first.device if first is not None else torch.device("cpu")

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "TrainedNDP":
        """Read a model.pt in eval mode on ``device`` (:func:`llmflow.checkpoint.load_model`)."""
        from llmflow.checkpoint import load_model  # checkpoint imports this module

        return load_model(path, device)
