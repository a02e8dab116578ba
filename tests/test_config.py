"""Config validation: defaults are filled in, and each bad value is one line naming its key."""

import copy

import pytest
import yaml

from llmflow.config import ConfigError, validate_config

with open("tests/config.yaml") as fh:
    TINY = yaml.safe_load(fh)


def tiny() -> dict:
    return copy.deepcopy(TINY)


def test_defaults_are_filled_in():
    config = validate_config(tiny())
    assert config["prior"]["noise_std"] == [0.05, 0.05]
    assert config["prior"]["shards"]["train"] == 2
    assert config["device"] == "cpu"


def test_defaults_do_not_leak_between_configs():
    a = validate_config({"seed": 0, "prior": {k: v for k, v in TINY["prior"].items() if k != "shards"}})
    a["prior"]["shards"]["train"] = 99
    b = validate_config({"seed": 0, "prior": {k: v for k, v in TINY["prior"].items() if k != "shards"}})
    assert b["prior"]["shards"]["train"] == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["prior"].update(lengthscale=[-0.1, 1.0]), r"^config error: prior\.lengthscale\[0\]: -0\.1 is less than or equal to the minimum of 0$"),
        (lambda c: c["prior"].update(kernels=["se", "rbf"]), r"^config error: prior\.kernels\[1\]: 'rbf' is not one of"),
        (lambda c: c["prior"].update(n_points=[0, 4]), r"^config error: prior\.n_points\[0\]: 0 is less than the minimum of 1$"),
        (lambda c: c["prior"].pop("x_range"), r"^config error: prior\.x_range: required key is missing$"),
        (lambda c: c.pop("seed"), r"^config error: seed: required key is missing$"),
        (lambda c: c["prior"].update(lenghtscale=[0.1, 1]), r"^config error: prior: Additional properties are not allowed \('lenghtscale' was unexpected\)$"),
        (lambda c: c["prior"].update(x_range=[2.0, -2.0]), r"^config error: prior\.x_range: low end 2\.0 exceeds high end -2\.0$"),
        (lambda c: c.update(device="tpu"), r"^config error: device: 'tpu' is not one of"),
        (lambda c: c["prior"].update(x_dim="one"), r"^config error: prior\.x_dim: 'one' is not of type 'integer'$"),
    ],
)
def test_bad_values_name_their_key(edit, message):
    config = tiny()
    edit(config)
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(config)
    assert "\n" not in str(info.value)
