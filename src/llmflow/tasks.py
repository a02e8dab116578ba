"""Evaluation tasks: context/target splits of a function, each with a sentence of text.

A task is stored as ``results/tasks/{name}.zarr`` with ``x_context (context, x_dim)``,
``y_context (context)``, ``x_target (target, x_dim)``, ``y_target (target)`` (NaN where the truth is
unknown) and, for tasks whose text states something checkable, ``constraint_lo (target)`` and
``constraint_hi (target)``: a sample satisfies the text when every target lies in its interval
(±inf where the text says nothing). attrs: ``name``, ``family``, ``text``, and for GP draws the
true kernel (``kernel`` and its ``kernels.HYPERPARAMETERS``, ``noise_std``) so the exact GP
posterior can serve as the oracle.

Families (names are ``{family}-{id}``):
- ``gp``: held-out GP draws under the literature's protocol (see ``TaskConfig``).
- ``synth``: LLMP-style synthetic functions with Gaussian noise.
- ``text``: the text says something the context points do not show.
- ``real``: series shipped offline by statsmodels, each with a sentence of metadata.
- ``user``: a CSV and a sentence declared in the config.

Every task is a function of (config, seed, name) only, so tasks build in any order.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from llmflow.gp import sample_prior
from llmflow.kernels import Kernel

FAMILIES: tuple[str, ...] = ("gp", "synth", "text", "real", "user")


@dataclass
class Task:
    """One regression task. Shapes: x (n, D), y (n,); constraints (m,) in y units."""

    name: str
    family: str
    text: str
    x_context: np.ndarray
    y_context: np.ndarray
    x_target: np.ndarray
    y_target: np.ndarray
    constraint_lo: np.ndarray | None = None
    constraint_hi: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dataset(self) -> xr.Dataset:
        data = {
            "x_context": (("context", "x_dim"), np.asarray(self.x_context, dtype=np.float64)),
            "y_context": (("context",), np.asarray(self.y_context, dtype=np.float64)),
            "x_target": (("target", "x_dim"), np.asarray(self.x_target, dtype=np.float64)),
            "y_target": (("target",), np.asarray(self.y_target, dtype=np.float64)),
        }
        if self.constraint_lo is not None:
            data["constraint_lo"] = (("target",), np.asarray(self.constraint_lo, dtype=np.float64))
            data["constraint_hi"] = (("target",), np.asarray(self.constraint_hi, dtype=np.float64))
        attrs = {"name": self.name, "family": self.family, "text": self.text, **self.attrs}
        return xr.Dataset(data, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> Task:
        known = {"name", "family", "text"}
        return cls(
            name=ds.attrs["name"],
            family=ds.attrs["family"],
            text=ds.attrs["text"],
            x_context=ds["x_context"].values,
            y_context=ds["y_context"].values,
            x_target=ds["x_target"].values,
            y_target=ds["y_target"].values,
            constraint_lo=ds["constraint_lo"].values if "constraint_lo" in ds else None,
            constraint_hi=ds["constraint_hi"].values if "constraint_hi" in ds else None,
            attrs={k: v for k, v in ds.attrs.items() if k not in known},
        )

    def satisfies(self, samples: np.ndarray) -> np.ndarray:
        """Whether each sample (s, m) meets the text's constraint at every target. (s,) bool."""
        if self.constraint_lo is None:
            raise ValueError(f"task {self.name} states no checkable constraint")
        return np.all((samples >= self.constraint_lo) & (samples <= self.constraint_hi), axis=-1)


