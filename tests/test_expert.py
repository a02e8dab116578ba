"""I-LLMP expert: prompts, number formats, the digit trie against brute force, task datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from brute_force import score_strings
from llmflow import allmp, expert, llm
from llmflow.binned import BinnedDensity
from llmflow.cache import run_cached
from llmflow.io import write_zarr

STYLE = expert.prompt_style("default")


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="module")
def tiny_model(smol_tokenizer):
    """A randomly initialised 2-layer Llama (float64) over SmolLM2's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():  # sharpen the random logits so probabilities are far from uniform
        model.lm_head.weight.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def smol32(smollm2_dir: Path):
    return llm.load_model("smollm2-135m", models_dir=smollm2_dir.parent)


@pytest.fixture(scope="module")
def smol64(smollm2_dir: Path):
    return llm.load_model("smollm2-135m", models_dir=smollm2_dir.parent, dtype="float64")


def _texts(bins: expert.TrieResult, lead: str = " ") -> list[str]:
    return [lead + s + ("\n" if c else "") for s, c in zip(bins.strings, bins.complete)]


def _brute(model, tok, prompt, texts, restricted=True, lead=" "):
    tokens = expert.number_tokens(tok, prompt, lead)
    return score_strings(model, tok, prompt, texts,
                         restrict_to=tokens.vocab if restricted else None, batch_size=64)[0]


# ----------------------------------------------------------------------------- formats


def test_format_number_fixed_point_and_sign():
    assert expert.format_number(1e-7, 2) == "0.00"
    assert expert.format_number(123456789.0, 1) == "123456789.0"
    assert expert.format_number(0.29, 2) == "0.29"  # not 0.28 from 28.999... in binary
    assert expert.format_number(-0.003, 2) == "-0.00"
    assert expert.format_number(-1.239, 2) == "-1.23"  # truncation toward zero
    assert expert.format_number(-1.239, 2, "round") == "-1.24"
    assert expert.format_number(-0.0, 2) == "0.00"
    assert "e" not in expert.format_number(1e22, 2)


def test_round_is_the_llmp_references_formatting():
    # The reference writes Decimal(repr(v)) rounded half to even; f"{v:.2f}" would round the
    # binary value (2.675 is 2.67499999... in binary).
    assert expert.format_number(2.675, 2, "round") == "2.68"
    assert expert.format_number(0.125, 2, "round") == "0.12"
    assert expert.format_number(2.5, 0, "round") == "2"
    assert expert.format_number(-0.001, 2, "round") == "-0.00"
    assert expert.format_number(1e30, 2, "round") == "1" + "0" * 30 + ".00"


def test_number_interval_partitions_line():
    assert expert.number_interval("19.", 2) == (19.0, 20.0)
    assert expert.number_interval("-0.00", 2) == pytest.approx((-0.01, 0.0))
    lo, hi = expert.number_interval("12.34", 2, "round")
    assert (lo, hi) == pytest.approx((12.335, 12.345))
    for y in [-3.217, -0.004, 0.0, 0.009, 7.5]:  # the formatted string's bin holds the value
        for rounding in ("truncate", "round"):
            lo, hi = expert.number_interval(expert.format_number(y, 2, rounding), 2, rounding)
            assert lo <= y <= hi


def test_distance_order_puts_nearest_last():
    x = np.array([[0.0], [5.0], [9.0], [2.0]])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    prompt = expert.build_prompt(x, y, np.array([8.0]), "Some text.", STYLE)
    lines = prompt.splitlines()
    assert lines[0] == "Some text."
    assert lines[1:] == ["0.00, 1.00", "2.00, 4.00", "5.00, 2.00", "9.00, 3.00", "8.00,"]
    fixed = expert.build_prompt(x, y, np.array([8.0]), "", expert.prompt_style(order="fixed"))
    assert fixed.splitlines() == ["0.00, 1.00", "5.00, 2.00", "9.00, 3.00", "2.00, 4.00", "8.00,"]
    llmp = expert.build_prompt(x, y, np.array([8.0]), "ignored", expert.prompt_style("llmp"))
    assert llmp.splitlines() == ["0, 1.00", "2, 4.00", "5, 2.00", "9, 3.00", "8,"]


