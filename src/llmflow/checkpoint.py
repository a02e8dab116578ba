"""Checkpoint I/O of the NDP: the final model.pt and the training checkpoints.

model.pt is ``{format, ndp_config, state_dict, normalisation, **extra}`` (readable with
``weights_only=True``): the EMA network and the y-normalisation it was trained under.
A training checkpoint ``step-XXXXXXXX.pt`` holds what a killed run needs to resume exactly: step,
configuration fingerprint, model, EMA, optimiser, the noise generator's state, the data-loader
position, the curve so far and the running loss window. Every file is written through a
temporary file in the same folder and ``os.replace``, so a reader never sees half of one.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from llmflow.io import write_file
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation

MODEL_FORMAT = "llmflow-ndp-v1"


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through a temp file in the same folder, then ``os.replace``."""
    write_file(path, lambda tmp: torch.save(obj, tmp))


def save_model(model: TrainedNDP, path: str | os.PathLike, **extra: object) -> None:
    """Write model.pt: ``{format, ndp_config, state_dict, normalisation, **extra}``."""
    payload = {
        "format": MODEL_FORMAT,
        "ndp_config": model.net.config.to_dict(),
        "state_dict": model.net.state_dict(),
        "normalisation": asdict(model.norm),
        **extra,
    }
    atomic_torch_save(payload, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedNDP:
    """Read a model.pt written by :func:`save_model`, in eval mode on ``device``."""
    payload = torch.load(path, map_location=device, weights_only=True)
    # A model.pt from before context tokens existed models the joint only; one from before rotary
    # embedding has none.
    legacy = {"context_tokens": False, "rope": False}
    net = NDP(NDPConfig(**{**legacy, **payload["ndp_config"]}))
    net.load_state_dict(payload["state_dict"])
    return TrainedNDP(net.to(device).eval(), YNormalisation(**payload["normalisation"]))


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The training checkpoints in ``folder``, oldest step first."""
    return sorted(Path(folder).glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def read_checkpoint(path: str | os.PathLike, device: str | torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def write_checkpoint(folder: str | os.PathLike, state: dict, keep: int) -> Path:
    """Write ``state`` (with its ``step``) as the newest checkpoint; keep only the ``keep`` newest."""
    path = checkpoint_path(folder, state["step"])
    atomic_torch_save(state, path)
    for stale in list_checkpoints(folder)[:-keep]:
        stale.unlink()
    return path
