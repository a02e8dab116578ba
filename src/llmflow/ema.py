"""The exponential moving average of the weights, which is what model.pt holds and sampling uses."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, max_decay: float) -> float:
    """Decay at optimiser step ``step`` (0-based): ``min(max_decay, (1 + step) / (10 + step))``.

    The warm-up keeps short runs from being dominated by the initial weights.
    """
    return min(max_decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · net``, parameter by parameter, in place."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p, 1.0 - decay)
