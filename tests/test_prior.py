"""Prior stage: shard contents, determinism, and draws that follow the configured ranges."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from llmflow.config import validate_config
from llmflow.io import write_zarr
from llmflow.prior import PriorConfig, make_shard, prior_config_json

SECTION = {
    "x_dim": 2,
    "x_range": [-1.0, 3.0],
    "n_points": [5, 9],
    "kernels": ["se", "matern52", "periodic", "weakly_periodic"],
    "lengthscale": [0.2, 0.8],
    "variance": [0.5, 2.0],
    "noise_std": [0.01, 0.1],
    "functions_per_shard": 200,
}


@pytest.fixture(scope="module")
def cfg() -> PriorConfig:
    config = validate_config({"seed": 3, "prior": dict(SECTION)})
    return PriorConfig.from_config(config["prior"])


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_shard_layout_and_ranges(cfg):
    ds = make_shard(cfg, seed=3, split="train", shard=0)
    assert ds["x"].dims == ("function", "point", "x_dim")
    assert ds["y"].dims == ("function", "point")
    assert ds.sizes == {"function": 200, "point": 9, "x_dim": 2}
    n = ds["mask"].sum("point").values
    assert n.min() >= 5 and n.max() <= 9 and len(np.unique(n)) > 1
    # masked-out padding is zero, valid points are in the box
    x, mask = ds["x"].values, ds["mask"].values
    assert np.all(x[~mask] == 0) and np.all(ds["y"].values[~mask] == 0)
    assert x[mask].min() >= -1.0 and x[mask].max() <= 3.0
    assert set(ds["kernel"].values) == set(SECTION["kernels"])
    ls = ds["lengthscale"].values
    assert ls.min() >= 0.2 and ls.max() <= 0.8
    assert ds["noise_std"].values.min() >= 0.01 and ds["noise_std"].values.max() <= 0.1


def test_draw_variance_follows_sampled_variance(cfg):
    ds = make_shard(cfg, seed=3, split="train", shard=1)
    y, mask, var = ds["y"].values, ds["mask"].values, ds["variance"].values
    # E[y²] = variance + noise²: the mean of y²/(v + σ²) over all points is 1.
    ratio = (y**2 / (var + ds["noise_std"].values ** 2)[:, None])[mask]
    assert abs(ratio.mean() - 1.0) < 0.15


def test_a_share_of_the_functions_gets_a_linear_trend():
    section = dict(SECTION, x_dim=1, x_range=[-2.0, 2.0], n_points=[30, 30], functions_per_shard=400,
                   trend_fraction=0.5, slope_std=[2.0, 3.0])
    ds = make_shard(PriorConfig.from_config(validate_config({"seed": 3, "prior": section})["prior"]), 3, "train", 0)
    s2 = ds["slope_variance"].values
    trend = s2 > 0
    assert 0.4 < trend.mean() < 0.6 and np.all((s2[trend] >= 4.0) & (s2[trend] <= 9.0))
    # least-squares slope of each function: slope² ≈ s² + the stationary part's own (≲ 1)
    x, y = ds["x"].values[..., 0], ds["y"].values
    xc = x - x.mean(1, keepdims=True)
    slope = (xc * y).sum(1) / (xc**2).sum(1)
    assert np.mean(slope[trend] ** 2) > 4.0 > 1.0 > np.mean(slope[~trend] ** 2)
    # trend_fraction 0: stationary draws only
    plain = make_shard(PriorConfig.from_config(validate_config({"seed": 3, "prior": dict(section, trend_fraction=0.0)})["prior"]), 3, "train", 0)
    assert np.all(plain["slope_variance"].values == 0)


def test_shards_are_byte_identical_and_independent_of_order(cfg, tmp_path):
    config_json = prior_config_json(SECTION, 3)
    # shard 1 made alone, and made after shard 0 in the same process
    write_zarr(make_shard(cfg, 3, "val", 1, config_json), tmp_path / "a.zarr")
    make_shard(cfg, 3, "val", 0, config_json)
    write_zarr(make_shard(cfg, 3, "val", 1, config_json), tmp_path / "b.zarr")
    assert tree_digest(tmp_path / "a.zarr") == tree_digest(tmp_path / "b.zarr")
    write_zarr(make_shard(cfg, 3, "test", 1, config_json), tmp_path / "c.zarr")
    assert tree_digest(tmp_path / "a.zarr") != tree_digest(tmp_path / "c.zarr")


def test_store_reads_back_with_xarray(cfg, tmp_path):
    write_zarr(make_shard(cfg, 3, "train", 0, prior_config_json(SECTION, 3)), tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds["kernel"].values[0] in SECTION["kernels"]
    assert '"lengthscale": [0.2, 0.8]' in ds.attrs["config"]
    assert ds["x"].shape == (200, 9, 2)
