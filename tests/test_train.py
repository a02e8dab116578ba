"""Training: loss goes down, checkpoints resume bit-identically, outputs are written."""

import pandas as pd
import pytest
import torch

import llmflow.train as train_mod
from llmflow.io import write_zarr
from llmflow.ndp import NDPConfig, TrainedNDP
from llmflow.prior import PriorConfig, make_shard, prior_config_json
from llmflow.train import TrainConfig, context_split, learning_rate, load_prior_shards, run_training, train

PRIOR = {
    "x_dim": 1, "x_range": [-2.0, 2.0], "n_points": [8, 16], "kernels": ["se", "matern52"],
    "lengthscale": [0.3, 1.0], "variance": [1.0, 1.0], "noise_std": [0.05, 0.05], "period": [0.5, 0.5],
    "periodic_lengthscale": [1.0, 1.0], "functions_per_shard": 128,
}
MODEL = NDPConfig(dim=32, depth=2, heads=4)


@pytest.fixture(autouse=True)
def one_thread():
    # Small models train fastest single-threaded, and the bit-identity check needs a fixed count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior")
    paths = []
    for k in range(2):
        ds = make_shard(PriorConfig.from_config(PRIOR), seed=0, split="train", shard=k, config_json=prior_config_json(PRIOR, 0))
        write_zarr(ds, folder / f"shard-{k}.zarr")
        paths.append(str(folder / f"shard-{k}.zarr"))
    return paths


def _weights(model: TrainedNDP) -> dict:
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    lrs = [learning_rate(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3


def test_context_split_draws_random_subsets_of_the_valid_points():
    mask = torch.ones(20000, 10, dtype=torch.bool)
    mask[::2, 6:] = False  # half the rows have 6 valid points
    ctx = context_split(mask, 0.2, torch.Generator().manual_seed(0))
    assert not (ctx & ~mask).any()
    k = ctx.sum(1)
    empty = k == 0
    assert abs(empty.float().mean().item() - 0.2) < 0.01
    # otherwise 1..n−1 points, uniformly
    assert set(k[1::2][~empty[1::2]].tolist()) == set(range(1, 10))
    assert set(k[::2][~empty[::2]].tolist()) == set(range(1, 6))
    assert abs(k[::2][~empty[::2]].float().mean().item() - 3.0) < 0.05
    # every valid point is equally likely to be context
    share = ctx[::2, :6].float().mean(0)
    assert (share - share.mean()).abs().max() < 0.02
    assert not context_split(mask, 1.0, torch.Generator().manual_seed(0)).any()


def test_forecast_contexts_are_the_leftmost_points():
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(4000, 12, dtype=torch.bool)
    mask[::2, 8:] = False
    x = torch.rand(4000, 12, 1, generator=gen) * 4 - 2
    ctx = context_split(mask, 0.0, torch.Generator().manual_seed(0), x, forecast=0.5)
    xs = x[..., 0].masked_fill(~mask, float("inf"))
    # a forecast row's context is its k leftmost valid points: every target lies right of it
    left = torch.stack([xs[i][ctx[i]].max() < xs[i][mask[i] & ~ctx[i]].min() for i in range(len(ctx))])
    assert not (ctx & ~mask).any() and 0.5 < left.float().mean().item() < 0.62  # random splits: rarely
    ahead = context_split(mask, 0.0, torch.Generator().manual_seed(0), x, forecast=1.0)
    assert all(xs[i][ahead[i]].max() < xs[i][mask[i] & ~ahead[i]].min() for i in range(200))
    # no forecast: the random splits of before, draw for draw
    assert torch.equal(context_split(mask, 0.1, torch.Generator().manual_seed(0), x, forecast=0.0),
                       context_split(mask, 0.1, torch.Generator().manual_seed(0)))


def test_smoke_run_reduces_the_loss(shards, tmp_path):
    data = load_prior_shards(shards)
    assert data.x.shape == (256, 16, 1) and data.mask.sum(1).min() >= 8
    cfg = TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=10, log_every=10, checkpoint_every=1000, val_every=100)
    result = train(data, MODEL, cfg, tmp_path / "ckpt", device="cpu", progress=False, val_data=data)
    curve = result.curve
    assert list(curve.columns) == ["step", "loss", "val_loss", "lr", "steps_per_s", "wall_s"]
    assert curve["loss"].iloc[-3:].mean() < 0.7 * curve["loss"].iloc[:2].mean()
    val = curve["val_loss"].dropna()
    assert len(val) == 2 and val.iloc[-1] < val.iloc[0]
    assert result.model.norm.scale == pytest.approx(data.y[data.mask].std(), rel=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_weights(shards, tmp_path, monkeypatch):
    data = load_prior_shards(shards)
    # batch 48 of 256 functions: the kill and the checkpoint fall mid-epoch.
    cfg = TrainConfig(steps=14, batch_size=48, lr=3e-3, warmup_steps=3, log_every=2, checkpoint_every=5, keep_checkpoints=1)
    full = train(data, MODEL, cfg, tmp_path / "full", device="cpu", progress=False)

    calls = {"n": 0}
    real_clip = train_mod.clip_grad_norm_

    def dying_clip(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # killed during step 8, after the checkpoint at step 5
            raise KeyboardInterrupt
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(train_mod, "clip_grad_norm_", dying_clip)
    with pytest.raises(KeyboardInterrupt):
        train(data, MODEL, cfg, tmp_path / "killed", device="cpu", progress=False)
    monkeypatch.setattr(train_mod, "clip_grad_norm_", real_clip)
    assert [p.name for p in (tmp_path / "killed").glob("*.pt")] == ["step-00000005.pt"]

    resumed = train(data, MODEL, cfg, tmp_path / "killed", device="cpu", progress=False)
    assert resumed.resumed_from == 5 and full.resumed_from is None
    want, got = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(want[k], got[k]) for k in want)
    pd.testing.assert_series_equal(full.curve["loss"], resumed.curve["loss"])


def test_checkpoint_of_another_config_is_not_resumed(shards, tmp_path):
    data = load_prior_shards(shards)
    cfg = TrainConfig(steps=4, batch_size=16, warmup_steps=1, checkpoint_every=2)
    train(data, MODEL, cfg, tmp_path / "ckpt", device="cpu", progress=False)
    other = train(data, MODEL, TrainConfig(steps=4, batch_size=16, warmup_steps=1, checkpoint_every=2, lr=5e-4),
                  tmp_path / "ckpt", device="cpu", progress=False)
    assert other.resumed_from is None


def test_run_training_writes_model_curve_and_plot(shards, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=16, warmup_steps=2, log_every=3, checkpoint_every=3)
    out = tmp_path / "ndp"
    result = run_training(shards, MODEL, cfg, out / "model.pt", out / "checkpoints", out / "train_curve.csv",
                          out / "train_curve.png", device="cpu", progress=False, val_shard_paths=shards[:1])
    assert (out / "train_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(out / "train_curve.csv")) == 2
    loaded = TrainedNDP.load(str(out / "model.pt"))
    assert loaded.norm == result.model.norm and loaded.net.config == MODEL
    x, y = torch.randn(2, 5, 1), torch.randn(2, 5)
    t = torch.rand(2)
    torch.testing.assert_close(loaded.net(x, y, t), result.model.net(x, y, t))
    assert not list(out.glob(".tmp-*")) and not list((out / "checkpoints").glob(".tmp-*"))
