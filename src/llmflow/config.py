"""Config validation against the workflow's JSON schema (draft 2020-12), with defaults filled in.

Errors are reduced to one line naming the offending key path (``prior.lengthscale[0]``), so a
user sees what to fix before any job runs.

Values typed on the command line arrive as strings below the top level (Snakemake parses
``--config 'sample={"n_samples": 8}'`` with YAML's base loader, so the 8 is ``'8'``); a string
that the schema does not take as a string but that parses as one of the types it does take
becomes that value before validation (:func:`coerce_strings`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, get_type_hints

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that the workflow cannot use; the message is one line naming the key."""


class Section:
    """Base of the frozen dataclass of one config section (``KEY``: its path, ``sampler.smc``).

    The convention: the dataclass's fields are the section's schema properties, with the
    schema's defaults, plus the ``DERIVED`` fields that other sections set (the NDP's x_dim is
    ``prior.x_dim``); ``tests/test_config.py`` checks both. A function that takes one of these
    settings takes its default from the dataclass. :meth:`from_config` builds it from the
    validated section, rejecting keys it does not know, and builds nested sections the same way.
    """

    KEY: ClassVar[str]
    DERIVED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, section: Mapping[str, Any], **derived: Any) -> Self:
        """The dataclass of ``section`` (a validated config section) and the ``derived`` fields;
        ConfigError naming the key for a key that is not one of the section's settings."""
        hints = get_type_hints(cls)
        values = dict(derived)
        for name, value in section.items():
            if name not in hints or name in ("KEY", "DERIVED") or name in cls.DERIVED:
                raise ConfigError(f"config error: {cls.KEY}.{name}: not a setting of this section")
            kind = hints[name]
            if isinstance(kind, type) and issubclass(kind, Section):
                value = kind.from_config(value)
            elif isinstance(value, list):
                value = tuple(value)  # frozen: hashable and immutable like the rest
            values[name] = value
        return cls(**values)


