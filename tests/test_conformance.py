"""The `llmp` prompt style against the LLMP reference's own output on SmolLM2 (float32).

Data: tests/data/conformance/ (see its README). Every stored prompt's text and token ids, every
target's NLL (to 1e-4) and each task's mean NLL must be reproduced, and the context ordered as
the reference orders it, ties included.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llmflow import expert, llm

DATA = Path(__file__).parent / "data" / "conformance" / "llmp_reference_smollm2.json"
REF = json.loads(DATA.read_text())
TASKS = {t["name"]: t for t in REF["tasks"]}
STYLE = expert.prompt_style("llmp")
FIXED = expert.prompt_style("llmp", order="fixed")  # the context exactly as given
BIN = STYLE.decimals * math.log(10)  # NLL = -log P(string) - decimals·ln 10 (density per unit y)
pytestmark = pytest.mark.usefixtures("one_thread")


def _context(task: dict) -> tuple[np.ndarray, np.ndarray]:
    """Context x (n, 1), y (n,) read back from the first stored prompt, in the file's order."""
    lines = task["first_targets"][0]["prompt"].split("\n")[:-1]
    y_of = {float(x): float(y) for x, y in (line.split(", ") for line in lines)}
    x = np.array(task["context_x_file_order"])
    return x[:, None], np.array([y_of[v] for v in x])


def _reference_prompt(task: dict, j: int) -> str:
    """Target j's prompt with the context in the order the reference used."""
    x, y = _context(task)
    order = task["reference_order"][j]
    return expert.build_prompt(x[order], y[order], np.array([task["x_test"][j]]), "", FIXED)


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path):
    return llm.load_model("smollm2-135m", models_dir=smollm2_dir.parent)  # float32, as the reference


@pytest.mark.parametrize("name", TASKS)
def test_distance_order_is_the_references(name: str):
    """Every target's context order, ties included, is the reference's np.flip(np.argsort(d))."""
    task = TASKS[name]
    x, y = _context(task)
    here = [np.flip(np.argsort(np.abs(x[:, 0] - xq))).tolist() for xq in task["x_test"]]
    if here != task["reference_order"]:
        pytest.skip("numpy here breaks distance ties otherwise than the reference's run "
                    "(numpy's default argsort is dispatched by CPU; the data is from AVX2)")
    for j, xq in enumerate(task["x_test"]):
        assert expert.build_prompt(x, y, np.array([xq]), "", STYLE) == _reference_prompt(task, j), j


@pytest.mark.parametrize("name", TASKS)
def test_stored_prompts_text_and_token_ids(name: str, smol):
    task = TASKS[name]
    _, tok = smol
    x, y = _context(task)
    for ft in task["first_targets"]:
        j = ft["index"]
        prompt = expert.build_prompt(x, y, np.array([ft["x"]]), "", STYLE)
        if np.flip(np.argsort(np.abs(x[:, 0] - ft["x"]))).tolist() != task["reference_order"][j]:
            prompt = _reference_prompt(task, j)  # numpy here breaks a tie otherwise (see above)
        assert prompt == ft["prompt"]
        s = expert.format_number(ft["y"], STYLE.decimals, STYLE.rounding)
        assert s + STYLE.terminator == ft["y_string"]
        tokens = expert.number_tokens(tok, prompt, STYLE.lead, STYLE.terminator)
        # The prompt keeps every one of its tokens; the number's are scored after them.
        assert len(tokens.shared_ids) == ft["y_token_range"][0]
        assert [*tokens.shared_ids, *tokens.ids(s + expert.TERM)] == ft["token_ids"]
        assert list(tokens.vocab) == task["allowed_token_ids"]  # 13: digits, '-', '.', '\n'
        ids, lp = expert.number_token_logprobs(*smol, prompt, s, lead=STYLE.lead, tokens=tokens)
        assert ids == ft["y_token_ids"]
        np.testing.assert_allclose(lp, ft["y_token_logprobs"], atol=1e-4, rtol=0)
        assert -lp.sum() - BIN == pytest.approx(ft["nll_with_bin_correction"], abs=1e-4)


def _score_in_sequence(model, prompts: list[list[int]], paths: list[list[int]],
                       vocab: list[int]) -> list[np.ndarray]:
    """Restricted-softmax log-probs (len(path),) of each path after its prompt's tokens. Each
    sequence reuses the previous one's KV cache for their common leading tokens (a view of its
    first k positions: SmolLM2's layers keep every position), which halves the test's cost."""
    vocab_t = torch.tensor(vocab)
    column = {t: i for i, t in enumerate(vocab)}
    out, previous, cache = [], [], None
    with torch.inference_mode():
        for prompt, path in zip(prompts, paths):
            seq = [*prompt, *path[:-1]]  # position t predicts token t + 1
            k = 0
            while k < min(len(seq), len(previous)) and seq[k] == previous[k]:
                k += 1
            k = min(k, len(prompt) - 1)  # the prompt's last position predicts the first token
            past = None
            if k and cache is not None:
                past = copy.copy(cache)
                past.layers = []
                for layer in cache.layers:
                    view = copy.copy(layer)
                    view.keys, view.values = layer.keys[:, :, :k], layer.values[:, :, :k]
                    past.layers.append(view)
            else:
                k = 0
            result = model(input_ids=torch.tensor([seq[k:]]), past_key_values=past, use_cache=True,
                           logits_to_keep=len(path))
            lp = torch.log_softmax(result.logits[0, :, vocab_t].double(), dim=-1).numpy()
            out.append(lp[np.arange(len(path)), [column[t] for t in path]])
            previous, cache = seq, result.past_key_values
    return out


@pytest.mark.parametrize("name", TASKS)
def test_every_target_nll_and_the_mean(name: str, smol):
    task = TASKS[name]
    model, tok = smol
    prompts, paths, vocab = [], [], None
    for j, yq in enumerate(task["y_test"]):
        prompt = _reference_prompt(task, j)
        s = expert.format_number(yq, STYLE.decimals, STYLE.rounding)
        assert s + STYLE.terminator == task["per_target_y_string"][j]
        tokens = expert.number_tokens(tok, prompt, STYLE.lead, STYLE.terminator)
        assert vocab in (None, tokens.vocab)
        vocab = tokens.vocab
        prompts.append(list(tokens.shared_ids))
        paths.append(tokens.ids(s + expert.TERM))
    nll = np.array([-lp.sum() - BIN for lp in _score_in_sequence(model, prompts, paths, list(vocab))])
    np.testing.assert_allclose(nll, task["per_target_nll"], atol=1e-4, rtol=0)
    assert nll.mean() == pytest.approx(task["avg_nll"], abs=1e-4)


def test_trie_bin_of_the_truth_is_the_references(smol):
    """The digit trie gives the truth's complete bin the reference's probability."""
    ft = TASKS["sigmoid_10"]["first_targets"][0]
    bins = expert.binned_distribution(*smol, ft["prompt"], STYLE.decimals, lead=STYLE.lead,
                                      threshold=1e-3, rounding=STYLE.rounding, max_int_digits=2)
    truth = bins.strings.index(ft["y_string"].rstrip("\n"))
    assert bins.complete[truth]
    assert bins.logp[truth] == pytest.approx(sum(ft["y_token_logprobs"]), abs=1e-4)