def test_bad_inputs_raise_one_line_errors(tiny_model, smol_tokenizer):
    task = _task(y=np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="y_context has NaN/inf at index 1"):
        expert.task_expert(tiny_model, smol_tokenizer, task, expert.ExpertConfig(), "tiny")
    task = _task(y=np.array([0.1, 0.3, 0.5]))
    with pytest.raises(ValueError, match="decimals=0") as err:
        expert.task_expert(tiny_model, smol_tokenizer, task, expert.ExpertConfig(decimals=0, rescale="none"), "tiny")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="rescale"):
        expert.task_expert(tiny_model, smol_tokenizer, task, expert.ExpertConfig(rescale="log"), "t")


# ----------------------------------------------------------------------------- trie


@pytest.mark.parametrize("restricted", [True, False])
def test_trie_equals_brute_force_tiny_model(tiny_model, smol_tokenizer, restricted: bool):
    prompt = "x, y\n1.00, -2.5\n2.00, 3.0\n3.00,"
    bins = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, lead=" ",
                                      threshold=0.0, max_int_digits=1, restricted=restricted)
    assert bins.complete.all() and len(bins.logp) == 2 * 10 * 10  # [-]d.d, all enumerated
    assert bins.lost_pruned == 0.0
    brute = _brute(tiny_model, smol_tokenizer, prompt, _texts(bins), restricted)
    np.testing.assert_allclose(bins.logp, brute, atol=1e-9, rtol=0)
    total = np.exp(bins.logp).sum() + bins.lost_mass
    assert total == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(bins.upper - bins.lower, 0.1, atol=1e-12)
    assert np.all(bins.lower[1:] >= bins.upper[:-1] - 1e-12)  # a partition, sorted


def test_restricted_softmax_only_renormalises(tiny_model, smol_tokenizer):
    prompt = "1.00, 2.5\n2.00, 3.5\n3.00,"
    kw = dict(lead=" ", threshold=0.0, max_int_digits=1)
    res = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, restricted=True, **kw)
    full = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, restricted=False, **kw)
    assert res.strings == full.strings
    # Each factor of a restricted softmax is the full one divided by the number tokens' mass.
    assert np.all(res.logp > full.logp) and full.lost_invalid > res.lost_invalid


def test_pruning_keeps_mass_in_coarse_bins(tiny_model, smol_tokenizer):
    prompt = "1.00, 2.5\n2.00, 3.0\n3.00,"
    kw = dict(lead=" ", max_int_digits=1)
    full = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, threshold=0.0, **kw)
    # Prefixes before the terminator are ~10x likelier than complete bins: prune about half.
    kw["threshold"] = float(10 * np.exp(np.median(full.logp)))
    coarse = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, coarse=True, **kw)
    fine = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, coarse=False, **kw)
    assert coarse.n_positions < full.n_positions
    for bins in (coarse, fine):
        assert np.exp(bins.logp).sum() + bins.lost_mass == pytest.approx(1.0, abs=1e-12)
    assert (~coarse.complete).any() and coarse.complete.any() and fine.complete.all()
    assert coarse.lost_pruned < fine.lost_pruned
    # A coarse bin's probability is its prefix's probability, scored by brute force too.
    texts = [" " + s + ("\n" if c else "") for s, c in zip(coarse.strings, coarse.complete)]
    brute = _brute(tiny_model, smol_tokenizer, prompt, texts)
    np.testing.assert_allclose(coarse.logp, brute, atol=1e-9, rtol=0)
    widths = coarse.upper - coarse.lower
    assert np.allclose(widths[coarse.complete], 0.1)
    assert np.all(widths[~coarse.complete] >= 0.1 - 1e-12)  # "2.3" without "\n", or "2."


def test_number_starts_where_the_prompt_ends(smol_tokenizer):
    """SmolLM2 writes "3,-" with one token ',-': the prompt keeps its ',' and the number is
    '-' '0' ... scored after it; the restricted softmax runs over 13 tokens, as the LLMP
    reference's (digits, '-', '.', '\n')."""
    tok = smol_tokenizer
    prompt = "1, -2.50\n2, 3.00\n3,"
    assert ",-" in tok.convert_ids_to_tokens(tok(prompt + "-0.4")["input_ids"])
    one = {c: tok.convert_tokens_to_ids(c) for c in "0123456789-."}
    assert expert.continuation_ids(tok, prompt, "-0.4\n") == [
        one["-"], one["0"], one["."], one["4"], tok.convert_tokens_to_ids("Ċ")]
    tokens = expert.number_tokens(tok, prompt)
    assert list(tokens.shared_ids) == tok(prompt)["input_ids"]
    assert tokens.leads == {u: (one[u],) for u in "0123456789-"}
    assert len(tokens.vocab) == 13 and set(one.values()) < set(tokens.vocab)
    # With the lead " " nothing merges across the boundary: ' -' is one token of the number.
    spaced = expert.number_tokens(tok, prompt, " ")
    assert spaced.leads["-"] == (tok.convert_tokens_to_ids("Ġ-"),)
    assert spaced.leads["3"] == (tok.convert_tokens_to_ids("Ġ"), one["3"])


