"""Prompts: how a task's text and context points are written for the LLM (``PromptStyle``).

A target's prompt is ``[text]\n x_1, y_1\n ... x_n, y_n\n x_*,`` and ends where the number
starts; the context is ordered by distance to the query (nearest last) or kept as given.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmflow.expert.numbers import format_number, to_llm_units

@dataclass(frozen=True)
class PromptStyle:
    """How numbers and prompts are written.

    ``lead``: text between the query's separator and the number, scored with the number: ``" "``
    (ours: the number keeps the token context it has in the context lines ``x, y``) or ``""``
    (the LLMP reference scores the number right after the comma). ``order``: ``distance``
    (farthest context point first, nearest last) or ``fixed`` (as given, so every target shares
    the context part of the prompt). ``layout``: ``plain`` lines ``x, y`` or ``xy`` lines
    ``x = x, y = y`` (the query ends ``x = x_*, y =``). ``preamble``: a fixed sentence before the
    text. ``text_numbers``: rewrite the text's values of x and y in the data's format (``y is 0``
    → ``y is 0.00``, in the LLM's units; see :func:`prepare_text`). ``rule_before_query``: the text again on the line
    before the query, where the model reads it last. ``chat``: the instructions (preamble and
    text) go into the tokenizer's chat template as the user turn and the data lines open the
    assistant turn (for instruct models). ``max_context``: only the nearest ``max_context``
    context points of each target are written (None: all), so that long data fits the model's
    window (:mod:`llmflow.expert.budget`).
    """

    name: str
    decimals: int
    x_decimals: int
    lead: str
    order: str
    rounding: str
    restricted: bool
    use_text: bool
    terminator: str = "\n"
    layout: str = "plain"
    preamble: str = ""
    text_numbers: bool = False
    rule_before_query: bool = False
    chat: bool = False
    max_context: int | None = None

    def __post_init__(self) -> None:
        if self.order not in ("distance", "fixed"):
            raise ValueError(f"expert.order must be distance or fixed, got {self.order!r}")
        if self.rounding not in ("truncate", "round"):
            raise ValueError(f"expert.rounding must be truncate or round, got {self.rounding!r}")
        if self.layout not in ("plain", "xy"):
            raise ValueError(f"expert.layout must be plain or xy, got {self.layout!r}")
        if self.decimals < 0 or self.x_decimals < 0:
            raise ValueError("expert.decimals and expert.x_decimals must be >= 0")
        if self.max_context is not None and self.max_context < 1:
            raise ValueError(f"expert.max_context must be >= 1 or null, got {self.max_context}")


STYLES: dict[str, PromptStyle] = {
    "default": PromptStyle("default", decimals=2, x_decimals=2, lead=" ",
                           order="distance", rounding="truncate", restricted=True, use_text=True),
    # Reproduces the LLMP reference scoring: x with 0 decimals, no space after the query comma,
    # Python rounding, softmax restricted to digits, '-', '.', '\n'; no text by default.
    "llmp": PromptStyle("llmp", decimals=2, x_decimals=0, lead="",
                        order="distance", rounding="round", restricted=True, use_text=False),
}


def prompt_style(name: str = "default", **overrides: Any) -> PromptStyle:
    """The named style with the non-None ``overrides`` applied."""
    if name not in STYLES:
        raise ValueError(f"expert.style must be one of {sorted(STYLES)}, got {name!r}")
    return dataclasses.replace(STYLES[name], **{k: v for k, v in overrides.items() if v is not None})



def check_context(x_context: np.ndarray, y_context: np.ndarray, x_target: np.ndarray) -> None:
    """Raise ValueError (one line, naming the array) on NaN/inf or mismatched shapes."""
    for name, arr in (("x_context", x_context), ("y_context", y_context), ("x_target", x_target)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(arr, dtype=float)).reshape(len(arr), -1).all(1))
        if bad.size:
            raise ValueError(f"{name} has NaN/inf at index {int(bad[0])}")
    if len(x_context) != len(y_context):
        raise ValueError(f"x_context has {len(x_context)} rows but y_context {len(y_context)}")


# A number the text states as a value: optional sign, digits, optional decimals, standing on
# its own. Not a number here: one glued to a word or symbol (`COVID-19`, `5%`, `x2`), a date
# or range (`2019-05`, `1953-1958`), thousands separators (`1,000`), scientific notation
# (`1.5e-1`), times and fractions (`10:30`, `1/2`), versions (`3.5.2`). A sentence's own
# `.` or `,` may follow it.
_VALUE = re.compile(r"(?:(?<=^)|(?<=[\s(\[=<>~]))-?\d+(?:\.\d+)?(?=$|[\s)\]]|[.,;:!?](?:\s|$))")
_VARIABLE = re.compile(r"\b([xy])\b")
_SENTENCE_END = re.compile(r"[.!?;](?:\s|$)|\n")


def prepare_text(text: str, style: PromptStyle, scale: float = 1.0, shift: float = 0.0) -> str:
    """The task's text as the LLM reads it: stripped, empty unless ``style.use_text``.

    With ``style.text_numbers`` a number that is a value of x or y is rewritten in the data's
    format: the variable named last before it in the same sentence decides which (y values are
    mapped into the LLM's units by ``(v - shift) / scale`` and written with ``decimals``
    decimals, x values with ``x_decimals``). So "If x is greater than 30, y is 0." reads "If x
    is greater than 30.00, y is 0.00." at 2 decimals. A number with no variable before it in
    its sentence, and anything that is not a plain number standing on its own (dates, ranges,
    thousands separators, scientific notation, numbers attached to other words: see
    ``_VALUE``), stays as written.
    """
    text = text.strip() if style.use_text else ""
    if not style.text_numbers:
        return text

    def rewrite(m: re.Match) -> str:
        ends = [e.end() for e in _SENTENCE_END.finditer(text, 0, m.start())]
        names = _VARIABLE.findall(text, ends[-1] if ends else 0, m.start())
        if not names:
            return m.group()
        value = float(m.group())
        if names[-1] == "y":
            return format_number(float(to_llm_units(np.array([value]), scale, shift)[0]),
                                 style.decimals, style.rounding)
        return format_number(value, style.x_decimals, "round")

    return _VALUE.sub(rewrite, text)


def chat_wrapper(tokenizer) -> Callable[[str], str]:
    """``message → prompt text`` of ``tokenizer``'s chat template: the user turn, then the
    opening of the assistant turn. A leading BOS that the tokenizer adds itself is dropped."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("expert.chat needs a tokenizer with a chat template (an instruct model)")
    bos = tokenizer.bos_token or ""
    adds_bos = bool(bos) and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]

    def wrap(message: str) -> str:
        out = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                            add_generation_prompt=True)
        return out[len(bos):] if adds_bos and out.startswith(bos) else out

    return wrap


