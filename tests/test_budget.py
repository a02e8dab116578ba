"""Long prompts: the start-time check of their tokens against the model's window and memory."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors import safe_open
from snakemake.utils import update_config

from conftest import REPO, copy_workflow, snakemake
from llmflow import expert
from llmflow.config import ConfigError, validate_config
from llmflow.expert.budget import EMBEDDED_SHAPES, ModelShape, check_prompt_lengths, longest_prompt_tokens

LONG_CSV = "tests/data/long_task.csv"


def _tiny_config() -> dict:
    """config.yaml extended by tests/config.yaml, validated, as the Snakefile sees it."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "tests/config.yaml").read_text()))
    return validate_config(config)


def _write_long_csv(folder: Path, rows: int = 3000) -> None:
    x = np.arange(rows, dtype=float)
    frame = pd.DataFrame({"t": x, "level": 1000.0 + 100.0 * np.sin(x / 50.0), "observed": x < 0.9 * rows})
    (folder / LONG_CSV).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / LONG_CSV, index=False)


LONG_TASK = {"name": "long", "csv": LONG_CSV, "x": "t", "y": "level", "text": "Water level in mm.",
             "context": "observed"}


@pytest.mark.parametrize("name", sorted(EMBEDDED_SHAPES))
def test_embedded_shapes_are_the_models_own(name: str, request: pytest.FixtureRequest):
    folder = request.getfixturevalue("smollm2_dir" if name.startswith("smollm2") else "gemma_dir")
    with safe_open(folder / "model.safetensors", "pt") as weights:
        n_params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())
    config = json.loads((folder / "config.json").read_text())
    assert ModelShape.from_config(config, n_params) == EMBEDDED_SHAPES[name]


@pytest.mark.parametrize("section", [{}, {"style": "llmp"},
                                     {"layout": "xy", "preamble": "Pairs.", "rule_before_query": True,
                                      "text_numbers": True, "x_decimals": 1, "max_context": 50}])
def test_token_bound_holds_and_is_tight(section: dict, smollm2_dir: Path, gemma_dir: Path):
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 2000, 300))[:, None]
    y = 1000.0 + 100.0 * np.sin(x[:, 0] / 50.0)
    xc, yc, xt = x[:250], y[:250], x[250:]
    cfg = expert.ExpertConfig.from_config(section)
    style = cfg.prompt_style()
    bound = longest_prompt_tokens(xc, yc, xt, "If x is above 1900, y is 900.", cfg)[0]
    scale, shift, y_llm, _ = expert.llm_numbers(yc, cfg)  # the numbers as the LLM reads them
    text = expert.prepare_text("If x is above 1900, y is 900.", style, scale, shift)
    for folder in (smollm2_dir, gemma_dir):
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        longest = max(len(tok(expert.build_prompt(xc, y_llm, q, text, style) + " -99.99\n")["input_ids"])
                      for q in xt[::10])
        assert longest <= bound <= 1.25 * longest, (folder.name, longest, bound)


def test_max_context_keeps_the_nearest_points():
    x = np.array([[0.0], [5.0], [9.0], [2.0], [7.0]])
    y = np.arange(5.0)
    near = expert.prompt_style("default", max_context=2)
    assert expert.build_prompt(x, y, np.array([8.0]), "", near).splitlines() == \
        ["7.00, 4.00", "9.00, 2.00", "8.00,"]
    fixed = expert.prompt_style("default", max_context=3, order="fixed")  # nearest 3, as given
    assert expert.build_prompt(x, y, np.array([8.0]), "", fixed).splitlines() == \
        ["5.00, 1.00", "9.00, 2.00", "7.00, 4.00", "8.00,"]
    with pytest.raises(ValueError, match="max_context"):
        expert.prompt_style("default", max_context=0)


def test_default_and_tiny_configs_pass():
    check_prompt_lengths(validate_config(yaml.safe_load((REPO / "config.yaml").read_text())))
    check_prompt_lengths(_tiny_config(), base_dir=REPO)


def _failing(config: dict, base_dir: Path) -> str:
    with pytest.raises(ConfigError) as info:
        check_prompt_lengths(config, base_dir=base_dir)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_long_user_task_is_caught_with_its_remedy(tmp_path: Path):
    _write_long_csv(tmp_path)
    config = _tiny_config()
    config["tasks"]["user"] = [LONG_TASK]
    config["allmp"]["tasks"] = ["text-*"]
    message = _failing(config, tmp_path)
    assert message.startswith("config error: expert.max_context: task 'user-long': I-LLMP prompts of up to ~")
    assert "beyond smollm2-135m's window of 8,192 tokens; set expert.max_context to at most " in message
    fit = int(message.split("at most ")[1].split()[0])
    assert 200 < fit < 1000  # ~17 tokens per line of "2699.00, 1000.00"
    config["expert"]["max_context"] = fit
    check_prompt_lengths(config, base_dir=tmp_path)
    config["expert"]["max_context"] = fit + 1
    assert "at most " + str(fit) in _failing(config, tmp_path)
    # A-LLMP in append order writes every point; in query order it keeps max_context.
    config["expert"]["max_context"] = fit
    config["allmp"]["tasks"] = ["*"]
    assert _failing(config, tmp_path).startswith("config error: allmp.tasks: task 'user-long': A-LLMP prompts")
    config["allmp"]["order"] = "query"
    check_prompt_lengths(config, base_dir=tmp_path)


def test_memory_bound_names_its_limit():
    config = _tiny_config()
    config["llm"]["memory_gb"] = 0.6  # SmolLM2's float32 weights alone are 0.54 GB
    # The trie's prefixes share their prompt's cache (no copy per prefix), but each prompt of a
    # batch has its own: I-LLMP names expert.prompts_per_forward; A-LLMP keeps a cache per
    # sample and names its own remedy.
    message = _failing(config, REPO)
    assert message.startswith("config error: expert.prompts_per_forward: task ") and "I-LLMP prompts" in message
    fit = int(message.split("lower expert.prompts_per_forward to at most ")[1].split()[0])
    assert 1 <= fit < 32
    config["expert"]["prompts_per_forward"] = fit + 1
    assert "at most " + str(fit) in _failing(config, REPO)
    config["expert"]["prompts_per_forward"] = 1  # (fit: the first task's; longer ones need fewer)
    message = _failing(config, REPO)
    assert message.startswith("config error: allmp.tasks: task ") and "A-LLMP prompts" in message
    assert "more than llm.memory_gb (0.6 GB); " in message and "lower allmp.tasks_per_forward to at most 1" in message
    config["allmp"]["tasks_per_forward"] = 1
    assert "lower allmp.n_samples to at most 1" in _failing(config, REPO)
    config["allmp"]["n_samples"] = 1
    config["expert"]["batch_size"] = 512
    check_prompt_lengths(config, base_dir=REPO)
    small = copy.deepcopy(config)
    small["llm"]["memory_gb"] = 0.1
    assert _failing(small, REPO).endswith("use a model with a longer window or more memory than smollm2-135m")


def test_snakemake_stops_before_any_job(tmp_path: Path):
    workdir = copy_workflow(tmp_path / "wf")
    _write_long_csv(workdir)
    config = yaml.safe_load((workdir / "tests/config.yaml").read_text())
    config["tasks"]["user"] = [LONG_TASK]
    (workdir / "tests/config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-j1", "--configfile", "tests/config.yaml")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: expert.max_context: task 'user-long': I-LLMP prompts"), last
    assert not (workdir / "results").exists()
