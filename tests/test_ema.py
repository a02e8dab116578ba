"""The EMA of the weights: the decay's warm-up and the in-place update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmflow.ema import ema_decay, update_ema


def test_decay_warms_up_to_its_maximum():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(0.91)
    assert ema_decay(10**6, 0.999) == 0.999
    decays = [ema_decay(s, 0.99) for s in range(2000)]
    assert all(a <= b for a, b in zip(decays, decays[1:])) and decays[-1] == 0.99


def test_update_moves_each_parameter_towards_the_network():
    torch.manual_seed(0)
    net, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, net, 0.9)
    for old, new, p in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p.detach())
    assert not any(p.requires_grad and p.grad is not None for p in ema.parameters())