def task_rng(seed: int, name: str) -> np.random.Generator:
    """A random stream owned by one task (stable across Python runs, unlike ``hash``)."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def samples_dataset(task: Task, samples: np.ndarray, method: str, **attrs: object) -> xr.Dataset:
    """A method's samples of ``task`` as its sample store: ``y (sample, target)`` (data units),
    ``x_target (target, x_dim)``, attrs ``task``, ``method`` and ``attrs``."""
    return xr.Dataset(
        {"y": (("sample", "target"), samples), "x_target": (("target", "x_dim"), task.x_target)},
        attrs={"task": task.name, "method": method, **attrs},
    )


# --- held-out GP draws -------------------------------------------------------------------------

GP_PROTOCOL: dict[str, Kernel] = {
    # The literature's protocol: length-scale 0.25, variance 1, noise variance 0.05².
    "se": Kernel("se", lengthscale=0.25),
    "matern52": Kernel("matern52", lengthscale=0.25),
    "weakly_periodic": Kernel("weakly_periodic", lengthscale=0.5, period=0.25, periodic_lengthscale=1.0),
}
GP_NOISE_STD = 0.05


def gp_task(name: str, kernel_name: str, section: dict[str, Any], rng: np.random.Generator) -> Task:
    kernel = GP_PROTOCOL[kernel_name]
    n_ctx = int(rng.integers(section["n_context"][0], section["n_context"][1] + 1))
    n = n_ctx + section["n_target"]
    x = rng.uniform(*section["x_range"], size=(n, 1))
    y = sample_prior(kernel, x, GP_NOISE_STD, rng)[0]
    order = np.argsort(x[n_ctx:, 0]) + n_ctx  # targets left to right, for plotting
    return Task(
        name, "gp", "", x[:n_ctx], y[:n_ctx], x[order], y[order],
        attrs={"kernel": kernel.name, **kernel.hyperparameters(), "noise_std": GP_NOISE_STD},
    )


# --- LLMP-style synthetic functions (x in [0, 10]) --------------------------------------------

SYNTHETIC: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 4.0 / (1.0 + np.exp(-2.0 * (x - 5.0))) - 2.0,
    "square": lambda x: 0.08 * (x - 5.0) ** 2 - 1.0,
    "linear": lambda x: 0.4 * x - 2.0,
    "sine": lambda x: 1.5 * np.sin(1.2 * x),
    "beat": lambda x: 1.5 * np.sin(2.0 * x) * np.sin(0.3 * x),
    "log": lambda x: np.log(x + 0.5) - 1.0,
    "linear_cos": lambda x: 0.3 * x + np.cos(2.0 * x) - 1.5,
    "x_sin_x": lambda x: 0.3 * x * np.sin(x),
    "gaussian_wave": lambda x: 2.0 * np.exp(-0.1 * (x - 5.0) ** 2) * np.cos(2.5 * x),
}


def synthetic_task(name: str, fn: str, section: dict[str, Any], rng: np.random.Generator) -> Task:
    x = np.linspace(0.0, 10.0, section["n_points"])[:, None]
    y = SYNTHETIC[fn](x[:, 0]) + section["noise_std"] * rng.standard_normal(len(x))
    ctx = np.sort(rng.choice(len(x), size=section["n_context"], replace=False))
    tgt = np.setdiff1d(np.arange(len(x)), ctx)
    return Task(name, "synth", "", x[ctx], y[ctx], x[tgt], y[tgt], attrs={"function": fn})


# --- text-conditioned tasks --------------------------------------------------------------------


def _text_tasks() -> dict[str, Callable[[], Task]]:
    """Tasks whose text states a checkable fact that the context points do not show."""

    def zero_after_30() -> Task:
        # The paper's Figure 2: two context points, targets up to x = 57.
        x_t = np.arange(15.0, 58.0, 3.0)[:, None]
        lo = np.where(x_t[:, 0] > 30, -0.3, -np.inf)
        return Task(
            "", "text", "If x is greater than 30, y is 0.",
            np.array([[5.0], [12.0]]), np.array([2.31, 3.05]), x_t, np.full(len(x_t), np.nan),
            lo, -lo,
        )

    # The tasks with a known truth have 9-10 targets each: more tasks at the LLM expert's cost
    # per target, so the family's mean has a standard error.
    def positive() -> Task:
        x = np.linspace(0.0, 10.0, 21)[:, None]
        y = 0.8 + 0.7 * np.sin(0.9 * x[:, 0])  # positive everywhere, dips close to 0
        ctx = np.array([0, 3, 7])
        tgt = np.setdiff1d(np.arange(len(x)), ctx)[::2]  # keeps x = 5.5 (y = 0.12) in the dip
        return Task(
            "", "text", "y is always positive.",
            x[ctx], y[ctx], x[tgt], y[tgt], np.zeros(len(tgt)), np.full(len(tgt), np.inf),
        )

    def period() -> Task:
        x = np.linspace(0.0, 20.0, 41)[:, None]
        y = 2.0 * np.sin(2.0 * np.pi * x[:, 0] / 10.0)
        ctx = np.arange(0, 20, 2)  # the first period only
        tgt = np.arange(21, 41, 2)  # the second period
        return Task(
            "", "text", "y is periodic in x with period 10.",
            x[ctx], y[ctx], x[tgt], y[tgt], y[tgt] - 0.5, y[tgt] + 0.5,
        )

    def far_value() -> Task:
        x_t = np.linspace(10.0, 50.0, 9)[:, None]
        lo = np.where(x_t[:, 0] == 50.0, 3.7, -np.inf)
        hi = np.where(x_t[:, 0] == 50.0, 4.3, np.inf)
        return Task(
            "", "text", "At x = 50, y is 4.00.",
            np.array([[0.0], [3.0], [6.0]]), np.array([1.02, 1.35, 0.88]), x_t,
            np.full(len(x_t), np.nan), lo, hi,
        )

    def ceiling() -> Task:
        # A saturating rise: the context climbs steeply, so a trend extrapolated from it
        # crosses the ceiling that only the text states.
        x = np.arange(0.0, 12.5, 0.5)[:, None]
        y = 3.0 * (1.0 - np.exp(-x[:, 0] / 3.0))
        ctx = np.arange(0, 7)  # x = 0 .. 3
        tgt = np.arange(8, 25, 2)  # x = 4 .. 12
        return Task(
            "", "text", "y never exceeds 3.",
            x[ctx], y[ctx], x[tgt], y[tgt], np.full(len(tgt), -np.inf), np.full(len(tgt), 3.0),
        )

    def level() -> Task:
        # A shift the context cannot show: the oscillation around 1 moves to around 5 after x = 10.
        x = np.arange(0.0, 20.0, 1.0)[:, None]
        y = 1.0 + 0.5 * np.sin(x[:, 0]) + 4.0 * (x[:, 0] > 10)
        ctx = np.arange(0, 9)  # x = 0 .. 8
        tgt = np.arange(11, 20)  # x = 11 .. 19
        return Task(
            "", "text", "For x above 10, y is between 4 and 6.",
            x[ctx], y[ctx], x[tgt], y[tgt], np.full(len(tgt), 4.0), np.full(len(tgt), 6.0),
        )

    return {t.__name__: t for t in (zero_after_30, positive, period, far_value, ceiling, level)}


TEXT_TASKS = _text_tasks()


# --- real series shipped with statsmodels ------------------------------------------------------

def _real_series(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, text) of a statsmodels dataset (read from the installed package, no network)."""
    from statsmodels import datasets

    if name == "co2":
        s = datasets.co2.load_pandas().data["co2"].resample("MS").mean().dropna()
        x = (s.index.year + (s.index.month - 1) / 12.0).to_numpy()
        return x, s.to_numpy(), "Monthly mean atmospheric CO2 at Mauna Loa in ppm; x is the year."
    if name == "sunspots":
        d = datasets.sunspots.load_pandas().data
        return d["YEAR"].to_numpy(), d["SUNACTIVITY"].to_numpy(), (
            "Yearly mean sunspot number; x is the year; the solar cycle is about 11 years."
        )
    if name == "nile":
        d = datasets.nile.load_pandas().data
        return d["year"].to_numpy(), d["volume"].to_numpy(), (
            "Annual flow of the river Nile at Aswan in 10^8 cubic metres; x is the year."
        )
    if name == "elnino":
        d = datasets.elnino.load_pandas().data.set_index("YEAR")
        y = d.to_numpy().ravel()
        x = (d.index.to_numpy()[:, None] + np.arange(12)[None, :] / 12.0).ravel()
        return x, y, "Monthly sea surface temperature in the El Nino region in degrees Celsius; x is the year."
    raise ValueError(f"unknown real series {name!r}")


