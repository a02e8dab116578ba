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


# One frozen dataclass per config section (tasks and figures are read by the workflow itself;
# bench is a folder of benchmarks).
def _sections():
    from llmflow.allmp import AllmpConfig
    from llmflow.expert import ExpertConfig
    from llmflow.likelihood import LikelihoodConfig
    from llmflow.llm import LLMConfig
    from llmflow.ndp import NDPConfig
    from llmflow.oracle import OracleConfig
    from llmflow.predict import SampleConfig
    from llmflow.prior import PriorConfig
    from llmflow.sampler import SamplerConfig, SMCConfig
    from llmflow.train import TrainConfig

    return [PriorConfig, LLMConfig, ExpertConfig, AllmpConfig, SampleConfig, NDPConfig, TrainConfig, SamplerConfig,
            SMCConfig, OracleConfig, LikelihoodConfig]


def _schema_at(key: str) -> dict:
    from llmflow.config import load_schema

    node = load_schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node


@pytest.mark.parametrize("cls", _sections(), ids=lambda c: c.__name__)
def test_each_section_dataclass_is_its_schema(cls):
    import dataclasses

    schema = _schema_at(cls.KEY)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) - set(cls.DERIVED) == set(schema["properties"]), cls.KEY
    for name, prop in schema["properties"].items():
        field = fields[name]
        if "default" not in prop:
            assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, name
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):  # a nested section: the schema's {} is its defaults
            assert prop["default"] == {} and type(default).KEY == f"{cls.KEY}.{name}"
            continue
        want = tuple(prop["default"]) if isinstance(prop["default"], list) else prop["default"]
        assert default == want, (f"{cls.KEY}.{name}", default, want)


@pytest.mark.parametrize("cls", _sections(), ids=lambda c: c.__name__)
def test_each_section_dataclass_takes_the_validated_section_and_refuses_unknown_keys(cls):
    config = validate_config(yaml.safe_load(open("config.yaml")))
    section = config
    for part in cls.KEY.split("."):
        section = section[part]
    import dataclasses

    derived = {f.name: f.default for f in dataclasses.fields(cls) if f.name in cls.DERIVED}
    built = cls.from_config(section, **derived)
    assert isinstance(built, cls)
    with pytest.raises(ConfigError, match=rf"^config error: {cls.KEY}\.no_such_key: not a setting of this section$"):
        cls.from_config({**section, "no_such_key": 1}, **derived)
    for name in cls.DERIVED:  # set by another section, never by this one
        with pytest.raises(ConfigError, match=rf"{cls.KEY}\.{name}"):
            cls.from_config({**section, name: derived[name]}, **derived)