def _fill_defaults(validator_class):
    """A validator class that writes each property's ``default`` into the instance first."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema) -> Iterator[ValidationError]:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _fill_defaults(Draft202012Validator)


def key_path(path: Any) -> str:
    """``['prior', 'lengthscale', 0]`` → ``prior.lengthscale[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(error: ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{key_path([*path, missing])}: required key is missing"
    if error.validator == "additionalProperties":
        return f"{key_path(path)}: {error.message}"
    return f"{key_path(path)}: {error.message}"


def _check_ranges(node: Any, schema: dict[str, Any], path: list) -> None:
    """Schema keyword ``x-range: true`` marks [low, high] pairs: low must not exceed high."""
    if isinstance(node, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in node:
                _check_ranges(node[name], sub, [*path, name])
    elif isinstance(node, list) and schema.get("x-range") and node[0] > node[1]:
        raise ConfigError(f"config error: {key_path(path)}: low end {node[0]} exceeds high end {node[1]}")


def check_consistency(config: dict[str, Any]) -> None:
    """What the schema cannot say: values that must agree with each other or with the disk.

    Run after :func:`validate_config` (defaults filled in). Raises ConfigError naming the key.
    """
    from llmflow.evaluate import allmp_tasks
    from llmflow.llm import EMBEDDED  # torch-heavy; the Snakefile imports it anyway
    from llmflow.tasks import task_names

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"config error: {key}: {message}")

    prior, ndp = config["prior"], config["ndp"]
    if prior["kernel_weights"] is not None and len(prior["kernel_weights"]) != len(prior["kernels"]):
        fail("prior.kernel_weights", f"{len(prior['kernel_weights'])} weights for {len(prior['kernels'])} kernels")
    if prior["trend_fraction"] > 0 and prior["slope_std"][1] <= 0:
        fail("prior.slope_std", f"{prior['slope_std']} gives no trend to the {prior['trend_fraction']} of functions that prior.trend_fraction asks for")
    if ndp["dim"] % ndp["heads"]:
        fail("ndp.heads", f"{ndp['heads']} does not divide ndp.dim = {ndp['dim']}")
    if ndp["rope"] and ndp["dim"] // ndp["heads"] < 2 * prior["x_dim"]:
        fail("ndp.rope", f"the head width ndp.dim / ndp.heads = {ndp['dim'] // ndp['heads']} has fewer than one feature pair per input coordinate "
             f"(prior.x_dim = {prior['x_dim']}); widen the heads or set ndp.rope: false")
    seen: set[str] = set()
    for i, spec in enumerate(config["tasks"]["user"]):
        if spec["name"] in seen:
            fail(f"tasks.user[{i}].name", f"{spec['name']!r} names another user task too")
        seen.add(spec["name"])
    names = task_names(config)
    if not names:
        fail("tasks", "declares no task")
    _check_tasks_fit_the_model(config, names, fail)
    if config["figures"]["task"] not in names:
        fail("figures.task", f"{config['figures']['task']!r} is not one of the configured tasks")
    if config["figures"]["task"] not in allmp_tasks([config["figures"]["task"]], config["allmp"]["tasks"]):
        fail("allmp.tasks", f"no pattern matches figures.task {config['figures']['task']!r} (Fig. 1 and 2 draw its A-LLMP samples)")
    model = config["llm"]["model"]
    folder = Path(model).expanduser()
    if model not in EMBEDDED and not (folder / "config.json").is_file():
        what = "no such folder" if not folder.is_dir() else "no config.json in it"
        fail("llm.model", f"{model!r} is neither an embedded model ({', '.join(EMBEDDED)}) "
                          f"nor a Hugging Face model folder ({what})")


# How far (a fraction of prior.x_range's width) an unrescaled task's x may reach beyond the
# range the NDP was trained on before the run refuses it (the network has never seen such x).
X_RANGE_MARGIN = 0.1


def _check_tasks_fit_the_model(config: dict[str, Any], names: list[str], fail) -> None:
    """Every task must be one the NDP can take: its x dimension is prior.x_dim, and tasks that
    are not mapped into the prior's frame (GP draws, the GP-oracle benchmark; see
    llmflow.frame.TaskFrame) keep x within prior.x_range up to X_RANGE_MARGIN of its width."""
    x_dim, (lo, hi) = config["prior"]["x_dim"], config["prior"]["x_range"]
    for i, spec in enumerate(config["tasks"]["user"]):
        cols = [spec["x"]] if isinstance(spec["x"], str) else spec["x"]
        if len(cols) != x_dim:
            fail(f"tasks.user[{i}].x", f"{len(cols)} x column(s) ({', '.join(cols)}) but prior.x_dim = {x_dim}: "
                                       f"the NDP takes {x_dim}-dimensional x (set prior.x_dim: {len(cols)} to train one for this task)")
    if x_dim != 1:
        leave_out = {"gp": "tasks.gp.per_kernel: 0", "synth": "tasks.synth.functions: []",
                     "text": "tasks.text: []", "real": "tasks.real.series: []"}
        for family, how in leave_out.items():
            if any(n.startswith(f"{family}-") for n in names):
                fail(f"tasks.{family}", f"its tasks have 1-dimensional x but prior.x_dim = {x_dim} (leave them out with {how})")
    margin = X_RANGE_MARGIN * (hi - lo)
    framed = [("bench.gp_oracle.x_range", config["bench"]["gp_oracle"]["x_range"])]
    if any(n.startswith("gp-") for n in names):
        framed.append(("tasks.gp.x_range", config["tasks"]["gp"]["x_range"]))
    for key, (a, b) in framed:
        if a < lo - margin or b > hi + margin:
            fail(key, f"[{a:g}, {b:g}] reaches beyond prior.x_range [{lo:g}, {hi:g}] by more than "
                      f"{X_RANGE_MARGIN:.0%} of its width (these tasks are not rescaled; the NDP never saw such x)")


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _branches(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """``schema`` and every subschema it admits a value through ($ref, oneOf, anyOf), flat."""
    if "$ref" in schema:
        schema = {**schema, **root["$defs"][schema["$ref"].rsplit("/", 1)[1]]}
    out = [schema]
    for key in ("oneOf", "anyOf"):
        for sub in schema.get(key, []):
            out += _branches(sub, root)
    return out


def _parse_scalar(text: str, branches: list[dict[str, Any]]) -> Any:
    """``text`` as the scalar the schema takes (null, boolean, integer, number), else unchanged."""
    types: set[str] = set()
    enum: list[Any] = []
    for b in branches:
        types |= {b["type"]} if isinstance(b.get("type"), str) else set(b.get("type", []))
        enum += b.get("enum", [])
    if "string" in types or text in enum:
        return text
    word = text.strip()
    if word.lower() in ("null", "~", "") and ("null" in types or None in enum):
        return None
    if word.lower() in ("true", "false") and "boolean" in types:
        return word.lower() == "true"
    if _INTEGER.fullmatch(word) and types & {"integer", "number"}:
        return int(word)
    if _NUMBER.fullmatch(word) and "number" in types:
        return float(word)
    return text


def coerce_strings(node: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """``node`` with every string the schema wants as another scalar type parsed as that type.

    Dicts and lists are changed in place (and returned); a string is returned as the value it
    parses to: ``'8'`` where the schema says integer is 8, ``'1e-3'`` for a number 0.001,
    ``'true'`` for a boolean True, ``'null'`` where null is allowed None. A string that does not
    parse stays, so validation names it. ``root``: the whole schema (for ``$ref``).
    """
    branches = _branches(schema, root)
    if isinstance(node, str):
        return _parse_scalar(node, branches)
    if isinstance(node, dict):
        for key, value in node.items():
            for b in branches:
                sub = b.get("properties", {}).get(key, b.get("additionalProperties"))
                if isinstance(sub, dict):
                    node[key] = coerce_strings(value, sub, root)
                    break
    elif isinstance(node, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), None)
        if items is not None:
            node[:] = [coerce_strings(v, items, root) for v in node]
    return node


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Coerce command-line strings (:func:`coerce_strings`), then validate ``config`` in place,
    fill in defaults, and return it.

    Raises ConfigError with a one-line message naming the first offending key.
    """
    schema = load_schema() if schema is None else schema
    coerce_strings(config, schema, schema)
    error = best_match(DefaultFillingValidator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(f"config error: {_describe(error)}")
    _check_ranges(config, schema, [])
    return config
