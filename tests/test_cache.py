"""Per-task resume of sharded jobs (llmflow.cache): finished tasks are reused, unfinished or
changed ones recomputed, and every result reaches its output unchanged."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from llmflow import cache
from llmflow.cache import content_hash, run_cached
from llmflow.io import write_zarr


def _tasks(tmp_path: Path, names_families) -> list[str]:
    paths = []
    for k, (name, family) in enumerate(names_families):
        x, y = np.full((2, 1), float(k)), np.full(2, float(k))
        task = xr.Dataset({"x_context": (("context", "x_dim"), x), "y_context": ("context", y),
                           "x_target": (("target", "x_dim"), x), "y_target": ("target", y)},
                          attrs={"name": name, "family": family})
        paths.append(str(tmp_path / "tasks" / f"{name}.zarr"))
        write_zarr(task, paths[-1])
    return paths


def test_run_cached_computes_groups_of_one_family(tmp_path):
    """group=2: the uncached tasks go to compute two at a time, never two families together;
    cached ones are copied out, and a rerun computes nothing."""
    paths = _tasks(tmp_path, [("a-0", "gp"), ("b-0", "real"), ("a-1", "gp"), ("a-2", "gp")])
    outs = [str(tmp_path / "out" / Path(p).name) for p in paths]
    groups = []

    def compute(tasks):
        groups.append([t.attrs["name"] for t in tasks])
        return [{"v": xr.Dataset({"v": ("i", t["y_context"].values * 10)})} for t in tasks]

    run_cached(paths[:1], {"v": outs[:1]}, {}, compute, tmp_path / "cache", group=2)
    run_cached(paths, {"v": outs}, {}, compute, tmp_path / "cache", group=2)
    assert groups == [["a-0"], ["b-0"], ["a-1", "a-2"]]
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(xr.open_zarr(out)["v"].values, [10.0 * k] * 2)
    run_cached(paths, {"v": outs}, {}, compute, tmp_path / "cache", group=2)
    assert len(groups) == 3


def test_a_task_is_reused_only_with_every_result_its_settings_and_code(tmp_path, monkeypatch):
    """Several results per task (rule sample's three methods): a task counts as finished only
    when all are cached (a kill between two writes recomputes it); a rerun after Snakemake has
    deleted the outputs copies the cached stores out byte for byte; other settings or other
    code recompute."""
    paths = _tasks(tmp_path, [("t-0", "gp"), ("t-1", "gp")])
    stores = {m: [str(tmp_path / m / Path(p).name) for p in paths] for m in ("ndp", "llm-ndp")}
    calls = []

    def compute(tasks):
        calls.extend(t.attrs["name"] for t in tasks)
        return [{m: xr.Dataset({"y": ("s", t["y_context"].values + k)}) for k, m in enumerate(("ndp", "llm-ndp"))}
                for t in tasks]

    run_cached(paths, stores, {"n": 1}, compute, tmp_path / "cache")
    first = {m: [content_hash(p) for p in ps] for m, ps in stores.items()}
    (entry,) = (tmp_path / "cache").glob("t-1-*")
    shutil.rmtree(entry / "llm-ndp.zarr")  # killed between t-1's two writes
    for ps in stores.values():
        for p in ps:
            shutil.rmtree(p)
    run_cached(paths, stores, {"n": 1}, compute, tmp_path / "cache")
    assert calls == ["t-0", "t-1", "t-1"]
    assert {m: [content_hash(p) for p in ps] for m, ps in stores.items()} == first
    np.testing.assert_array_equal(xr.open_zarr(stores["llm-ndp"][1])["y"].values, [2.0, 2.0])
    run_cached(paths, stores, {"n": 2}, compute, tmp_path / "cache")
    assert calls[3:] == ["t-0", "t-1"]
    monkeypatch.setattr(cache, "code_hash", lambda: "edited")
    run_cached(paths, stores, {"n": 2}, compute, tmp_path / "cache")
    assert calls[5:] == ["t-0", "t-1"]


def test_a_changed_input_recomputes_only_the_task_that_reads_it(tmp_path):
    """inputs[i] (rule sample: task i's expert store) enters task i's key alone."""
    paths = _tasks(tmp_path, [("t-0", "gp"), ("t-1", "gp")])
    experts = [tmp_path / "experts" / f"t-{k}.txt" for k in range(2)]
    experts[0].parent.mkdir()
    for k, path in enumerate(experts):
        path.write_text(str(k))
    outs = [str(tmp_path / "out" / Path(p).name) for p in paths]
    calls = []

    def compute(tasks):
        calls.extend(t.attrs["name"] for t in tasks)
        return [{"v": xr.Dataset({"v": ("i", t["y_context"].values)})} for t in tasks]

    def run(**kwargs):
        run_cached(paths, {"v": outs}, {}, compute, tmp_path / "cache", **kwargs)

    run(inputs=[{"i-llmp": str(p)} for p in experts])
    experts[1].write_text("changed")
    run(inputs=[{"i-llmp": str(p)} for p in experts])
    assert calls == ["t-0", "t-1", "t-1"]
    with pytest.raises(ValueError, match="1 inputs for 2 tasks"):
        run(inputs=[{"i-llmp": str(experts[0])}])


def test_a_result_without_one_of_the_outputs_is_an_error(tmp_path):
    paths = _tasks(tmp_path, [("t-0", "gp")])
    with pytest.raises(KeyError):
        run_cached(paths, {"ndp": [str(tmp_path / "ndp.zarr")], "gp": [str(tmp_path / "gp.zarr")]}, {},
                   lambda tasks: [{"ndp": xr.Dataset()}], tmp_path / "cache")
    assert not (tmp_path / "ndp.zarr").exists() and not (tmp_path / "gp.zarr").exists()


def test_content_hash_follows_the_bytes_and_the_pattern(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    before = content_hash(tmp_path / "pkg", "*.py")
    (tmp_path / "pkg" / "sub" / "b.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert content_hash(tmp_path / "pkg", "*.py") == before != content_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    assert content_hash(tmp_path / "pkg", "*.py") != before
    assert len(cache.code_hash()) == 64
