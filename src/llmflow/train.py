"""Training the NDP by OT conditional flow matching on the GP prior shards.

One step: draw a batch of prior functions, a random context/target split of each (network with
context tokens: with probability ``empty_context`` no context — the joint — else a uniform
number 1…n−1 of its n valid points, chosen uniformly, or with probability ``forecast_context``
its k leftmost points, so that targets lie beyond the data as in a forecast; without context
tokens the joint only),
noise ``y0 ~ N(0, I)``, a logit-normal ``t``, and minimise the masked velocity MSE of
:func:`llmflow.flow.flow_matching_loss` at the non-context points. AdamW, linear warm-up then
cosine decay to zero, gradient-norm clipping, and an exponential moving average of the
weights (:mod:`llmflow.ema`; the EMA weights are what model.pt holds and what the sampler uses).

y-normalisation convention: ``y_model = (y − loc) / scale`` with ``(loc, scale)`` the mean and
standard deviation of every valid training y (``global``) or ``(0, 1)`` (``none``). x is used
raw. The pair is stored in model.pt and applied by the sampler; the benchmark metrics are
computed after mapping samples back to data units.

Checkpoints (every ``checkpoint_every`` steps; their I/O and model.pt's are in
:mod:`llmflow.checkpoint`) let a killed run resume to exactly the weights of an uninterrupted
run on the same device. A checkpoint from another configuration or other data (a fingerprint
mismatch) is discarded, not resumed. The device is :func:`llmflow.device.choose_device`'s, the
training-curve figure :func:`llmflow.plots.training_curve`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import ClassVar
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor
from torch.nn.utils import clip_grad_norm_
from tqdm.auto import tqdm

from llmflow.checkpoint import list_checkpoints, read_checkpoint, save_model, write_checkpoint
from llmflow.config import Section
from llmflow.device import choose_device
from llmflow.ema import ema_decay, update_ema
from llmflow.flow import flow_matching_loss, sample_logit_normal
from llmflow.io import write_file
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation
from llmflow.plots import training_curve


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation settings (``config["train"]``). Steps count optimiser updates. seed None:
    the run's top-level seed (:func:`train_config_from`; 0 where none is given); threads: the
    train rule's CPU threads (the workflow's, not the optimiser's)."""

    KEY: ClassVar[str] = "train"

    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_logit_mean: float = 0.0
    t_logit_std: float = 1.0
    y_normalisation: str = "global"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    val_every: int = 500
    val_functions: int = 256
    compile: bool = False
    seed: int | None = None
    threads: int = 1
    empty_context: float = 0.1
    forecast_context: float = 0.15

    def __post_init__(self) -> None:
        if self.y_normalisation not in ("global", "none"):
            raise ValueError(f"y_normalisation must be 'global' or 'none', got {self.y_normalisation!r}")
        if not 0.0 <= self.empty_context <= 1.0:
            raise ValueError(f"empty_context must lie in [0, 1], got {self.empty_context}")
        if not 0.0 <= self.forecast_context <= 1.0:
            raise ValueError(f"forecast_context must lie in [0, 1], got {self.forecast_context}")


def context_split(mask: Tensor, empty_context: float, generator: torch.Generator,
                  x: Tensor | None = None, forecast: float = 0.0) -> Tensor:
    """Random context points (B, N) bool of each row's valid points ``mask`` (B, N).

    A row is given no context with probability ``empty_context``; otherwise a count k uniform
    on 1…n−1 (n its valid points; none when n < 2) and k of its valid points uniformly at random,
    or, with probability ``forecast`` (``x`` (B, N, D) given), its k points of smallest first
    coordinate: the targets then lie beyond the context, as in a forecast.
    """
    dev = mask.device
    b, _ = mask.shape
    n = mask.sum(-1)
    u = torch.rand(b, generator=generator, device=dev)
    k = torch.floor(torch.rand(b, generator=generator, device=dev) * (n - 1).clamp(min=0)).long() + 1
    k = torch.where((u < empty_context) | (n < 2), torch.zeros_like(k), k)
    # rank of each valid point in a random order (by x in forecast rows); invalid points rank last
    keys = torch.rand(mask.shape, generator=generator, device=dev)
    if forecast > 0:  # no extra draws otherwise: the splits stay as they were
        ahead = torch.rand(b, generator=generator, device=dev) < forecast
        x0 = x[..., 0].to(keys.dtype)
        lo = x0.amin(-1, keepdim=True)
        span = (x0.amax(-1, keepdim=True) - lo).clamp(min=1e-12)
        keys = torch.where(ahead[:, None], (x0 - lo) / span, keys)
    keys = keys.masked_fill(~mask, 2.0)
    rank = keys.argsort(-1).argsort(-1)
    return mask & (rank < k[:, None])


