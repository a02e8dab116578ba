"""One device helper for every torch stage: cpu, cuda, or auto; a GPU per shard when run locally."""

from __future__ import annotations

import pytest
import torch

from llmflow import device


def test_choose_device(monkeypatch: pytest.MonkeyPatch):
    assert device.choose_device("cpu", shard=3).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.choose_device("auto", shard=3).type == "cpu"
    assert device.choose_device().type == "cpu"  # training and the benchmark: shard 0
    with pytest.raises(ValueError, match="cuda"):
        device.choose_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        device.choose_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device.choose_device("cuda") == torch.device("cuda", 0)
    assert device.choose_device("auto", shard=6) == torch.device("cuda", 2)  # local: shard % GPUs
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    assert device.choose_device("auto", shard=6) == torch.device("cuda", 0)  # SLURM assigned it