REAL_SERIES: tuple[str, ...] = ("co2", "sunspots", "nile", "elnino")


def real_task(name: str, series: str, section: dict[str, Any]) -> Task:
    """The last ``n_points`` of the series (every ``stride``-th), the first part as context."""
    x, y, text = _real_series(series)
    x, y = x[::-1][:: section["stride"][series]][::-1], y[::-1][:: section["stride"][series]][::-1]
    x, y = x[-section["n_points"] :], y[-section["n_points"] :]
    n_ctx = max(1, int(round(section["context_fraction"] * len(x))))
    return Task(name, "real", text, x[:n_ctx, None], y[:n_ctx], x[n_ctx:, None], y[n_ctx:], attrs={"series": series})


# --- user tasks from a CSV ---------------------------------------------------------------------


class TaskInputError(ValueError):
    """A user task that cannot be used; the message names the file and the row."""


# Cells that mean "no value": empty (what spreadsheets and pandas write) and the NA spellings.
MISSING: tuple[str, ...] = ("", "nan", "NaN", "NA")


@dataclass(frozen=True)
class Table:
    """A CSV as text: column names (stripped), cells (rows × columns), the line each row starts on."""

    columns: list[str]
    cells: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        k = self.columns.index(name)
        return [row[k] for row in self.cells]


