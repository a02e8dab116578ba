"""Atomic writes: a failed or killed writer never leaves a partial result under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from llmflow.io import atomic_path, write_file, write_zarr


def test_failed_write_leaves_old_result_and_no_temporary(tmp_path: Path):
    path = tmp_path / "a.csv"
    write_file(path, lambda p: p.write_text("old\n"))
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_store_is_replaced_whole(tmp_path: Path):
    path = tmp_path / "s.zarr"
    write_zarr(xr.Dataset({"y": ("i", np.arange(3.0))}), path)
    write_zarr(xr.Dataset({"z": ("j", np.ones(2))}), path)
    ds = xr.open_zarr(path)
    assert list(ds.data_vars) == ["z"] and sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_leftovers_of_a_killed_writer_are_removed(tmp_path: Path):
    path = tmp_path / "big.zarr"
    # A writer killed with SIGKILL half-way through its store.
    script = (
        "import numpy as np, xarray as xr, time\n"
        "from llmflow.io import atomic_path\n"
        f"with atomic_path({str(path)!r}) as tmp:\n"
        "    xr.Dataset({'y': ('i', np.arange(10.0))}).to_zarr(tmp, zarr_format=3)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not path.exists()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name == f".tmp-{proc.pid}-big.zarr"
    (tmp_path / ".tmp-1-other.zarr").mkdir()  # another output's temporary is not ours to remove
    write_zarr(xr.Dataset({"y": ("i", np.zeros(2))}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-1-other.zarr", "big.zarr"]
