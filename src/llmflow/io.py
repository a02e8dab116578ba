"""Atomic writes of results: a reader never sees a half-written store or file.

Everything is written to a temporary sibling path (same folder, so the final rename stays on
one filesystem and is atomic) and renamed into place only when complete. A killed job leaves
at most a ``.tmp-*`` sibling, which the next attempt removes.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import xarray as xr


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success, replace ``path`` with it.

    Works for files and folders (zarr stores). On an exception the temporary is removed
    and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed writer of the same path (Snakemake gives each output one job).
    stale = re.compile(rf"\.(tmp|old)-\d+-{re.escape(final.name)}")
    for sibling in final.parent.iterdir():
        if stale.fullmatch(sibling.name):
            _remove(sibling)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = final.with_name(f".old-{os.getpid()}-{final.name}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_zarr(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a zarr v3 store with consolidated metadata, atomically."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not yet part of the v3 spec; xarray
        # reads it fine and it spares readers a fallback warning.
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)


def write_file(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