def read_table(path: Path, where: str) -> Table:
    """Read a comma-separated file as text, row by row, keeping each row's line in the file.

    Blank lines and rows whose every cell is empty are skipped (spreadsheets append such rows);
    a UTF-8 byte-order mark is dropped and column names are stripped (``day, visitors`` names
    ``visitors``). Raises TaskInputError (one line, prefixed ``where``) for a file that is not
    UTF-8 or not CSV, an empty file, and a row with more or fewer fields than the header, which
    is what an unquoted thousands separator (``1,234``) or decimal comma makes.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TaskInputError(f"{where}: not a readable CSV (not UTF-8: byte 0x{err.object[err.start]:02x} "
                             f"at offset {err.start}; save it as UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            if any(f.strip() for f in fields):
                records.append((start, fields))
    except csv.Error as err:
        raise TaskInputError(f"{where}: line {reader.line_num}: not a readable CSV ({err})") from None
    if not records:
        raise TaskInputError(f"{where}: empty file (no header line)")
    (_, header), rows = records[0], records[1:]
    for line, fields in rows:
        if len(fields) != len(header):
            extra = fields[len(header):]
            hint = ("" if not extra else " (a trailing comma?)" if not any(f.strip() for f in extra)
                    else " (a number with a thousands separator or a decimal comma must be quoted: \"1,234\")")
            raise TaskInputError(f"{where}: line {line} has {len(fields)} fields but the header has {len(header)}{hint}")
    return Table([h.strip() for h in header], [f for _, f in rows], [line for line, _ in rows])


def _numbers(table: Table, col: str, where: str, missing_ok: bool = False, hint: str = "") -> np.ndarray:
    """Column ``col`` as floats (n,); a MISSING cell is NaN when ``missing_ok``, else an error."""
    out = np.empty(len(table.cells))
    for i, cell in enumerate(table.column(col)):
        text = cell.strip()
        if text in MISSING:
            if not missing_ok:
                raise TaskInputError(f"{where}: line {table.lines[i]}, column {col!r}: missing value{hint}")
            out[i] = np.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            out[i] = np.nan
        if not np.isfinite(out[i]):
            raise TaskInputError(f"{where}: line {table.lines[i]}, column {col!r}: not a finite number: {cell!r}")
    return out


def user_task(name: str, spec: dict[str, Any], base_dir: Path = Path(".")) -> Task:
    """A task from ``spec = {name, csv, x, y, text, context, empty_y}`` (see the config schema).

    ``x`` is a column name or a list of them (multi-dimensional x); ``context`` is the name of
    a boolean column, ``{fraction: f}`` (the first f of the rows in file order) or
    ``{first: n}``. With ``empty_y: predict`` a row whose y is empty (a MISSING cell) is a target
    without truth (``y_target`` NaN) and ``context`` may be left out: the context is then every
    row with a y; an empty y in a context row stays an error. Rows may repeat an x (replicates).
    Rows are reported by their line in the file (the header is line 1).
    """
    path = Path(spec["csv"])
    path = path if path.is_absolute() else base_dir / path
    where = f"user task {spec['name']!r}: {path}"
    if not path.is_file():
        raise TaskInputError(f"{where}: file not found")
    table = read_table(path, where)
    x_cols = [spec["x"]] if isinstance(spec["x"], str) else list(spec["x"])
    y_col, rule = spec["y"], spec.get("context")
    predict_empty = spec.get("empty_y", "error") == "predict"
    for col in [*x_cols, y_col] + ([rule] if isinstance(rule, str) else []):
        if col not in table.columns:
            alone = table.columns[0] if len(table.columns) == 1 else ""
            sep = next((f" (is {s!r} the separator? fields must be separated by commas)" for s in (";", "\t") if s in alone), "")
            raise TaskInputError(f"{where}: no column {col!r} (columns: {', '.join(table.columns)}){sep}")
        if table.columns.count(col) > 1:
            raise TaskInputError(f"{where}: line 1: column {col!r} appears {table.columns.count(col)} times in the header")
    if not table.cells:
        raise TaskInputError(f"{where}: no data rows")
    x = np.stack([_numbers(table, c, where) for c in x_cols], axis=1)
    y = _numbers(table, y_col, where, missing_ok=predict_empty,
                 hint=" (to predict rows whose y is empty, set empty_y: predict)")
    empty = np.isnan(y)
    if rule is None:
        if not empty.any():
            raise TaskInputError(f"{where}: column {y_col!r} has no empty cell, so no row is left to predict "
                                 "(without a context rule the targets are the rows whose y is empty)")
        is_ctx = ~empty
    else:
        is_ctx = _context_rows(table, rule, where)
        if (is_ctx & empty).any():
            line = table.lines[int(np.flatnonzero(is_ctx & empty)[0])]
            raise TaskInputError(f"{where}: line {line}, column {y_col!r}: missing value in a context row "
                                 f"(only target rows may have an empty y)")
    if is_ctx.sum() < 1:
        raise TaskInputError(f"{where}: the context rule selects no context row")
    if is_ctx.all():
        raise TaskInputError(f"{where}: the context rule selects every row; no target is left")
    return Task(
        name, "user", spec.get("text", ""), x[is_ctx], y[is_ctx], x[~is_ctx], y[~is_ctx],
        attrs={"csv": str(path), "x_columns": ",".join(x_cols), "y_column": y_col},
    )


def _context_rows(table: Table, rule: str | dict[str, float], where: str) -> np.ndarray:
    if isinstance(rule, str):
        truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        flags = np.empty(len(table.cells), dtype=bool)
        for i, cell in enumerate(table.column(rule)):
            if cell.strip().lower() not in truth:
                raise TaskInputError(f"{where}: line {table.lines[i]}, column {rule!r}: not a boolean: {cell!r}")
            flags[i] = truth[cell.strip().lower()]
        return flags
    n = len(table.cells)
    k = int(rule["first"]) if "first" in rule else int(np.floor(rule["fraction"] * n))
    return np.arange(n) < k


# --- the task list -----------------------------------------------------------------------------


def task_names(config: dict[str, Any]) -> list[str]:
    """Every task the config declares, in a fixed order."""
    section = config["tasks"]
    names = [f"gp-{k}-{i:03d}" for k in section["gp"]["kernels"] for i in range(section["gp"]["per_kernel"])]
    names += [f"synth-{fn}" for fn in section["synth"]["functions"]]
    names += [f"text-{t}" for t in section["text"]]
    names += [f"real-{s}" for s in section["real"]["series"]]
    names += [f"user-{u['name']}" for u in section["user"]]
    return names


def task_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The part of ``config`` that task ``name`` depends on (the seed and its own family's
    settings, and a built-in task's :func:`task_digest`; a user task's own entry), which
    :func:`build_task` accepts in place of the whole config: the workflow rebuilds a task only
    when this changes, so declaring one more user task leaves every other task (and what was
    computed from it) as it is."""
    section = config["tasks"]
    family, _, ident = name.partition("-")
    if family == "user":  # defined by its entry and its CSV (an input of the workflow's rule)
        return {"seed": config["seed"], "tasks": {family: [next(u for u in section["user"] if u["name"] == ident)]}}
    key = {"seed": config["seed"], "tasks": {family: [ident] if family == "text" else section[family]}}
    # A built-in task is defined by code as much as by config (a text task by code alone): the
    # digest of what it builds is part of the key, so a results folder rebuilds it (and what
    # was computed from it) when its definition changes. Building one takes about a millisecond.
    key["definition"] = task_digest(build_task(name, key))
    return key


