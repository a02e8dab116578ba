"""Model registry, materialisation and loading (no network)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from brute_force import score_strings
from llmflow import expert, llm


def test_hub_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_model_label():
    assert llm.model_label("smollm2-135m") == "smollm2-135m"
    assert llm.model_label("/models/Qwen3-4B-Instruct-2507/") == "Qwen3-4B-Instruct-2507"
    assert llm.model_label("/x/my model:v1") == "my_model_v1"


def test_missing_model_folder_is_one_line_error(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        llm.load_model(str(missing))
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="smollm2-135m"):
        llm.resolve_model_path("smollm2-135m", models_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown embedded model"):
        llm.materialise("gpt-17", tmp_path / "x")


def test_sha_mismatch_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bad = dataclasses.replace(llm.EMBEDDED["gemma3-270m"], sha256="0" * 64)
    monkeypatch.setitem(llm.EMBEDDED, "gemma3-270m", bad)
    with pytest.raises(ValueError, match="SHA-256"):
        llm.materialise("gemma3-270m", tmp_path / "gemma3-270m")
    assert list(tmp_path.iterdir()) == []  # no model folder, no temporary left behind
    # a killed earlier attempt's half-written folder is removed by the next attempt
    (tmp_path / ".tmp-99999-gemma3-270m" / "gguf").mkdir(parents=True)
    with pytest.raises(ValueError, match="SHA-256"):
        llm.materialise("gemma3-270m", tmp_path / "gemma3-270m")
    assert list(tmp_path.iterdir()) == []


def test_materialise_parses_the_gguf_once_into_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import gguf

    opened, original = [], gguf.GGUFReader

    def counting(path, mode="r"):
        opened.append(path)
        return original(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    once = llm.materialise("smollm2-135m", tmp_path / "once")
    assert len(opened) == 1
    monkeypatch.setattr(llm, "_gguf_read_once", contextlib.nullcontext)  # transformers' own reads
    anew = llm.materialise("smollm2-135m", tmp_path / "anew")
    assert len(opened) == 4
    for file in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (once / file).read_bytes() == (anew / file).read_bytes(), file


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_embedded_model_loads_and_splits_digits(name: str, request: pytest.FixtureRequest):
    folder = request.getfixturevalue("smollm2_dir" if name.startswith("smollm2") else "gemma_dir")
    assert (folder / llm.MARKER).is_file() and (folder / "config.json").is_file()
    assert llm.materialise(name, folder) == folder  # idempotent, nothing rebuilt
    model, tok = llm.load_model(name, models_dir=folder.parent)
    tokens = expert.number_tokens(tok, "x, y\n1.00, 2.50\n2.00,", lead=" ")
    assert len(set(tokens.unit_ids)) == len(expert.UNITS)
    ids = tok("1234567890", add_special_tokens=False)["input_ids"]
    assert len(ids) == 10  # one token per digit
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tok("1, 2\n3,")["input_ids"]])).logits
    assert torch.isfinite(logits).all()


def test_gemma_trie_equals_brute_force(gemma_dir: Path):
    model, tok = llm.load_model("gemma3-270m", models_dir=gemma_dir.parent, dtype="float64")
    prompt = "1.00, 3.10\n2.00, 3.30\n3.00,"
    bins = expert.binned_distribution(model, tok, prompt, 1, lead=" ", threshold=3e-2,
                                      max_int_digits=1)
    tokens = expert.number_tokens(tok, prompt, " ")
    texts = [" " + s + ("\n" if c else "") for s, c in zip(bins.strings, bins.complete)]
    brute, _ = score_strings(model, tok, prompt, texts, restrict_to=tokens.vocab, batch_size=16)
    np.testing.assert_allclose(bins.logp, brute, atol=1e-5, rtol=0)
    assert np.exp(bins.logp).sum() + bins.lost_mass == pytest.approx(1.0, abs=1e-9)