def build_prompt(
    x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray, text: str, style: PromptStyle,
    chat: Callable[[str], str] | None = None,
) -> str:
    """Prompt for one target; it ends where the number starts.

    Shapes: ``x_context (n, D)``, ``y_context (n,)``, ``x_query (D,)``; y already in LLM units,
    ``text`` as :func:`prepare_text` returns it. With ``style.max_context`` only that many
    points nearest to ``x_query`` are written. With ``order='distance'`` the context is sorted
    by Euclidean distance to ``x_query``, farthest first, so the nearest point is the last line
    before the query; points at equal distance come in the order of the LLMP reference's
    ``np.flip(np.argsort(d))``. That order is numpy's default (introsort) argsort, dispatched by
    CPU: numpy 2.x on an AVX2 machine (the reference's run) gives one tie order, AVX-512 or no
    SIMD another. ``chat`` (:func:`chat_wrapper`) is required when ``style.chat``.
    """
    return "".join(prompt_parts(x_context, y_context, x_query, text, style, chat))


def prompt_parts(
    x_context: np.ndarray, y_context: np.ndarray, x_query: np.ndarray, text: str, style: PromptStyle,
    chat: Callable[[str], str] | None = None,
) -> tuple[str, str]:
    """:func:`build_prompt` in two parts: (instructions and context lines, up to and including
    the last line's terminator; the rule line if any and the query)."""
    x_context = np.asarray(x_context, dtype=float).reshape(len(y_context), -1)
    x_query = np.asarray(x_query, dtype=float).reshape(-1)
    order = np.arange(len(y_context))
    if style.order == "distance" or style.max_context is not None:
        dist = np.linalg.norm(x_context - x_query, axis=1)
        # The LLMP reference's own call, ties included: numpy's default (unstable) argsort,
        # whose tie order depends on numpy's version and the CPU's SIMD (see build_prompt).
        farthest_first = np.flip(np.argsort(dist))
        if style.max_context is not None:
            farthest_first = farthest_first[-style.max_context:]
        order = farthest_first if style.order == "distance" else np.sort(farthest_first)

    def fmt_x(x: np.ndarray) -> str:
        return ", ".join(format_number(v, style.x_decimals, "round") for v in x)

    def line(x: np.ndarray, y: str) -> str:  # a line without its y for the query
        if style.layout == "xy":
            return f"x = {fmt_x(x)}, y ={' ' + y if y else ''}"
        return f"{fmt_x(x)},{' ' + y if y else ''}"

    text = text.strip() if style.use_text else ""
    instructions = " ".join(part for part in (style.preamble.strip(), text) if part)
    lines = "".join(
        line(x_context[i], format_number(y_context[i], style.decimals, style.rounding)) + style.terminator
        for i in order
    )
    rule = f"{text}\n" if style.rule_before_query and text else ""
    query = f"{rule}{line(x_query, '')}"
    if style.chat:
        if chat is None:
            raise ValueError("a chat prompt style needs the tokenizer's chat wrapper")
        return f"{chat(instructions)}{lines}", query
    head = f"{instructions}\n" if instructions else ""
    return f"{head}{lines}", query