@dataclass(frozen=True)
class PriorData:
    """All prior functions of a split in memory, padded to a common number of points.

    x (F, N, D) float32, y (F, N) float32, mask (F, N) bool (True = valid point).
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    def fingerprint(self) -> str:
        """Short hash of the data, so a checkpoint is never resumed on other data."""
        h = hashlib.sha256()
        for a in (self.x, self.y, self.mask):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def load_prior_shards(paths: Sequence[str | os.PathLike]) -> PriorData:
    """Read ``x, y, mask`` from prior zarr shards (``xr.open_zarr``) and stack them."""
    parts = []
    for p in paths:
        ds = xr.open_zarr(p)
        parts.append((ds["x"].values.astype(np.float32), ds["y"].values.astype(np.float32), ds["mask"].values.astype(bool)))
    n = max(p[1].shape[1] for p in parts)

    def pad(a: np.ndarray, fill: float | bool) -> np.ndarray:
        width = [(0, 0)] * a.ndim
        width[1] = (0, n - a.shape[1])
        return np.pad(a, width, constant_values=fill)

    return PriorData(
        x=np.concatenate([pad(x, 0.0) for x, _, _ in parts]),
        y=np.concatenate([pad(np.where(m, y, 0.0), 0.0) for _, y, m in parts]),
        mask=np.concatenate([pad(m, False) for _, _, m in parts]),
    )


def fit_normalisation(data: PriorData, kind: str) -> YNormalisation:
    """``global``: mean and std of all valid y; ``none``: identity."""
    if kind == "none":
        return YNormalisation()
    y = data.y[data.mask].astype(np.float64)
    return YNormalisation(loc=float(y.mean()), scale=float(y.std()))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class BatchOrder:
    """Epoch-wise random permutations of the functions; the position (epoch, cursor) is the state.

    The permutation of epoch e is drawn from ``default_rng([seed, e])``, so the position alone
    restores the loader exactly.
    """

    def __init__(self, n_functions: int, batch_size: int, seed: int, epoch: int = 0, cursor: int = 0) -> None:
        self.n, self.batch_size, self.seed = n_functions, batch_size, seed
        self.epoch, self.cursor = epoch, cursor
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        """Indices of the next batch; wraps into the next epoch (batches never straddle two)."""
        if self.cursor + self.batch_size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}


CURVE_COLUMNS = ["step", "loss", "val_loss", "lr", "steps_per_s", "wall_s"]


def _validation_loss(data: PriorData, norm: YNormalisation, cfg: TrainConfig, dev: torch.device, contexts: bool) -> Callable[[NDP], float]:
    """A fixed held-out batch (first functions, seeded noise, times and context splits when
    ``contexts``) → loss of a network on it."""
    n = min(cfg.val_functions, len(data.y))
    x = torch.from_numpy(data.x[:n]).to(dev)
    mask = torch.from_numpy(data.mask[:n]).to(dev)
    y1 = torch.from_numpy(np.where(data.mask[:n], (data.y[:n] - norm.loc) / norm.scale, 0.0).astype(np.float32)).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    t = sample_logit_normal(n, cfg.t_logit_mean, cfg.t_logit_std, gen).to(dev)
    y0 = torch.randn(y1.shape, generator=gen).to(dev)
    context = context_split(mask.cpu(), cfg.empty_context, gen, x.cpu(), cfg.forecast_context).to(dev) if contexts else None

    def loss(net: NDP) -> float:
        with torch.no_grad():
            return float(flow_matching_loss(net, x, y1, mask, t, y0, context))

    return loss


@dataclass
class TrainResult:
    """model: the EMA network with its normalisation. curve: one row per ``log_every`` steps
    (step, loss = mean training loss over those steps, val_loss = EMA loss on held-out functions
    every ``val_every`` steps (NaN otherwise), lr, steps_per_s, wall_s).
    resumed_from: the checkpoint step a run started from (None = fresh). seconds: this run's wall time."""

    model: TrainedNDP
    curve: pd.DataFrame
    resumed_from: int | None
    seconds: float


