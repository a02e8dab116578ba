"""A-LLMP sampler: cached and batched forwards against full forwards, prompt order, seeds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from llmflow import allmp, expert, llm

# A grammar a random model can meet: one digit, no sign, no decimals, no lead ("7\n").
EASY = dict(style="llmp", decimals=0, max_int_digits=1, allow_negative=False, layout="xy")
TEXT = "If x is greater than 4, y is 0."

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path):
    return llm.load_model("smollm2-135m", models_dir=smollm2_dir.parent)[0]


@pytest.fixture(scope="module")
def gemma(tokenizer):
    """A random float64 Gemma-3 over SmolLM2's vocabulary, a sliding-window layer (window 8,
    shorter than every prompt) and a full one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
    )).to(torch.float64).eval()


def _task(n_targets: int = 4, text: str = "") -> xr.Dataset:
    """Three context points, not sorted by x (append order sorts them); targets whose x have
    different digit counts, so that the samples' prompts differ in length at every step."""
    x = np.array([[2.0], [0.0], [1.0]])
    return xr.Dataset(
        {"x_context": (("context", "x_dim"), x), "y_context": (("context",), np.array([2.5, 1.25, 1.75])),
         "x_target": (("target", "x_dim"), np.array([[3.0], [10.0], [200.0], [4.0]])[:n_targets]),
         "y_target": (("target",), np.full(n_targets, np.nan))},
        attrs={"name": "toy-0", "family": "synth", "text": text})


def _rows_error(model, tokenizer, monkeypatch, task: xr.Dataset, cfg: expert.ExpertConfig,
                sampler: allmp.AllmpConfig, seed: int = 3) -> tuple[float, int]:
    """Sample ``task``; then, for every next-token row a draw used, the largest difference
    from a full forward (no cache) of the draw's prompt tokens plus the number's tokens so
    far; and the number of rows."""
    trees = []
    real = allmp._draw_number

    def spy(tree, tokens, *args):
        out = yield from real(tree, tokens, *args)
        trees.append((tree, tokens))
        return out

    monkeypatch.setattr(allmp, "_draw_number", spy)
    ds = allmp.sample_allmp(model, tokenizer, task, cfg, sampler, "m", seed, progress=False)
    assert ds.attrs["order"] == sampler.order and ds["y"].shape == (sampler.n_samples, task.sizes["target"])
    assert len(trees) == ds["y"].size
    restricted = cfg.prompt_style().restricted
    worst, n_rows = 0.0, 0
    with torch.inference_mode():
        for tree, tokens in trees:
            vocab = torch.tensor(tokens.vocab)
            for path, row in tree.logp.items():
                logits = model(input_ids=torch.tensor([[*tokens.shared_ids, *path]])).logits[:, -1]
                full = expert.token_logprobs(logits, vocab, restricted)[0].numpy()
                worst = max(worst, float(np.abs(full - row).max()))
                n_rows += 1
    return worst, n_rows


def test_rows_equal_full_forwards_smollm2(smol, tokenizer, monkeypatch):
    """SmolLM2 (float32), the default style (the number's lead ' ' shared with the query's
    forward, the LM head's number rows only): the rows two batched samples drew from equal
    full forwards of the explicit prompt's tokens."""
    sampler = allmp.AllmpConfig(n_samples=2)
    worst, n_rows = _rows_error(smol, tokenizer, monkeypatch, _task(2), expert.ExpertConfig(), sampler)
    assert n_rows > 10 and worst < 1e-4, worst


@pytest.mark.parametrize("order", ["append", "query"])
@pytest.mark.parametrize("rule", [False, True], ids=["plain", "rule"])
def test_rows_equal_full_forwards_sliding_window(gemma, tokenizer, monkeypatch, order, rule):
    """A Gemma-3 with a sliding window (float64), with and without the rule line before the
    query (its line is then run apart from the draw): rows equal full forwards to round-off."""
    cfg = expert.ExpertConfig(**EASY, use_text=rule, rule_before_query=rule)
    sampler = allmp.AllmpConfig(n_samples=3, max_retries=100, order=order)
    worst, n_rows = _rows_error(gemma, tokenizer, monkeypatch, _task(text=TEXT if rule else ""), cfg, sampler)
    assert n_rows > 30 and worst < 1e-9, worst


