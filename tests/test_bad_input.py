"""Walk tests/bad_inputs.yaml: every bad input gives its one line, a non-zero exit and no output.

Every config and CSV case goes through the checks the Snakefile runs before any job (the same
functions, in-process: fast); a sample of them also through a real `snakemake` process, which
must exit non-zero with the line last on stderr and leave no results/ behind. The valid cases
(replicate x, spaces after the commas, huge and negative values, unicode text) build their
tasks through Snakemake and read back unchanged. The LLM case runs the expert stages with a model that cannot say a number.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from snakemake.utils import update_config

from conftest import REPO, copy_workflow, snakemake
from llmflow.config import ConfigError, check_consistency, validate_config
from llmflow.tasks import TaskInputError, check_user_tasks

CASES = yaml.safe_load((REPO / "tests/bad_inputs.yaml").read_text())
CSV = "tests/data/user_task.csv"
# One case of each kind through a real Snakemake process (each costs a few seconds).
THROUGH_SNAKEMAKE = ("type-seed", "missing-key", "missing-model-folder", "user-task-x-dim", "thousands-separator", "empty-file")


def _set(config: dict, dotted: str, value: Any) -> None:
    """``a.b[0].c`` = value in ``config`` (a value of None deletes the key)."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", dotted)]
    node = config
    for key in keys[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


def _apply(workdir: Path, case: dict) -> None:
    """Write a case into the workflow copy at ``workdir``."""
    for file, key in (("tests/config.yaml", "set"), ("config.yaml", "write_base")):
        if key in case:
            config = yaml.safe_load((workdir / file).read_text())
            for dotted, value in case[key].items():
                _set(config, dotted, value)
            (workdir / file).write_text(yaml.safe_dump(config, allow_unicode=True))
    if "csv" in case:
        (workdir / CSV).write_text(case["csv"], encoding=case.get("encoding", "utf-8"))
    if "text" in case:
        _apply(workdir, {"set": {"tasks.user[0].text": case["text"]}})


def _check_in_process(workdir: Path) -> None:
    """What the Snakefile does with config.yaml extended by tests/config.yaml, before any job."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    update_config(config, yaml.safe_load((workdir / "tests/config.yaml").read_text()))
    validate_config(config)
    check_consistency(config)
    check_user_tasks(config, base_dir=workdir)


ERROR_CASES = [c for kind in ("config", "csv") for c in CASES[kind] if "error" in c]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("bad-input") / "wf")


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["id"] for c in ERROR_CASES])
def test_bad_input_gives_its_line(case: dict, pristine: Path, tmp_path: Path):
    workdir = tmp_path / "wf"
    shutil.copytree(pristine, workdir)
    _apply(workdir, case)
    with pytest.raises((ConfigError, TaskInputError)) as info:
        _check_in_process(workdir)
    # Messages name paths as the config gives them (relative to the workflow folder).
    assert str(info.value).replace(f"{workdir}/", "") == case["error"]
    if case["id"] in THROUGH_SNAKEMAKE:
        result = snakemake(workdir, "-j1", "--configfile", "tests/config.yaml")
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == case["error"]
        assert not (workdir / "results").exists()


def test_every_listed_case_is_walked():
    assert {c["id"] for c in ERROR_CASES} >= set(THROUGH_SNAKEMAKE)
    assert len({c["id"] for kind in CASES.values() for c in kind}) == sum(map(len, CASES.values()))


VALID = [c for c in CASES["csv"] if c.get("valid")]


def test_unusual_but_valid_inputs_build_their_tasks(pristine: Path, tmp_path: Path):
    """Huge values, negatives and unicode text: one user task each, built by Snakemake."""
    workdir = tmp_path / "wf"
    shutil.copytree(pristine, workdir)
    config = yaml.safe_load((workdir / "tests/config.yaml").read_text())
    spec = config["tasks"]["user"][0]
    config["tasks"]["user"] = []
    for case in VALID:
        name = case["id"].replace("-", "_")
        (workdir / f"tests/data/{name}.csv").write_text(case["csv"], encoding="utf-8")
        config["tasks"]["user"].append({**spec, "name": name, "csv": f"tests/data/{name}.csv", "text": case.get("text", spec["text"])})
    (workdir / "tests/config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    targets = [f"results/tasks/user-{c['id'].replace('-', '_')}.zarr" for c in VALID]
    result = snakemake(workdir, "-j1", *targets, "--configfile", "tests/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    for case, target, user in zip(VALID, targets, config["tasks"]["user"]):
        ds = xr.open_zarr(workdir / target)
        frame = pd.read_csv(workdir / user["csv"], skipinitialspace=True)
        ctx = frame["observed"].astype(bool).to_numpy()
        np.testing.assert_array_equal(ds["y_context"].values, frame["temperature"].to_numpy(float)[ctx])
        np.testing.assert_array_equal(ds["y_target"].values, frame["temperature"].to_numpy(float)[~ctx])
        assert ds.attrs["text"] == user["text"]


class NoNumberLM(torch.nn.Module):
    """A causal LM that never says a number: every token holding a digit, '-' or '.' is masked."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.inner = model
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.banned = torch.tensor([t for t, piece in enumerate(pieces) if any(ch in "0123456789-." for ch in piece or "")])

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.banned] = -math.inf
        return out


def test_llm_without_a_number_names_task_and_target(smollm2_dir: Path, pristine: Path, tmp_path: Path):
    from llmflow import allmp
    from llmflow.cache import run_cached
    from llmflow.expert import ExpertConfig, task_expert
    from llmflow.llm import load_model
    from llmflow.tasks import build_task

    (case,) = CASES["llm"]
    config = validate_config(yaml.safe_load((pristine / "tests/config.yaml").read_text()))
    task = build_task("user-temperature", config, base_dir=pristine).to_dataset().isel(target=slice(0, 2))
    task_path = tmp_path / "user-temperature.zarr"
    task.to_zarr(task_path, zarr_format=3)
    model, tokenizer = load_model(str(smollm2_dir))
    liar = NoNumberLM(model, tokenizer)
    cfg = ExpertConfig.from_config({"restricted": False})
    out, cache = tmp_path / "expert/user-temperature.zarr", tmp_path / "expert/.cache"
    with pytest.raises(ValueError) as info:
        run_cached([str(task_path)], {"i-llmp": [str(out)]}, {},
                   lambda ts: [{"i-llmp": task_expert(liar, tokenizer, t, cfg, "liar", progress=False)} for t in ts], cache)
    assert str(info.value) == case["error"]
    assert not out.exists() and not list(cache.glob("*/*.zarr"))  # no partial output

    sampler = allmp.AllmpConfig.from_config({"n_samples": 1, "max_retries": 1})
    with pytest.raises(ValueError, match=r"^task 'user-temperature', target \d+ \(x = \d+\): the LLM gave no valid number in 2 draws for any of 1 samples$"):
        allmp.sample_allmp(liar, tokenizer, xr.open_zarr(task_path).load(), cfg, sampler, "liar", progress=False)