@pytest.mark.parametrize("restricted", [True, False])
def test_trie_equals_brute_force_merged_minus(tiny_model, smol_tokenizer, restricted: bool):
    # The llmp style's query "3," then "-d.d": the ',-' token is split where the prompt ends.
    prompt = "1, -2.5\n2, 3.0\n3,"
    bins = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, lead="",
                                      threshold=0.0, max_int_digits=1, restricted=restricted)
    assert len(bins.logp) == 2 * 10 * 10 and bins.complete.all()
    brute = _brute(tiny_model, smol_tokenizer, prompt, _texts(bins, ""), restricted, "")
    np.testing.assert_allclose(bins.logp, brute, atol=1e-9, rtol=0)
    assert np.exp(bins.logp).sum() + bins.lost_mass == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("lead", ["", " "])
@pytest.mark.parametrize("restricted", [True, False])
def test_number_logprob_is_brute_force(tiny_model, smol_tokenizer, lead: str, restricted: bool):
    prompt = "1, -2.5\n2, 3.0\n3,"
    strings = ["-2.5", "3.1", "0.0", "-17.3"]
    lp = [expert.number_logprob(tiny_model, smol_tokenizer, prompt, s, lead=lead, restricted=restricted)
          for s in strings]
    brute = _brute(tiny_model, smol_tokenizer, prompt, [lead + s + "\n" for s in strings], restricted, lead)
    np.testing.assert_allclose(lp, brute, atol=1e-9, rtol=0)
    ids, per_token = expert.number_token_logprobs(tiny_model, smol_tokenizer, prompt, "-2.5", lead=lead)
    assert len(ids) == len(per_token) == 5 and np.all(per_token < 0)  # ['-' or ' -'] 2 . 5 \n
    for bad in ["", "1.", ".5", "1e3", "+1", "1,000"]:
        with pytest.raises(ValueError, match="not a number string"):
            expert.number_logprob(tiny_model, smol_tokenizer, prompt, bad)


def test_number_logprob_is_the_tries_bin(tiny_model, smol_tokenizer):
    prompt = "1, -2.5\n2, 3.0\n3,"
    bins = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, threshold=0.0,
                                      max_int_digits=2)
    for s in ["-2.5", "-17.3", "42.0"]:
        assert expert.number_logprob(tiny_model, smol_tokenizer, prompt, s) == \
            pytest.approx(bins.logp[bins.strings.index(s)], abs=1e-9)


def test_trie_equals_brute_force_smollm2(smol64):
    model, tok = smol64
    prompt = "1.00, -0.40\n2.00, 0.10\n3.00,"
    bins = expert.binned_distribution(model, tok, prompt, 2, lead=" ", threshold=2e-2,
                                      max_int_digits=1)
    assert bins.complete.any() and any(s.startswith("-") for s in bins.strings)
    # Brute force on the 8 likeliest bins, 4 random others and a coarse and a negative one.
    rng = np.random.default_rng(0)
    order = np.argsort(-bins.logp)
    pick = set(order[:8]) | set(rng.choice(order[8:], 4, replace=False))
    pick |= {np.flatnonzero(~bins.complete)[0], np.flatnonzero(bins.lower < 0)[0]}
    pick = sorted(int(i) for i in pick)
    brute = _brute(model, tok, prompt, [_texts(bins)[i] for i in pick])
    np.testing.assert_allclose(bins.logp[pick], brute, atol=1e-5, rtol=0)
    assert np.exp(bins.logp).sum() + bins.lost_mass == pytest.approx(1.0, abs=1e-9)


