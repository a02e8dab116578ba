"""Evaluation tasks: every family builds, deterministically; user CSVs are validated row by row."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmflow.config import validate_config
from llmflow.gp import posterior
from llmflow.kernels import Kernel
from llmflow.tasks import TaskInputError, Task, build_task, task_names, user_task

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


def test_user_task_from_csv(config):
    task = build_task("user-temperature", config)
    assert len(task.y_context) == 6 and len(task.y_target) == 6
    assert task.x_target[0, 0] == 7 and task.y_target[0] == 19.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return path


SPEC = {"name": "t", "x": "x", "y": "y", "text": "", "context": {"fraction": 0.5}}


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        ("x,y\n1,2\n2,nan\n3,4\n", None, r"data\.csv: line 3, column 'y': missing value$"),
        ("x,y\n1,2\n2,\n", None, r"line 3, column 'y': missing value$"),
        ("x,y\n1,2\nabc,3\n", None, r"line 3, column 'x': not a finite number: 'abc'$"),
        ("x,y\n1,2\n2,3\n1,5\n", None, r"line 4 repeats x = \[1\.0\] of line 2$"),
        ("x,y\n", None, r"no data rows$"),
        ("", None, r"not a readable CSV"),
        ("x,z\n1,2\n", None, r"no column 'y' \(columns: x, z\)$"),
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