def train(
    data: PriorData,
    model_config: NDPConfig,
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    val_data: PriorData | None = None,
) -> TrainResult:
    """Train (or resume) an NDP on ``data``; see the module docstring for the recipe.

    With ``val_data``, every ``val_every`` steps the EMA network's loss on its first
    ``val_functions`` functions (fixed noise and times) goes into the curve's ``val_loss``: a
    training loss far below it means the network memorises the finite prior (more functions
    are needed), which a flow-matching loss alone does not show.
    """
    cfg = cfg if cfg.seed is not None else replace(cfg, seed=0)
    dev = choose_device(device)
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    norm = fit_normalisation(data, cfg.y_normalisation)
    fingerprint = hashlib.sha256(
        json.dumps([model_config.to_dict(), {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint_every", "keep_checkpoints", "compile", "threads")}, data.fingerprint()], sort_keys=True).encode()
    ).hexdigest()[:16]

    torch.manual_seed(cfg.seed)  # the initial weights
    net = NDP(model_config).to(dev)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    order = BatchOrder(len(data.y), min(cfg.batch_size, len(data.y)), cfg.seed)
    rows: list[dict] = []
    start, resumed_from = 0, None
    window_loss, window_n = 0.0, 0  # running sum and count of losses since the last curve row

    for old in list_checkpoints(folder):
        ckpt = read_checkpoint(old, dev)
        if ckpt["fingerprint"] != fingerprint:
            tqdm.write(f"discarding checkpoint {old} from another configuration or other data")
            old.unlink()
    if existing := list_checkpoints(folder):
        ckpt = read_checkpoint(existing[-1], dev)
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"].cpu())
        order = BatchOrder(order.n, order.batch_size, cfg.seed, **ckpt["loader"])
        rows, start = ckpt["curve"], ckpt["step"]
        window_loss, window_n = ckpt["window"]
        resumed_from = start

    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(np.where(data.mask, (data.y - norm.loc) / norm.scale, 0.0).astype(np.float32))
    m_all = torch.from_numpy(data.mask)
    fwd = torch.compile(net) if cfg.compile and dev.type == "cuda" else net
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    contexts = model_config.context_tokens
    val_loss = _validation_loss(val_data, norm, cfg, dev, contexts) if val_data is not None else None

    t_start = time.perf_counter()
    window_t = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc="train NDP", unit="step", disable=not progress, dynamic_ncols=True)
    net.train()
    for step in range(start, cfg.steps):
        idx = torch.from_numpy(order.next())
        x, y1, mask = x_all[idx].to(dev), y_all[idx].to(dev), m_all[idx].to(dev)
        t = sample_logit_normal(len(idx), cfg.t_logit_mean, cfg.t_logit_std, gen, dev)
        y0 = torch.randn(y1.shape, generator=gen, device=dev)
        context = context_split(mask, cfg.empty_context, gen, x, cfg.forecast_context) if contexts else None
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        with autocast:
            loss = flow_matching_loss(fwd, x, y1, mask, t, y0, context)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        update_ema(ema, net, ema_decay(step, cfg.ema_decay))

        window_loss = window_loss + loss.detach().float()  # no host sync per step on CUDA
        window_n += 1
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            rows.append({"step": done, "loss": float(window_loss) / window_n, "lr": learning_rate(step, cfg),
                         "steps_per_s": window_n / (now - window_t), "wall_s": now - t_start,
                         "val_loss": val_loss(ema) if val_loss and (done % cfg.val_every == 0 or done == cfg.steps) else float("nan")})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", steps_s=f"{rows[-1]['steps_per_s']:.1f}")
            window_loss, window_n, window_t = 0.0, 0, now
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            write_checkpoint(
                folder,
                {"step": done, "fingerprint": fingerprint, "model": net.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "generator": gen.get_state(), "loader": order.state(), "curve": rows, "window": (float(window_loss), window_n)},
                keep=cfg.keep_checkpoints,
            )
    bar.close()
    return TrainResult(TrainedNDP(ema.eval(), norm), pd.DataFrame(rows, columns=CURVE_COLUMNS),
                       resumed_from, time.perf_counter() - t_start)


def run_training(
    shard_paths: Sequence[str | os.PathLike],
    model_config: NDPConfig,
    cfg: TrainConfig,
    model_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    curve_csv: str | os.PathLike,
    curve_png: str | os.PathLike,
    device: str = "auto",
    progress: bool = True,
    val_shard_paths: Sequence[str | os.PathLike] = (),
) -> TrainResult:
    """The ``train`` stage: load shards, train/resume, write model.pt, the curve CSV and PNG."""
    val = load_prior_shards(val_shard_paths) if val_shard_paths else None
    result = train(load_prior_shards(shard_paths), model_config, cfg, checkpoint_dir, device, progress, val)
    write_file(curve_csv, lambda tmp: result.curve.to_csv(tmp, index=False))
    training_curve(result.curve, curve_png)
    save_model(result.model, model_path, train=asdict(cfg), steps=cfg.steps)
    return result


def train_config_from(section: dict, seed: int) -> TrainConfig:
    """``config["train"]`` → TrainConfig; ``seed: null`` takes the top-level seed."""
    cfg = TrainConfig.from_config(section)
    return cfg if cfg.seed is not None else replace(cfg, seed=seed)