def task_digest(task: Task) -> str:
    """SHA-256 (hex) of a task's text, points and constraints."""
    h = hashlib.sha256(task.text.encode())
    for a in (task.x_context, task.y_context, task.x_target, task.y_target, task.constraint_lo, task.constraint_hi):
        if a is not None:
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def build_task(name: str, config: dict[str, Any], base_dir: Path = Path(".")) -> Task:
    """The task called ``name`` under ``config`` (deterministic in the config's seed)."""
    section = config["tasks"]
    family, _, ident = name.partition("-")
    rng = task_rng(config["seed"], name)
    if family == "gp":
        kernel_name = ident.rsplit("-", 1)[0]
        return gp_task(name, kernel_name, section["gp"], rng)
    if family == "synth":
        return synthetic_task(name, ident, section["synth"], rng)
    if family == "text":
        task = TEXT_TASKS[ident]()
        task.name = name
        return task
    if family == "real":
        return real_task(name, ident, section["real"])
    if family == "user":
        spec = next(u for u in section["user"] if u["name"] == ident)
        return user_task(name, spec, base_dir)
    raise ValueError(f"unknown task {name!r}")


def check_user_tasks(config: dict[str, Any], base_dir: Path = Path(".")) -> None:
    """Read every user CSV once at start, so a bad file stops the run before any job."""
    for spec in config["tasks"]["user"]:
        user_task(f"user-{spec['name']}", spec, base_dir)


def task_seed(seed: int, name: str) -> int:
    """An integer seed owned by one task, for torch generators."""
    return int(task_rng(seed, name).integers(2**31 - 1))
