"""Evaluation tasks: every family builds, deterministically; user CSVs are validated row by row."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmflow.config import ConfigError, load_schema, validate_config
from llmflow.gp import posterior
from llmflow.kernels import Kernel
from llmflow.tasks import SYNTHETIC, TEXT_TASKS, Task, TaskInputError, build_task, task_config, task_names, user_task

with open("tests/config.yaml") as fh:
    TINY = yaml.safe_load(fh)


@pytest.fixture
def config() -> dict:
    return validate_config(copy.deepcopy(TINY))


def test_every_declared_task_builds_and_round_trips(config):
    names = task_names(config)
    assert names == ["gp-se-000", "synth-sine", "text-zero_after_30", "real-nile", "user-temperature"]
    for name in names:
        task = build_task(name, config)
        assert task.name == name
        back = Task.from_dataset(task.to_dataset())
        np.testing.assert_array_equal(back.x_target, task.x_target)
        np.testing.assert_array_equal(back.y_context, task.y_context)
        assert back.text == task.text and back.family == name.split("-")[0]


def test_a_task_depends_on_its_own_settings_only(config):
    # the workflow's tasks rule keys each task on task_config: the same task from it, and one more
    # user task (or another family's change) leaves the others' keys alone
    before = {name: copy.deepcopy(task_config(name, config)) for name in task_names(config)}
    for name in task_names(config):
        a, b = build_task(name, config), build_task(name, before[name])
        np.testing.assert_array_equal(a.y_context, b.y_context)
        np.testing.assert_array_equal(a.x_target, b.x_target)
    config["tasks"]["user"].append({**config["tasks"]["user"][0], "name": "another"})
    config["tasks"]["synth"]["n_points"] += 1
    after = {name: task_config(name, config) for name in task_names(config)}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"synth-sine"} and "user-another" in after


def test_a_built_in_task_is_keyed_on_its_definition(config, monkeypatch):
    # Built-in tasks live in code (text tasks wholly): changing one, not the config, must change
    # its key, so the workflow rebuilds it.
    key = task_config("text-zero_after_30", config)
    assert build_task("text-zero_after_30", key).text == "If x is greater than 30, y is 0."
    original = TEXT_TASKS["zero_after_30"]

    def fewer_targets() -> Task:
        task = original()
        task.x_target, task.y_target = task.x_target[:-1], task.y_target[:-1]
        task.constraint_lo, task.constraint_hi = task.constraint_lo[:-1], task.constraint_hi[:-1]
        return task

    monkeypatch.setitem(TEXT_TASKS, "zero_after_30", fewer_targets)
    assert task_config("text-zero_after_30", config) != key
    monkeypatch.setitem(TEXT_TASKS, "zero_after_30", original)
    assert task_config("text-zero_after_30", config) == key
    sine = task_config("synth-sine", config)
    monkeypatch.setitem(SYNTHETIC, "sine", lambda x: 1.5 * np.sin(1.3 * x))
    assert task_config("synth-sine", config) != sine


def test_tasks_are_deterministic_and_seeded(config):
    a = build_task("gp-se-000", config)
    b = build_task("gp-se-000", config)
    np.testing.assert_array_equal(a.y_target, b.y_target)
    config["seed"] = 1
    c = build_task("gp-se-000", config)
    assert not np.array_equal(a.y_target, c.y_target)


def test_gp_tasks_follow_the_protocol_kernel():
    config = validate_config({**copy.deepcopy(TINY), "tasks": {"gp": {"kernels": ["se"], "per_kernel": 60, "n_target": 20}}})
    # standardised residuals of the targets under the exact posterior are N(0, 1)
    z = []
    for name in task_names(config)[:60]:
        task = build_task(name, config)
        kernel = Kernel(task.attrs["kernel"], lengthscale=task.attrs["lengthscale"])
        assert kernel.lengthscale == 0.25 and task.attrs["noise_std"] == 0.05
        post = posterior(kernel, task.x_context, task.y_context, task.x_target, task.attrs["noise_std"])
        chol = np.linalg.cholesky(post.cov)
        z.append(np.linalg.solve(chol, task.y_target - post.mean))
    z = np.concatenate(z)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.1


def test_text_task_constraint_is_checkable(config):
    task = build_task("text-zero_after_30", config)
    assert task.text == "If x is greater than 30, y is 0."
    after = task.x_target[:, 0] > 30
    good = np.where(after, 0.1, 5.0)[None, :]
    bad = np.where(after, 0.5, 0.0)[None, :]
    assert task.satisfies(np.concatenate([good, bad])).tolist() == [True, False]


def test_the_schema_lists_every_text_task():
    schema = load_schema()["properties"]["tasks"]["properties"]["text"]
    assert schema["items"]["enum"] == schema["default"] == list(TEXT_TASKS)


@pytest.mark.parametrize("name", ["positive", "period", "ceiling", "level"])
def test_text_task_with_a_truth_states_what_the_context_does_not_show(name):
    task = TEXT_TASKS[name]()
    assert np.isfinite(task.y_target).all() and 9 <= len(task.y_target) <= 10
    assert task.satisfies(task.y_target[None, :]).tolist() == [True]
    # The naive forecast, the line through the last two context points, breaks the text.
    (x0, x1), (y0, y1) = task.x_context[-2:, 0], task.y_context[-2:]
    line = y1 + (y1 - y0) / (x1 - x0) * (task.x_target[:, 0] - x1)
    assert task.satisfies(line[None, :]).tolist() == [False]


def test_user_task_from_csv(config):
    task = build_task("user-temperature", config)
    assert len(task.y_context) == 6 and len(task.y_target) == 6
    assert task.x_target[0, 0] == 7 and task.y_target[0] == 19.0
    assert np.isnan(task.y_target[-2:]).all() and np.isfinite(task.y_target[:-2]).all()  # empty_y: predict


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


SPEC = {"name": "t", "x": "x", "y": "y", "text": "", "context": {"fraction": 0.5}}


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        ("x,y\n1,2\n2,nan\n3,4\n", None, r"data\.csv: line 3, column 'y': missing value \(to predict rows whose y is empty, set empty_y: predict\)$"),
        ("x,y\n1,2\n2,\n", None, r"line 3, column 'y': missing value \(to predict"),
        ("x,y\n1,2\n\n2,\n", None, r"line 4, column 'y': missing value \(to predict"),  # lines as in the file
        ("x,y\n1,2\n,3\n", None, r"line 3, column 'x': missing value$"),
        ("x,y\n1,2\nabc,3\n", None, r"line 3, column 'x': not a finite number: 'abc'$"),
        ("x,y\n", None, r"no data rows$"),
        ("", None, r"empty file \(no header line\)$"),
        ("\n\n", None, r"empty file \(no header line\)$"),
        ("x,z\n1,2\n", None, r"no column 'y' \(columns: x, z\)$"),
        ("x;y\n1;2\n", None, r"no column 'x' \(columns: x;y\) \(is ';' the separator\? fields must be separated by commas\)$"),
        ("x,y,y\n1,2,3\n", None, r"line 1: column 'y' appears 2 times in the header$"),
        # an unquoted thousands separator or decimal comma: more fields than the header
        ("x,y\n1,2\n2,1,234\n", None, r"line 3 has 3 fields but the header has 2 \(a number with a thousands separator or a decimal comma must be quoted: \"1,234\"\)$"),
        ("x,y\n1,2,\n", None, r"line 2 has 3 fields but the header has 2 \(a trailing comma\?\)$"),
        ("x,y\n1,2\n3\n", None, r"line 3 has 1 fields but the header has 2$"),
        ("x,y\n1,\"2\n", None, r"line 2: not a readable CSV \(unexpected end of data\)$"),
        ("x,y\n1,2\n", None, r"the context rule selects no context row$"),
        ("x,y,c\n1,2,true\n2,3,maybe\n", "c", r"line 3, column 'c': not a boolean: 'maybe'$"),
        ("x,y,c\n1,2,true\n2,3,true\n", "c", r"selects every row; no target is left$"),
        ("x,y\n1,2\n2,inf\n", None, r"line 3, column 'y': not a finite number: 'inf'$"),
    ],
)
def test_bad_user_csv_names_file_and_row(tmp_path, content, context, message):
    path = write(tmp_path, content)
    spec = {**SPEC, "csv": str(path), **({"context": context} if context else {})}
    with pytest.raises(TaskInputError, match=message) as info:
        user_task("user-t", spec)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(TaskInputError, match=r"nope\.csv: file not found$"):
        user_task("user-t", {**SPEC, "csv": str(tmp_path / "nope.csv")})


def test_user_csv_accepts_negative_large_values_unicode_and_multidim_x(tmp_path):
    path = write(tmp_path, "a,b,y\n-1,0,-3e11\n0,1,1e12\n1,1,2.5\n2,0,-0.5\n")
    task = user_task("user-t", {**SPEC, "csv": str(path), "x": ["a", "b"], "text": "Température ≥ 0 °C", "context": {"first": 2}})
    assert task.x_context.shape == (2, 2) and task.y_context[1] == 1e12
    assert Task.from_dataset(task.to_dataset()).text == "Température ≥ 0 °C"


def test_empty_y_rows_become_targets_without_truth(tmp_path):
    # The rows to predict have an empty y (or NA); without a context rule the rest is the context.
    path = write(tmp_path, "day,visitors_k\n1,10.5\n2,11.0\n3,\n4,12.5\n5,NA\n6, \n")
    task = user_task("user-t", {**SPEC, "csv": str(path), "x": "day", "y": "visitors_k", "empty_y": "predict", "context": None})
    assert task.x_context[:, 0].tolist() == [1, 2, 4] and task.y_context.tolist() == [10.5, 11.0, 12.5]
    assert task.x_target[:, 0].tolist() == [3, 5, 6] and np.isnan(task.y_target).all()
    # With a context rule: targets with and without truth side by side.
    path = write(tmp_path, "day,v,seen\n1,10,yes\n2,11,yes\n3,12,no\n4,,no\n")
    task = user_task("user-t", {**SPEC, "csv": str(path), "x": "day", "y": "v", "empty_y": "predict", "context": "seen"})
    assert task.y_context.tolist() == [10, 11] and task.y_target[0] == 12 and np.isnan(task.y_target[1])


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        ("x,y,c\n1,2,true\n2,,true\n3,,false\n", "c", r"line 3, column 'y': missing value in a context row \(only target rows may have an empty y\)$"),
        ("x,y\n1,2\n2,\n3,4\n", {"first": 2}, r"line 3, column 'y': missing value in a context row"),
        ("x,y\n1,2\n2,3\n", None, r"column 'y' has no empty cell, so no row is left to predict"),
        ("x,y\n1,\n2,\n", None, r"the context rule selects no context row$"),
        ("x,y\n1,2\n2,warm\n", None, r"line 3, column 'y': not a finite number: 'warm'$"),
    ],
)
def test_empty_y_in_a_context_row_is_an_error(tmp_path, content, context, message):
    spec = {**SPEC, "csv": str(write(tmp_path, content)), "empty_y": "predict", "context": context}
    with pytest.raises(TaskInputError, match=message):
        user_task("user-t", spec)


def test_schema_needs_a_context_rule_unless_empty_y_predicts():
    base = {"name": "t", "csv": "a.csv", "x": "x", "y": "y"}
    config = validate_config({**copy.deepcopy(TINY), "tasks": {"user": [{**base, "empty_y": "predict"}]}})
    assert "context" not in config["tasks"]["user"][0]
    with pytest.raises(ConfigError, match=r"^config error: tasks\.user\[0\]\.context: required key is missing$"):
        validate_config({**copy.deepcopy(TINY), "tasks": {"user": [base]}})


def test_replicate_x_are_kept(tmp_path):
    path = write(tmp_path, "x,y,c\n10,1.0,1\n20,2.0,1\n20,2.6,1\n30,3.0,1\n20,,0\n")
    task = user_task("user-t", {**SPEC, "csv": str(path), "empty_y": "predict", "context": "c"})
    assert task.x_context[:, 0].tolist() == [10, 20, 20, 30] and task.y_context.tolist() == [1.0, 2.0, 2.6, 3.0]


def test_header_spaces_bom_and_blank_rows_are_tolerated(tmp_path):
    # Spreadsheet exports: a byte-order mark, "day, visitors", trailing rows of empty cells.
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffday, visitors\n1, 5\n2,6\n\n3,7\n,\n,\n".encode())
    task = user_task("user-t", {**SPEC, "csv": str(path), "x": "day", "y": "visitors", "context": {"first": 2}})
    assert task.x_target[:, 0].tolist() == [3] and task.y_context.tolist() == [5, 6]