@pytest.fixture(scope="module")
def tiny_gemma(smol_tokenizer):
    """A random float64 Gemma-3 over SmolLM2's vocabulary with a sliding-window layer (window
    8, shorter than the prompts below) and a full one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
    )).to(torch.float64).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return model


def test_tree_attention_sliding_window_equals_brute_force(tiny_gemma, smol_tokenizer):
    """Every trie prefix shares one cache (tree attention); with a sliding window shorter than
    the prompt, each bin still equals its own string run alone."""
    prompt = "1.00, 2.5\n2.00, 3.0\n3.00, 1.5\n4.00,"
    bins = expert.binned_distribution(tiny_gemma, smol_tokenizer, prompt, 1, lead=" ",
                                      threshold=0.0, max_int_digits=2, truth="12.3")
    assert len(smol_tokenizer(prompt)["input_ids"]) > 8 and bins.complete.all()
    brute = _brute(tiny_gemma, smol_tokenizer, prompt, _texts(bins))
    np.testing.assert_allclose(bins.logp, brute, atol=1e-9, rtol=0)
    truth = _brute(tiny_gemma, smol_tokenizer, prompt, [" 12.3\n"])[0]
    assert bins.truth_logp == pytest.approx(truth, abs=1e-9)


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_gemma"])
def test_side_by_side_searches_equal_each_prompt_alone(model_name, smol_tokenizer, request):
    """Prompts of different lengths share one batched tree (padded rows, steps out of phase:
    the budgets and thresholds differ in effect per prompt); each result is the one its
    prompt gets alone, bin for bin, with its truth and its own count of positions."""
    model = request.getfixturevalue(model_name)
    prompts = ["1.00, 2.5\n2.00, 3.0\n3.00, 1.5\n4.00,", "7.00, -1.5\n8.00,",
               "1.00, 12.5\n2.00, 13.0\n3.00, 11.0\n4.00, 12.0\n5.00,"]
    truths = ["2.5", None, "12.1"]
    kw = dict(lead=" ", threshold=1e-3, max_nodes=25, max_int_digits=2, batch_size=7)
    together = expert.binned_distributions(model, smol_tokenizer, prompts, 1, truths=truths, **kw)
    pairs = expert.binned_distributions(model, smol_tokenizer, prompts, 1, truths=truths, prompts_per_forward=2, **kw)
    for prompt, truth, both, two in zip(prompts, truths, together, pairs):
        alone = expert.binned_distribution(model, smol_tokenizer, prompt, 1, truth=truth, **kw)
        for got in (both, two):
            assert got.strings == alone.strings and got.n_positions == alone.n_positions
            np.testing.assert_allclose(got.logp, alone.logp, atol=1e-12, rtol=0)
            assert got.lost_invalid == pytest.approx(alone.lost_invalid, abs=1e-12)
            assert got.truth_logp == pytest.approx(alone.truth_logp, abs=1e-12, nan_ok=True)
    assert len({len(smol_tokenizer(p)["input_ids"]) for p in prompts}) == 3  # padding is exercised
    assert len({r.n_expanded for r in together}) > 1 or len({len(r.logp) for r in together}) > 1


def test_prefix_intervals_of_incomplete_integer_parts():
    assert expert.prefix_intervals("19.3", 2, 3) == [pytest.approx((19.3, 19.4))]
    assert expert.prefix_intervals("19", 2, 3) == [(19.0, 20.0), (190.0, 200.0)]
    assert expert.prefix_intervals("0", 2, 3) == [(0.0, 1.0)]  # no leading zeros: 0.xx only
    assert expert.prefix_intervals("-4", 1, 2) == [(-5.0, -4.0), (-50.0, -40.0)]
    assert expert.prefix_intervals("-", 1, 3) == [(-10.0, -0.0), (-100.0, -10.0), (-1000.0, -100.0)]
    rounded = expert.prefix_intervals("19", 2, 3, "round")
    assert rounded == [pytest.approx((18.995, 19.995)), pytest.approx((189.995, 199.995))]


def test_budget_keeps_every_prefix_mass(tiny_model, smol_tokenizer):
    """A small node budget leaves prefixes unexpanded but loses no mass: each is a coarse bin
    (or one bin per possible digit count) carrying its exact probability; the integer parts are
    completed before any decimal is refined, and a larger budget only refines."""
    prompt = "1.00, 12.5\n2.00, 13.0\n3.00,"
    kw = dict(lead=" ", threshold=0.0, max_int_digits=3)
    full = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, max_nodes=None, **kw)
    small = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, max_nodes=6, **kw)
    more = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, max_nodes=40, **kw)
    for bins in (full, small, more):
        assert bins.lost_pruned == 0.0
        assert np.exp(bins.logp).sum() + bins.lost_invalid == pytest.approx(1.0, abs=1e-12)
        assert np.all(bins.lower[1:] >= bins.upper[:-1] - 1e-9)  # still a partition
    assert small.n_expanded == 6 and more.n_expanded == 40 and full.mass_union == 0.0
    assert small.mass_union > more.mass_union
    # Union bins: an unexpanded prefix's probability shared equally by its digit counts.
    union = [i for i, st in enumerate(small.strings) if small.strings.count(st) > 1]
    assert union
    brute = _brute(tiny_model, smol_tokenizer, prompt, [" " + small.strings[union[0]]])[0]
    pieces = small.strings.count(small.strings[union[0]])
    assert small.logp[union[0]] == pytest.approx(brute - np.log(pieces), abs=1e-9)
    # Integer part first: while a prefix without its integer part is left, no decimal has
    # been refined (every bin of the 6-node search ends at or before the point).
    assert all(st.partition(".")[2] == "" for st in small.strings)
    # The truth's own string is scored exactly, whatever the budget left unexpanded.
    truth = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, max_nodes=6,
                                       truth="13.5", **kw).truth_logp
    assert truth == pytest.approx(_brute(tiny_model, smol_tokenizer, prompt, [" 13.5\n"])[0], abs=1e-9)


def test_linear_trend_puts_mode_on_trend(smol32):
    model, tok = smol32
    x = np.arange(1.0, 9.0)[:, None]
    y = 3.0 * x[:, 0] + 2.0  # 5, 8, ..., 26 -> at x = 9 the trend says 29
    prompt = expert.build_prompt(x, y, np.array([9.0]), "", STYLE)
    bins = expert.binned_distribution(model, tok, prompt, STYLE.decimals, lead=" ",
                                      threshold=1e-2, max_int_digits=3)
    mode = bins.lower[np.argmax(np.exp(bins.logp) / (bins.upper - bins.lower))]
    assert abs(mode - 29.0) <= 3.0, (mode, bins.strings[:5])


# ----------------------------------------------------------------------------- tasks


def _task(y: np.ndarray | None = None, text: str = "", y_target: float = 2.755) -> xr.Dataset:
    y = np.array([1.25, 1.75, 2.5]) if y is None else y
    x = np.arange(len(y), dtype=float)[:, None]
    return xr.Dataset(
        {"x_context": (("context", "x_dim"), x), "y_context": (("context",), y),
         "x_target": (("target", "x_dim"), np.array([[3.0], [4.0]])),
         "y_target": (("target",), np.array([y_target, np.nan]))},
        attrs={"name": "toy-0", "family": "synth", "text": text})


def test_task_dataset_rescaled_padded_and_cached(tiny_model, smol_tokenizer, tmp_path: Path):
    # pow10 rescale: the LLM reads 12.5, 17.5, 25.0
    task = _task(y=np.array([0.00125, 0.00175, 0.0025]), y_target=0.00251)
    cfg = expert.ExpertConfig(rescale="pow10", rescale_digits=2, decimals=1, threshold=1e-5)
    ds = expert.task_expert(tiny_model, smol_tokenizer, task, cfg, "tiny", progress=False)
    assert ds.attrs["scale"] == pytest.approx(1e-4) and ds.attrs["model"] == "tiny"
    assert ds["lower"].dims == ("target", "bin") and ds.sizes["target"] == 2
    for j in range(2):
        ok = np.isfinite(ds["lower"].values[j])
        assert ok.any()
        assert np.all(np.isneginf(ds["logp"].values[j][~ok]))  # padding
        mass = np.exp(ds["logp"].values[j][ok]).sum() + float(ds["lost_mass"][j])
        assert mass == pytest.approx(1.0, abs=1e-9)
        assert np.nanmax(ds["upper"].values[j]) < 0.2  # edges back in data units (LLM: < 1000)
    assert np.isnan(ds["nll_target"][1])  # y_target unknown
    # nll_target is the truth string's own probability (the LLMP reference's NLL): the LLM
    # reads 0.00251 as 25.1, whose brute-force score gives the NLL per data unit.
    prompt = expert.task_prompts(smol_tokenizer, task, cfg).prompts[0]
    string_lp = _brute(tiny_model, smol_tokenizer, prompt, [" 25.1\n"])[0]
    assert float(ds["nll_target"][0]) == pytest.approx(-string_lp + np.log(0.1 * 1e-4), abs=1e-9)
    assert "17.5\n" in ds.attrs["prompt_example"]

    src = tmp_path / "tasks" / "toy-0.zarr"
    write_zarr(task, src)
    out = tmp_path / "expert" / "toy-0.zarr"
    calls = []

    def compute(tasks):
        calls.extend(t.attrs["name"] for t in tasks)
        return [{"i-llmp": expert.task_expert(tiny_model, smol_tokenizer, t, cfg, "tiny", progress=False)} for t in tasks]

    run_cached([str(src)], {"i-llmp": [str(out)]}, {"cfg": repr(cfg)}, compute, tmp_path / "cache")
    shutil.rmtree(out)  # Snakemake deletes a job's outputs before rerunning it
    run_cached([str(src)], {"i-llmp": [str(out)]}, {"cfg": repr(cfg)}, compute, tmp_path / "cache")
    assert calls == ["toy-0"]  # the rerun reused the cached result
    np.testing.assert_array_equal(xr.open_zarr(out)["logp"].values, ds["logp"].values)
    run_cached([str(src)], {"i-llmp": [str(out)]}, {"cfg": "other"}, compute, tmp_path / "cache")
    assert calls == ["toy-0", "toy-0"]  # other settings: recomputed


def test_allmp_samples_smollm2(smol32):
    model, tok = smol32
    task = _task()
    cfg = allmp.AllmpConfig(n_samples=2, temperature=1.0, top_p=0.9, max_retries=3)
    ds = allmp.sample_allmp(model, tok, task, expert.ExpertConfig(), cfg, "smollm2", seed=1, progress=False)
    assert ds["y"].shape == (2, 2) and ds["n_invalid"].shape == (2,)
    y = ds["y"].values
    assert np.isfinite(y).all()
    assert np.all((y > -100) & (y < 100))  # the grammar allows 2 integer digits for this context
    assert np.all(np.abs(y - 2.5) < 5), y  # the context says 1.25 .. 2.5


def test_allmp_temperature_and_top_p():
    rng = np.random.default_rng(0)
    logp = np.log([0.5, 0.3, 0.2])
    assert {allmp._draw(logp, 1.0, 0.5, rng) for _ in range(200)} == {0}
    assert {allmp._draw(logp, 1.0, 0.7, rng) for _ in range(400)} == {0, 1}
    draws = np.array([allmp._draw(logp, 1.0, 1.0, rng) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.5, 0.3, 0.2], atol=0.03)
    cold = np.array([allmp._draw(logp, 0.25, 1.0, rng) for _ in range(4000)])
    p = np.exp(logp / 0.25) / np.exp(logp / 0.25).sum()
    np.testing.assert_allclose(np.bincount(cold, minlength=3) / 4000, p, atol=0.03)


# ----------------------------------------------------------------------------- prompt options


def test_text_numbers_in_the_data_format():
    style = expert.prompt_style("default", text_numbers=True, x_decimals=0)
    assert expert.prepare_text(" If x is greater than 30, y is 0. ", style) == \
        "If x is greater than 30, y is 0.00."
    # y values go through the LLM's affine map, x values do not
    assert expert.prepare_text("At x = 50, y is 4.", style, scale=0.1, shift=1.0) == \
        "At x = 50, y is 30.00."
    assert expert.prepare_text("y is periodic in x with period 10.5.", style) == \
        "y is periodic in x with period 10."  # x format, rounded
    assert expert.prepare_text("y is -3.", style) == "y is -3.00."
    assert expert.prepare_text("x=3, y<-2.5 (y = 2)", style) == "x=3, y<-2.50 (y = 2.00)"
    plain = expert.prompt_style("default")
    assert expert.prepare_text(" y is 0. ", plain) == "y is 0."
    assert expert.prepare_text("y is 0.", expert.prompt_style("llmp")) == ""


@pytest.mark.parametrize("text", [
    "y never exceeds 1,000.",  # thousands separator
    "y is about 1.5e-1.",  # scientific notation
    "The gauge was installed 2019-05 and y is its level.",  # a date
    "Over 1953-1958 y fell.",  # a range
    "x is the year; the solar cycle is about 11 years.",  # no variable in its sentence
    "y is 5% of x2 since COVID-19, at 10:30 and 1/2 of x.",  # attached to a word or symbol
    "Version 3.5.2 of x.",
])
def test_text_numbers_keep_what_is_not_a_value_of_x_or_y(text: str):
    style = expert.prompt_style("default", text_numbers=True)
    assert expert.prepare_text(text, style, scale=0.1, shift=1.0) == text


def test_text_numbers_the_paper_example():
    style = expert.prompt_style("default", text_numbers=True)
    assert expert.prepare_text("If x is greater than 30, y is 0.", style) == \
        "If x is greater than 30.00, y is 0.00."
    # Only the values are rewritten where other numbers stand in the same text.
    assert expert.prepare_text("Since 2019-05 y never exceeds 1,000; at x = 4, y is 7.", style) == \
        "Since 2019-05 y never exceeds 1,000; at x = 4.00, y is 7.00."


def test_xy_layout_preamble_and_rule_before_query():
    style = expert.prompt_style("default", layout="xy", rule_before_query=True, x_decimals=0,
                                preamble="Pairs follow.")
    prompt = expert.build_prompt(np.array([[5.0], [12.0]]), np.array([2.31, 3.05]),
                                 np.array([40.0]), "y is 0.", style)
    assert prompt.splitlines() == ["Pairs follow. y is 0.", "x = 5, y = 2.31", "x = 12, y = 3.05",
                                   "y is 0.", "x = 40, y ="]
    # no text: no rule line, no empty head line
    bare = expert.build_prompt(np.array([[5.0]]), np.array([2.31]), np.array([40.0]), "",
                               expert.prompt_style("default", layout="xy", rule_before_query=True))
    assert bare == "x = 5.00, y = 2.31\nx = 40.00, y ="
    with pytest.raises(ValueError, match="layout"):
        expert.prompt_style("default", layout="table")


def test_chat_template_wraps_instructions_not_data(smol_tokenizer):
    style = expert.prompt_style("default", chat=True)
    wrap = expert.chat_wrapper(smol_tokenizer)
    prompt = expert.build_prompt(np.array([[1.0]]), np.array([2.5]), np.array([2.0]), "y is 0.",
                                 style, wrap)
    assert prompt.startswith("<|im_start|>") and "<|im_start|>user\ny is 0.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n1.00, 2.50\n2.00,")
    with pytest.raises(ValueError, match="chat wrapper"):
        expert.build_prompt(np.array([[1.0]]), np.array([2.5]), np.array([2.0]), "", style)


def test_xy_layout_trie_equals_brute_force(tiny_model, smol_tokenizer):
    # The number follows "y =" and a space token; the trie must score it as brute force does.
    style = expert.prompt_style("default", layout="xy", decimals=1, x_decimals=0)
    prompt = expert.build_prompt(np.array([[1.0], [2.0]]), np.array([-2.5, 3.0]),
                                 np.array([3.0]), "", style)
    assert prompt.endswith("x = 3, y =")
    bins = expert.binned_distribution(tiny_model, smol_tokenizer, prompt, 1, lead=style.lead,
                                      threshold=0.0, max_int_digits=1)
    brute = _brute(tiny_model, smol_tokenizer, prompt, _texts(bins))
    np.testing.assert_allclose(bins.logp, brute, atol=1e-9, rtol=0)


def test_expert_config_options_reach_the_prompt(tiny_model, smol_tokenizer):
    cfg = expert.ExpertConfig.from_config({"layout": "xy", "text_numbers": True, "x_decimals": 0,
                                           "rule_before_query": True, "threshold": 1e-4})
    ds = expert.task_expert(tiny_model, smol_tokenizer, _task(text="At x = 9, y is 7."), cfg,
                            "tiny", progress=False)
    assert ds.attrs["prompt_example"].splitlines() == [
        "At x = 9, y is 7.00.", "x = 0, y = 1.25", "x = 1, y = 1.75", "x = 2, y = 2.50",
        "At x = 9, y is 7.00.", "x = 3, y ="]
    assert ds.attrs["layout"] == "xy" and ds.attrs["text_numbers"] == 1


@pytest.mark.parametrize("y, scale, shift, y_llm", [
    (np.array([1.2e-6, 3.4e-6, 2.2e-6]), 1e-6, 0.0, [1.2, 3.4, 2.2]),  # tiny
    (np.array([120_000.0, 350_000.0, 480_000.0]), 1e5, 0.0, [1.2, 3.5, 4.8]),  # large
    (101_325.0 + np.array([-150.0, 0.0, 150.0]), 100.0, 101_300.0, [-1.25, 0.25, 1.75]),  # offset
    (np.array([-1.5e-6, 0.5e-6, 2e-6]), 1e-6, 0.0, [-1.5, 0.5, 2.0]),  # mixed sign
    (np.array([315.0, 350.0, 380.0]), 100.0, 0.0, [3.15, 3.5, 3.8]),  # a spread of 17%: no offset
    (np.array([5.0, 5.0, 5.0]), 1.0, 0.0, [5.0, 5.0, 5.0]),
])
def test_auto_rescale_shows_a_few_significant_digits(y, scale, shift, y_llm):
    assert expert.auto_affine(y) == (pytest.approx(scale), shift)
    mapped = expert.to_llm_units(y, *expert.auto_affine(y))
    np.testing.assert_array_equal(mapped, y_llm)  # exact in decimal, not 1.2499999
    strings = [expert.format_number(v, 2) for v in mapped]
    assert len(set(strings)) == len(set(y.tolist()))  # the LLM sees every distinct value


def test_offset_and_tiny_series_read_at_their_scale(smol32):
    """A pressure series near 101,325 Pa and a series near 1e-6 (the inputs that gave I-LLMP
    medians of 100 and 10,137 Pa, or stopped the expert): the bins sit where the data are, keep
    the LLM's number mass, and the truth's NLL is finite."""
    model, tok = smol32
    rng = np.random.default_rng(1)
    x = np.arange(14.0)
    for level, spread in ((101_325.0, 100.0), (3e-6, 1e-6)):
        y = level + spread * (np.sin(x / 2) + 0.1 * rng.standard_normal(len(x)))
        task = xr.Dataset(
            {"x_context": (("context", "x_dim"), x[:12, None]), "y_context": (("context",), y[:12]),
             "x_target": (("target", "x_dim"), x[12:, None]), "y_target": (("target",), y[12:])},
            attrs={"name": "series", "family": "user", "text": ""})
        ds = expert.task_expert(model, tok, task, expert.ExpertConfig(), "smol", progress=False)
        median = BinnedDensity.from_store(ds).quantiles(np.array([0.5]))[0, :, 0]
        assert np.all(np.abs(median - level) < 3 * spread), median
        kept = (np.exp(ds["logp"]).sum("bin") - ds["mass_union"]) / (1 - ds["lost_invalid"])
        assert float(kept.min()) > 0.99 and float(ds["lost_pruned"].max()) == 0.0
        assert np.isfinite(ds["nll_target"]).all()


def test_leave_one_out_densities_are_the_held_out_tasks_own(smol32):
    """Each held-out context point's density is what task_expert gives for the task with that
    point moved to the target (the same prompt settings), and the store carries them."""
    model, tok = smol32
    x = np.arange(8.0)
    y = np.round(2.0 + np.sin(x / 2), 2)
    task = xr.Dataset({"x_context": (("context", "x_dim"), x[:7, None]), "y_context": (("context",), y[:7]),
                       "x_target": (("target", "x_dim"), x[7:, None]), "y_target": (("target",), y[7:])},
                      attrs={"name": "loo", "family": "user", "text": ""})
    cfg = expert.ExpertConfig(threshold=0.05, loo_points=2)
    ds = expert.task_expert(model, tok, task, cfg, "smol", progress=False)
    assert list(expert.loo_indices(x[:7, None], 2)) == [0, 6]
    assert list(expert.loo_indices(x[[3, 1], None], 5)) == [0, 1] and len(expert.loo_indices(x[:1, None], 5)) == 0
    np.testing.assert_array_equal(ds["loo_x"].values[:, 0], [0.0, 6.0])
    density, x_held, y_held = BinnedDensity.loo_from_store(ds)
    np.testing.assert_array_equal(y_held, y[[0, 6]])
    for k, i in enumerate([0, 6]):
        keep = np.arange(7) != i
        sub = xr.Dataset({"x_context": (("context", "x_dim"), x[:7][keep, None]), "y_context": (("context",), y[:7][keep]),
                          "x_target": (("target", "x_dim"), x[i:i + 1, None]), "y_target": (("target",), y[i:i + 1])},
                         attrs=task.attrs)
        own = expert.task_expert(model, tok, sub, expert.ExpertConfig(threshold=0.05, loo_points=0), "smol", progress=False)
        n = own.sizes["bin"]
        # float32: batched with the task's other prompts, a prompt's scores differ from its
        # own run by round-off only (~1e-5 nats)
        np.testing.assert_allclose(ds["loo_lower"].values[k, :n], own["lower"].values[0])
        np.testing.assert_allclose(ds["loo_logp"].values[k, :n], own["logp"].values[0], rtol=0, atol=2e-4)
        np.testing.assert_allclose(ds["loo_nll"].values[k], own["nll_target"].values[0], rtol=0, atol=2e-4)
    assert "loo_x" not in expert.task_expert(model, tok, task, expert.ExpertConfig(threshold=0.05, loo_points=0),
                                             "smol", progress=False)
