"""Shared fixtures: a copy of the workflow in a temporary folder, and one tiny end-to-end run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "profiles", "tests/config.yaml", "tests/data")

# No code path may reach a model hub: make any attempt fail loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not results) to ``dest`` so a run there leaves the checkout clean."""
    for name in WORKFLOW_FILES:
        src, dst = REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run Snakemake from this interpreter's environment in ``workdir``."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


@pytest.fixture(scope="session")
def predict_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """`snakemake -j2 predict` on tests/config.yaml in a fresh copy: the folder, and every file
    that the run left under results/ (path relative to the folder → mtime in ns)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny") / "wf")
    result = snakemake(workdir, "-j2", "predict", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-5000:]
    files = (p for p in (workdir / "results").rglob("*") if p.is_file())
    return workdir, {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="session")
def tiny_run(predict_run: tuple[Path, dict[str, int]]) -> Path:
    """The whole pipeline on tests/config.yaml, run once per test session (in the folder where
    `predict` ran first, so the full run also shows that it reuses predict's outputs)."""
    workdir = predict_run[0]
    result = snakemake(workdir, "-j2", "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


# --- LLM expert fixtures (issue 4/7; owner: expert) -----------------------------------------
# Embedded models are materialised once per session into a temporary folder, or into
# $LLMFLOW_TEST_MODELS when set (kept between sessions; materialise() is idempotent).


def _models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("LLMFLOW_TEST_MODELS")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "models"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmflow.llm import materialise

    return materialise("smollm2-135m", _models_dir(tmp_path_factory) / "smollm2-135m")


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmflow.llm import materialise

    return materialise("gemma3-270m", _models_dir(tmp_path_factory) / "gemma3-270m")


# --- end LLM expert fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread is fastest and immune to an oversubscribed machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