def test_append_order_grows_one_prompt(smol, tokenizer, monkeypatch):
    """append: the context in ascending x, then every drawn point as a new line in draw order."""
    prompts = []
    real = expert.number_tokens

    def spy(tok, prompt, *args):
        prompts.append(prompt)
        return real(tok, prompt, *args)

    monkeypatch.setattr(expert, "number_tokens", spy)
    sampler = allmp.AllmpConfig(n_samples=1)
    ds = allmp.sample_allmp(smol, tokenizer, _task(), expert.ExpertConfig(), sampler, "s", progress=False)
    assert prompts[0].startswith("0.00, 1.25\n1.00, 1.75\n2.00, 2.50\n")
    drawn = []
    for before, after in zip(prompts, prompts[1:]):
        query = before[before.rindex("\n") + 1:]  # "x*,"
        head = before[:len(before) - len(query)]
        line = after[len(head):after.rindex("\n") + 1]
        assert after.startswith(head) and re.fullmatch(re.escape(query) + r" -?\d+\.\d\d\n", line), line
        drawn.append(line.split()[-1])
    written = [expert.format_number(v, 2) for v in ds["y"].values[0]]
    assert len(drawn) == 3 and all(drawn.count(v) <= written.count(v) for v in drawn)


def test_seeds_and_batching(gemma, tokenizer):
    """Same seed: the same samples; another seed: others; a sample does not depend on how
    many samples run beside it."""
    task, cfg = _task(), expert.ExpertConfig(**EASY)

    def draw(seed: int, n: int, order: str = "append") -> np.ndarray:
        sampler = allmp.AllmpConfig(n_samples=n, max_retries=100, order=order)
        return allmp.sample_allmp(gemma, tokenizer, task, cfg, sampler, "g", seed, progress=False)["y"].values

    a = draw(1, 3)
    np.testing.assert_array_equal(a, draw(1, 3))
    np.testing.assert_array_equal(a[:2], draw(1, 2))
    assert not np.allclose(a, draw(2, 3), equal_nan=True)
    q = draw(1, 2, "query")
    np.testing.assert_array_equal(q, draw(1, 2, "query"))
    assert np.isfinite(q).any()
    # nor on the tasks drawn beside it (other prompts, targets and text; their own seeds)
    other = _task(2, text="y is small.").assign(y_context=("context", np.array([3.5, 0.25, 1.0])))
    sampler = allmp.AllmpConfig(n_samples=3, max_retries=100)
    both = allmp.sample_allmp_tasks(gemma, tokenizer, [other, task], cfg, sampler, "g", [4, 1], progress=False)
    np.testing.assert_array_equal(both[1]["y"].values, a)
    alone = allmp.sample_allmp(gemma, tokenizer, other, cfg, sampler, "g", 4, progress=False)
    np.testing.assert_array_equal(both[0]["y"].values, alone["y"].values)
    assert both[0]["y"].shape == (3, 2) and not np.array_equal(both[0]["y"].values, a[:, :2])


def test_order_is_checked():
    with pytest.raises(ValueError, match="allmp.order"):
        allmp.AllmpConfig(order="distance")


def test_flat_copies_shared_history_apart():
    """Two sequences grown from one flattened prefix keep their own tokens."""
    def kv(parent, ids):
        keys = torch.randn(2, 1, len(ids), 4)
        return allmp._Kv(parent, ids, keys, -keys)

    root = kv(kv(None, (1, 2)), (3, 4)).flat()  # room for 6 tokens
    a, b = kv(root, (5,)), kv(root, (6,))
    flat_a, flat_b = a.flat(), b.flat()
    for seq, flat in ((a, flat_a), (b, flat_b)):
        segs = seq.segments()
        assert flat.ids == sum((s.ids for s in segs), ()) and flat.n == seq.n
        torch.testing.assert_close(flat.keys, torch.cat([s.keys for s in segs], 2))
        torch.testing.assert_close(flat.values, -flat.keys)
