"""Benchmark: materialising an embedded model with one GGUF parse versus transformers' three.

Each run is a fresh process (`llmflow.llm.materialise` into a temporary folder); the two ways
alternate pair by pair, so the machine's drift hits both alike. ``three`` replaces the read-once
block by a no-op, so transformers parses the GGUF for the config, the tokenizer and the
weights. Prints each run's CPU seconds (user + system) and wall seconds, whether the two ways
wrote the same files byte for byte, and last ``ratio=<median three / once CPU-s>``.

    python bench/materialise_speed.py [--model gemma3-270m] [--pairs 3]
"""

from __future__ import annotations

import argparse
import filecmp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import contextlib, sys
from llmflow import llm
if sys.argv[3] == "three":
    llm._gguf_read_once = contextlib.nullcontext
llm.materialise(sys.argv[1], sys.argv[2])
"""


def run(model: str, way: str, dest: Path) -> tuple[float, float]:
    """CPU and wall seconds of one materialisation in a fresh process."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, model, str(dest), way], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m", help="embedded model name")
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    cpu: dict[str, list[float]] = {"three": [], "once": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.pairs):
            for way in ("three", "once"):
                seconds, wall = run(args.model, way, Path(tmp) / f"{way}-{k}")
                cpu[way].append(seconds)
                print(f"pair {k} {way}: {seconds:.1f} CPU-s, {wall:.1f} s wall", flush=True)
        files = sorted(p.name for p in (Path(tmp) / "once-0").iterdir())
        _, differ, missing = filecmp.cmpfiles(Path(tmp) / "three-0", Path(tmp) / "once-0", files, shallow=False)
        print(f"same files byte for byte: {not differ and not missing} ({len(files)} files)")
    print(f"ratio={statistics.median(cpu['three']) / statistics.median(cpu['once']):.2f}")


if __name__ == "__main__":
    main()
