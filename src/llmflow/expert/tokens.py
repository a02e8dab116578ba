"""Token view of numbers after a prompt: which tokens write each unit, and where scoring starts.

The prompt's own tokens (the prompt tokenized alone) are never scored. A number's tokens are
found by characters: ``prompt + text`` is tokenized as one string (what the model reads) and
the tokens covering the text's characters are the text's. Tokenizers merge across the
boundary (SmolLM2 and Gemma-3 have one token for ``,-``): such a token is split where the
prompt ends, and its part after the boundary is tokenized on its own, so ``"3," + "-0.40"`` is
scored as the prompt's ``','`` then ``'-' '0' '.' '4' '0'``: the minus sign gets its own
probability given the prompt (the LLMP reference instead scores the digits after the merged
``',-'`` and never the sign).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmflow.expert.numbers import DIGITS, TERM, UNITS


@dataclass(frozen=True)
class NumberTokens:
    """How ``lead + number + terminator`` tokenizes after a prompt, for every number.

    ``shared_ids``: the prompt's own tokens, common to every number, run once (KV-cached). A
    number's first unit u (a digit or ``-``) is written by ``leads[u]``: the token path from
    the prompt through the token carrying u (with SmolLM2 and lead ``" "``: ``'Ġ' '3'`` for 3
    but the single token ``'Ġ-'`` for ``-``). Every later unit ``UNITS[j]`` is token
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


def continuation_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """Tokens that write ``text`` after the prompt's own tokens ``_encode(prompt)``.

    ``prompt + text`` is tokenized as one string; every token that covers a character of
    ``text`` is the text's. A token covering characters on both sides of the boundary is split
    there: its part in ``text`` is tokenized on its own (no special tokens). So the result
    spells exactly ``text`` and the prompt keeps its own tokens. Zero-width special tokens
    (BOS, EOS) are never the text's. Raises ValueError for a tokenizer without offset
    mappings (a slow tokenizer) or an empty ``text``.
    """
    if not text:
        raise ValueError("nothing to tokenize after the prompt")
    try:
        enc = tokenizer(prompt + text, add_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError("the tokenizer gives no character offsets; a fast tokenizer is needed") from None
    boundary = len(prompt)
    ids: list[int] = []
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if end <= boundary or end == start:
            continue
        if start < boundary:  # merged across the boundary: keep only the text's part
            ids += tokenizer(text[:end - boundary], add_special_tokens=False)["input_ids"]
        else:
            ids.append(tok)
    return ids


def number_tokens(tokenizer, prompt: str, lead: str = "", terminator: str = "\n") -> NumberTokens:
    """Token view of the numbers written after ``prompt`` (see ``NumberTokens``).

    Probes tokenize ``lead + number + terminator`` after the prompt with
    :func:`continuation_ids` (as brute force scores it) for numbers that use every unit in
    every position. Raises ValueError if a number character after the first does not get a
    token of its own (the digit trie needs a digit-splitting tokenizer).
    """
    probes = [f"{d}.5" for d in DIGITS] + ["-0.0", "-1234567890.0123456789", "9876543210", "-7"]
    heads: dict[str, list[int]] = {}
    unit_ids: dict[str, int] = {}
    for probe in probes:
        ids = continuation_ids(tokenizer, prompt, lead + probe + terminator)
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
    if len(set(unit_ids.values())) != len(unit_ids):
        raise ValueError("two number characters share a token; cannot score numbers")
    # '-' never follows a digit in a number, but a restricted softmax still offers it there.
    minus = continuation_ids(tokenizer, prompt, lead + "5-" + terminator)
    unit_ids["-"] = minus[-2] if minus[-1] == unit_ids[TERM] else -1
    units = tuple(unit_ids[u] for u in UNITS)
    leads = {u: tuple(h) for u, h in heads.items()}
    vocab = tuple(sorted({t for t in units if t >= 0} | {t for h in leads.values() for t in h}))
    return NumberTokens(tuple(_encode(tokenizer, prompt)), leads, units, vocab)
