"""model.pt and the training checkpoints: round trip, atomic writes, the newest kept."""

from __future__ import annotations

from pathlib import Path

import torch

from llmflow import checkpoint
from llmflow.ndp import NDP, NDPConfig, TrainedNDP, YNormalisation

MODEL = NDPConfig(dim=16, depth=1, heads=2)


def _model() -> TrainedNDP:
    torch.manual_seed(0)
    net = NDP(MODEL)
    with torch.no_grad():  # the final layer is zero-initialised: make the outputs informative
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return TrainedNDP(net.eval(), YNormalisation(loc=1.5, scale=0.25))


def test_model_round_trip(tmp_path: Path):
    model = _model()
    path = tmp_path / "model.pt"
    checkpoint.save_model(model, path, steps=7)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == checkpoint.MODEL_FORMAT and payload["steps"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    x, y, t = torch.randn(2, 5, 1), torch.randn(2, 5), torch.rand(2)
    for loaded in (checkpoint.load_model(path), TrainedNDP.load(str(path))):
        assert loaded.norm == model.norm and loaded.net.config == MODEL and not loaded.net.training
        torch.testing.assert_close(loaded.net(x, y, t), model.net(x, y, t), rtol=0, atol=0)
        assert torch.abs(loaded.net(x, y, t)).max() > 0


def test_checkpoints_keep_the_newest(tmp_path: Path):
    for step in (5, 10, 100, 20):
        checkpoint.write_checkpoint(tmp_path, {"step": step, "value": torch.tensor(float(step))}, keep=2)
    kept = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step-00000020.pt", "step-00000100.pt"]
    assert float(checkpoint.read_checkpoint(kept[-1], "cpu")["value"]) == 100.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in kept]


def test_a_model_from_before_context_tokens_and_rotary_embedding_loads_as_it_was(tmp_path: Path):
    old = NDPConfig(dim=16, depth=1, heads=2, context_tokens=False, rope=False)
    torch.manual_seed(0)
    net = NDP(old)
    config = old.to_dict()
    for key in ("context_tokens", "rope"):
        del config[key]  # model.pt files written before these settings existed
    torch.save({"format": checkpoint.MODEL_FORMAT, "ndp_config": config, "state_dict": net.state_dict(),
                "normalisation": {"loc": 0.0, "scale": 1.0}}, tmp_path / "model.pt")
    loaded = checkpoint.load_model(tmp_path / "model.pt")
    assert loaded.net.config == old and not loaded.context_tokens
