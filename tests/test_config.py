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


def test_command_line_strings_take_the_schema_type():
    # What Snakemake hands the workflow for nested --config values: every scalar a string.
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    config = tiny()
    update_config(config, parse_config([
        'sample={"n_samples": 8, "expert_weight": 1e-3}',
        'expert={"shards": 20, "restricted": "false", "decimals": null, "order": null, "rescale": {"scale": "0.5"}}',
        'prior={"x_range": [-1, 1.5]}',
        'bench={"gp_oracle": {"bayes_grid": {"period": 3}}}',
        'llm={"model": "smollm2-135m"}',
    ]))
    assert config["sample"]["n_samples"] == "8"  # as it arrives
    validate_config(config)
    assert config["sample"]["n_samples"] == 8 and type(config["sample"]["n_samples"]) is int
    assert config["sample"]["expert_weight"] == 1e-3
    assert config["expert"]["shards"] == 20 and config["expert"]["restricted"] is False
    assert config["expert"]["decimals"] is None and config["expert"]["order"] is None
    assert config["expert"]["rescale"] == {"scale": 0.5, "shift": 0}
    assert config["prior"]["x_range"] == [-1, 1.5]
    assert config["bench"]["gp_oracle"]["bayes_grid"]["period"] == 3
    assert config["llm"]["model"] == "smollm2-135m"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sample": {"n_samples": "eight"}}, r"^config error: sample\.n_samples: 'eight' is not of type 'integer'$"),
        ({"sample": {"n_samples": "8.5"}}, r"^config error: sample\.n_samples: '8\.5' is not of type 'integer'$"),
        ({"train": {"compile": "yes"}}, r"^config error: train\.compile: 'yes' is not of type 'boolean'$"),
        ({"device": "null"}, r"^config error: device: 'null' is not one of"),
    ],
)
def test_strings_that_do_not_parse_are_named(section, message):
    config = tiny()
    for key, value in section.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
