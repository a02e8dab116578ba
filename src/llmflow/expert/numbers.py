"""The number grammar the LLM writes: fixed-point strings, their intervals, the units of the trie.

A number string is ``[-]`` + integer digits (no leading zeros) + (``.`` + exactly ``decimals``
digits when ``decimals`` > 0) + the terminator. The trie walks it one *unit* at a time: a digit,
``-``, ``.`` or the terminator (``TERM`` here; the real terminator is a prompt-style string).

Bin semantics (``rounding``): ``truncate`` (our default) formats y by truncation toward zero,
so ``12.34`` is [12.34, 12.35) and ``-12.34`` is (-12.35, -12.34]; ``round`` (the LLMP
reference: the shortest repr of y as a decimal, rounded half to even) makes ``12.34``
[12.335, 12.345). Either way the strings partition the line and bins of width 10^-decimals
meet edge to edge.
"""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Context, Decimal

import numpy as np

DIGITS = "0123456789"
TERM = "$"  # internal symbol of the terminator unit (the real terminator is a config string)
UNITS: tuple[str, ...] = (*DIGITS, "-", ".", TERM)  # column order of unit log-probabilities
_WIDE = Context(prec=1000)  # every digit of any finite float at any decimals we write


def format_number(value: float, decimals: int, rounding: str = "truncate") -> str:
    """Fixed-point string of ``value``: never scientific, ``-`` for negatives (also ``-0.00``)."""
    if not math.isfinite(value):
        raise ValueError(f"cannot format non-finite number {value!r}")
    value = float(value) + 0.0  # -0.0 -> 0.0
    # Decimal(repr) works on the shortest decimal repr, so 0.29 stays 0.29 (not 0.28999...).
    step = Decimal(1).scaleb(-decimals)
    if rounding == "round":  # the reference's _float_to_str (but for -0.0): 2.675 -> 2.68, 0.125 -> 0.12
        return format(Decimal(repr(value)).quantize(step, ROUND_HALF_EVEN, _WIDE), "f")
    magnitude = Decimal(repr(abs(value))).quantize(step, ROUND_DOWN, _WIDE)
    return ("-" if value < 0 else "") + format(magnitude, "f")


def to_llm_units(y: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """``(y - shift) / scale`` element-wise, in decimal arithmetic on the values' shortest reprs,
    so a power-of-ten scale moves the point exactly: 0.00251 at scale 1e-4 is 25.1, where float
    division gives 25.099999999999998 (written "25.0" by truncation). NaN/inf pass through."""
    y = np.asarray(y, dtype=float)
    a, b = Decimal(repr(float(shift))), Decimal(repr(float(scale)))
    out = [float((Decimal(repr(float(v))) - a) / b) if math.isfinite(v) else float(v) for v in y.ravel()]
    return np.asarray(out, dtype=float).reshape(y.shape)


def number_interval(s: str, decimals: int, rounding: str = "truncate") -> tuple[float, float]:
    """Interval [lower, upper) of all values whose ``decimals``-formatted string starts with ``s``.

    ``s`` must hold its whole integer part: a complete number (``-12.34``, or ``12`` when
    ``decimals`` is 0) or a prefix ending at or after the point (``12.``, ``12.3``).
    """
    negative = s.startswith("-")
    body = s[1:] if negative else s
    int_part, _, frac = body.partition(".")
    if not int_part or not int_part.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a number (prefix) with a complete integer part: {s!r}")
    unit = 10.0 ** -len(frac)
    lo = int(int_part) + (int(frac) * unit if frac else 0.0)
    hi = lo + unit
    if rounding == "round":  # a rounded string covers [v - w/2, v + w/2) for the finest w
        half = 0.5 * 10.0 ** -decimals
        lo, hi = max(lo - half, 0.0), hi - half
    return (-hi, -lo) if negative else (lo, hi)


def prefix_intervals(s: str, decimals: int, max_int_digits: int,
                     rounding: str = "truncate") -> list[tuple[float, float]]:
    """Disjoint intervals [lower, upper) of all values whose string starts with the prefix ``s``.

    A prefix that holds its whole integer part (``19.``, ``19.3``) is one interval
    (:func:`number_interval`). One that does not (``19`` may still become ``19.5``, ``195.5``,
    ...; ``-`` any negative number) is a union, one interval per count of integer digits up to
    ``max_int_digits``: ``19`` with 3 digits at most is [19, 20) ∪ [190, 200).
    """
    negative = s.startswith("-")
    int_part = s[1:] if negative else s
    if "." in int_part:
        return [number_interval(s, decimals, rounding)]
    if int_part and not int_part.isdigit():
        raise ValueError(f"not a number prefix: {s!r}")
    if int_part:
        extra = 0 if int_part == "0" else max(max_int_digits - len(int_part), 0)
        v = int(int_part)
        pieces = [(float(v * 10**k), float((v + 1) * 10**k)) for k in range(extra + 1)]
    else:  # the sign alone: 1, 2, ... integer digits
        pieces = [(0.0 if n == 1 else 10.0 ** (n - 1), 10.0**n) for n in range(1, max_int_digits + 1)]
    if rounding == "round":  # as in number_interval: a rounded string's values sit half a step lower
        half = 0.5 * 10.0**-decimals
        pieces = [(max(lo - half, 0.0), hi - half) for lo, hi in pieces]
    return [(-hi, -lo) for lo, hi in pieces] if negative else pieces


def allowed_units(s: str, decimals: int, max_int_digits: int, allow_negative: bool) -> list[str]:
    """Units that may follow the prefix ``s`` of a number string."""
    body = s[1:] if s.startswith("-") else s
    if not body:
        return [*DIGITS, "-"] if allow_negative and not s else list(DIGITS)
    int_part, has_point, frac = body.partition(".")
    if has_point:
        return list(DIGITS) if len(frac) < decimals else [TERM]
    end = ["."] if decimals > 0 else [TERM]
    if int_part == "0" or len(int_part) >= max_int_digits:  # no leading zeros, bounded range
        return end
    return [*DIGITS, *end]

