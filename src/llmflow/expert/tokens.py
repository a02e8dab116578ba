"""Token view of numbers after a prompt: which tokens write each unit, and where scoring starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmflow.expert.numbers import DIGITS, TERM, UNITS

@dataclass(frozen=True)
class NumberTokens:
    """How ``prompt + lead + number + terminator`` tokenizes, for every number.

    ``shared_ids``: the prompt tokens common to every number, run once (KV-cached). A number's
    first unit u (a digit or ``-``) is written by ``leads[u]``: the token path from the shared
    prefix through the token carrying u (with SmolLM2 and lead ``" "``: ``'Ġ' '3'`` for 3 but
    the single token ``'Ġ-'`` for ``-``). Every later unit ``UNITS[j]`` is token
    ``unit_ids[j]``. ``vocab``: the token ids a restricted softmax runs over (units and leads).
    """

    shared_ids: tuple[int, ...]
    leads: dict[str, tuple[int, ...]]
    unit_ids: tuple[int, ...]
    vocab: tuple[int, ...]

    def ids(self, s: str) -> list[int]:
        """Tokens after ``shared_ids`` of the number prefix ``s`` (``TERM`` for the terminator)."""
        return [*self.leads[s[0]], *(self.unit_ids[UNITS.index(c)] for c in s[1:])]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def number_tokens(tokenizer, prompt: str, lead: str = "", terminator: str = "\n") -> NumberTokens:
    """Token view of the numbers written after ``prompt`` (see ``NumberTokens``).

    Probes tokenize ``prompt + lead + number + terminator`` as one string, exactly as brute
    force scores it, for numbers that use every unit in every position. Raises ValueError if a
    number character after the first does not get a token of its own (the digit trie needs a
    digit-splitting tokenizer).
    """
    probes = [f"{d}.5" for d in DIGITS] + ["-0.0", "-1234567890.0123456789", "9876543210", "-7"]
    prompt_ids = _encode(tokenizer, prompt)
    heads: dict[str, list[int]] = {}
    unit_ids: dict[str, int] = {}
    shared = len(prompt_ids)
    for probe in probes:
        ids = _encode(tokenizer, prompt + lead + probe + terminator)
        n_tail = len(probe)  # one token per later character, plus the terminator
        head, tail = ids[: len(ids) - n_tail], ids[len(ids) - n_tail:]
        ok = len(head) > 0 and heads.setdefault(probe[0], head) == head
        for unit, tok in zip([*probe[1:], TERM], tail):
            ok = ok and unit_ids.setdefault(unit, tok) == tok
        if not ok:
            raise ValueError(
                f"tokenizer does not give each character of {lead + probe + terminator!r} after "
                "the prompt its own token; the digit trie needs a digit-splitting tokenizer"
            )
        # Scoring starts where any number's tokens first differ from the prompt's own.
        shared = min(shared, _common(head, prompt_ids))
    for head in heads.values():
        shared = min(shared, len(head) - 1)
    shared_ids = tuple(prompt_ids[:shared])
    leads = {u: tuple(h[shared:]) for u, h in heads.items()}
    if any(tuple(h[:shared]) != shared_ids for h in heads.values()):
        raise ValueError("numbers after the prompt do not share its tokens; cannot score them")
    if len(set(unit_ids.values())) != len(unit_ids):
        raise ValueError("two number characters share a token; cannot score numbers")
    # '-' never follows a digit in a number, but a restricted softmax still offers it there.
    minus = _encode(tokenizer, prompt + lead + "5-" + terminator)
    unit_ids["-"] = minus[-2] if minus[-1] == unit_ids[TERM] else -1
    units = tuple(unit_ids[u] for u in UNITS)
    vocab = tuple(sorted({t for t in units if t >= 0} | {t for h in leads.values() for t in h}))
    return NumberTokens(shared_ids, leads, units, vocab)
