"""Will the prompts fit? Their tokens against the model's window and the memory they need.

Checked when the workflow starts (``check_prompt_lengths``), from the tasks and the config
only: no model or tokenizer is loaded. A prompt's tokens are bounded by its UTF-8 bytes (a
byte-level BPE or byte-fallback token covers at least one byte); with digits one per token the
bound is tight for the data lines that make a prompt long (``x, y`` lines: one token per byte;
``x = …, y = …`` lines: ~0.87).

Memory is dominated by the KV cache. The digit trie keeps one cache per prompt of a batch
(``expert.prompts_per_forward`` of them), the prompt's plus one position per expanded prefix
(``lm.TokenTree``: tree attention, the prompt is never copied); A-LLMP keeps a cache per sample
plus a batched copy, for every task drawn side by side (``allmp.tasks_per_forward``; measured
with SmolLM2 at a 2,000-token prompt: +5.7 GB for 64 rows). So
need ≈ weights + (rows + 1) · KV bytes per token · tokens, with prompts_per_forward − 1 rows for
the trie. The numbers themselves are checked here too (``task.llm_numbers``): a
context the LLM cannot read stops the run before any job.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmflow.expert.prompt import prepare_text, prompt_parts
from llmflow.expert.task import ExpertConfig, llm_numbers

CHAT_TOKENS = 64  # a chat template's own tokens (role markers): a bound, not the template


@dataclass(frozen=True)
class ModelShape:
    """What the budget needs of a causal LM, as its ``config.json`` states it.

    ``window``: positions the model was trained for (``max_position_embeddings``), tokens;
    ``full_layers`` keep every position in their KV cache, ``sliding_layers`` at most
    ``sliding_window``; ``kv_heads`` × ``head_dim`` values per key and per value; ``n_params``
    weights.
    """

    window: int
    full_layers: int
    sliding_layers: int
    sliding_window: int
    kv_heads: int
    head_dim: int
    n_params: int

    @classmethod
    def from_config(cls, config: dict[str, Any], n_params: int) -> ModelShape:
        """From a Hugging Face ``config.json`` dict (Gemma-3's ``text_config`` nested or not)."""
        config = config.get("text_config", config)
        layers = int(config["num_hidden_layers"])
        types = config.get("layer_types") or ["full_attention"] * layers
        sliding = sum(t == "sliding_attention" for t in types) if config.get("sliding_window") else 0
        heads = int(config["num_attention_heads"])
        return cls(
            window=int(config["max_position_embeddings"]),
            full_layers=layers - sliding,
            sliding_layers=sliding,
            sliding_window=int(config.get("sliding_window") or 0),
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            n_params=n_params,
        )

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """Bytes of one sequence's KV cache over ``tokens`` positions."""
        per_layer_position = 2 * self.kv_heads * self.head_dim * dtype_bytes
        kept = self.full_layers * tokens + self.sliding_layers * min(tokens, self.sliding_window)
        return per_layer_position * kept

    def memory(self, tokens: int, rows: int, dtype_bytes: int) -> int:
        """Bytes to run a ``tokens``-long prompt with ``rows`` continuations batched on its
        cache: the weights, the prompt's KV cache and a copy of it per row (see the module doc)."""
        return self.n_params * dtype_bytes + (rows + 1) * self.kv_bytes(tokens, dtype_bytes)


# The embedded models' config.json (tests check these against the materialised folders), known
# before they are materialised.
EMBEDDED_SHAPES: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape(window=8192, full_layers=30, sliding_layers=0, sliding_window=0,
                               kv_heads=3, head_dim=64, n_params=134_515_008),
    "gemma3-270m": ModelShape(window=32768, full_layers=3, sliding_layers=15, sliding_window=512,
                              kv_heads=1, head_dim=256, n_params=268_098_176),
}

_DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def model_shape(spec: str) -> ModelShape | None:
    """The shape of an embedded model, or of the model folder ``spec`` (its ``config.json``;
    weights counted from its safetensors' sizes at 4 bytes each); None when that config does
    not state the usual keys (``max_position_embeddings``, ``num_hidden_layers``, ...)."""
    if spec in EMBEDDED_SHAPES:
        return EMBEDDED_SHAPES[spec]
    folder = Path(spec).expanduser()
    config = json.loads((folder / "config.json").read_text())
    stored = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    try:
        return ModelShape.from_config(config, stored // 4)
    except (KeyError, TypeError, ValueError):
        return None


def longest_prompt_tokens(x_context: np.ndarray, y_context: np.ndarray, x_target: np.ndarray,
                          text: str, cfg: ExpertConfig, extra_lines: int = 0) -> tuple[int, np.ndarray]:
    """(Bound on the tokens of a task's longest prompt, that bound for each number of context
    lines k = 0..n).

    Shapes: ``x_context (n, D)``, ``y_context (n,)`` in data units, ``x_target (m, D)``. The
    prompt holds the instructions, the longest data lines (all n context lines and
    ``extra_lines`` more as long as the longest, A-LLMP's drawn targets; at most
    ``cfg.max_context`` of them), the longest query and the number (its tokens, the terminator,
    BOS). Bytes bound tokens (see the module doc); a chat template adds ``CHAT_TOKENS``.
    """
    style = dataclasses.replace(cfg.prompt_style(), order="fixed", max_context=None)
    scale, shift, y_llm, digits = llm_numbers(np.asarray(y_context, dtype=float), cfg)
    text = prepare_text(text, style, scale, shift)
    x_context = np.asarray(x_context, dtype=float).reshape(len(y_llm), -1)
    x_target = np.asarray(x_target, dtype=float).reshape(len(x_target), -1)
    bare = dataclasses.replace(style, use_text=False, preamble="", chat=False)
    lines = prompt_parts(x_context, y_llm, x_target[0], "", bare)[0].split(style.terminator)[:-1]
    line_bytes = [len(line.encode()) + len(style.terminator.encode()) for line in lines]
    sizes = np.sort(line_bytes)[::-1]
    sizes = np.concatenate([[sizes[0] if len(sizes) else 0] * extra_lines, sizes])
    wrap = (lambda message: message) if style.chat else None
    one = (x_context[:1], y_llm[:1])  # the instructions are the head without its one line
    head = len(prompt_parts(*one, x_target[0], text, style, wrap)[0].encode()) - line_bytes[0]
    query = max(len(prompt_parts(*one, x, text, style, wrap)[1].encode()) for x in x_target)
    # lead, sign, digits, point and decimals, terminator; and a BOS token
    number = len(style.lead) + 1 + digits + (style.decimals + 1 if style.decimals else 0)
    number += len(style.terminator) + 1
    fixed = head + query + number + (CHAT_TOKENS if style.chat else 0)
    by_lines = fixed + np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    k = len(sizes) if cfg.max_context is None else min(len(sizes), cfg.max_context)
    return int(by_lines[k]), by_lines


def _memory_limit(config: dict[str, Any]) -> tuple[int, str]:
    """(Bytes, what they are): ``llm.memory_gb``, else the memory of this machine's first GPU
    when the LLM runs on CUDA, else its physical memory."""
    import torch

    if config["llm"].get("memory_gb"):
        return int(config["llm"]["memory_gb"] * 1e9), "llm.memory_gb"
    device = config["llm"]["device"]
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory, "the GPU's memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def check_prompt_lengths(config: dict[str, Any], base_dir: Path = Path(".")) -> None:
    """Stop a run whose prompts cannot fit the model's window or the memory they would need.

    Run when the workflow starts, after :func:`llmflow.config.validate_config`. For every task,
    the I-LLMP prompt (at most ``expert.max_context`` context points) and, for the tasks
    A-LLMP samples, its growing prompt (with ``allmp.order: append`` every context point and
    every drawn target; ``query`` keeps ``expert.max_context``). Raises ConfigError, one line
    naming the task, the estimated tokens and the remedy. A model folder whose config.json
    does not state its window and layers (see :func:`model_shape`) is not checked.
    """
    from llmflow.config import ConfigError
    from llmflow.evaluate import allmp_tasks
    from llmflow.tasks import build_task, task_names

    cfg = ExpertConfig.from_config(config["expert"])
    model = config["llm"]["model"]
    shape = model_shape(model)
    if shape is None:
        return
    dtype_bytes = _DTYPE_BYTES.get(config["llm"]["dtype"], 4)  # auto: float32 on CPU (bf16 on CUDA)
    limit, limit_name = _memory_limit(config)
    names = task_names(config)
    sampled = set(allmp_tasks(names, config["allmp"]["tasks"]))
    append = config["allmp"]["order"] == "append"

    for name in names:
        task = build_task(name, config, base_dir)
        stages = [("I-LLMP", cfg, cfg.prompts_per_forward - 1, 0)]
        if name in sampled:  # the prompt of the last draw: every other target drawn before it
            # a cache per sample and a batched copy, for each task drawn side by side with it
            sample_rows = 2 * config["allmp"]["n_samples"] * config["allmp"]["tasks_per_forward"]
            stages.append(("A-LLMP", dataclasses.replace(cfg, max_context=None) if append else cfg,
                           sample_rows, len(task.x_target) - 1))
        for stage, stage_cfg, rows, extra in stages:
            try:
                tokens, by_lines = longest_prompt_tokens(task.x_context, task.y_context, task.x_target,
                                                         task.text, stage_cfg, extra)
            except ValueError as err:  # numbers the LLM cannot be given
                raise ConfigError(f"config error: expert: task {name!r}: {err}") from None
            need = shape.memory(tokens, rows, dtype_bytes)
            if tokens <= shape.window and need <= limit:
                continue
            lines = min(len(by_lines) - 1, stage_cfg.max_context or len(by_lines))
            if tokens > shape.window:
                what = f"beyond {model}'s window of {shape.window:,} tokens"
            else:
                what = (f"needing ~{need / 1e9:.1f} GB ({rows} rows on its KV cache), more than "
                        f"{limit_name} ({limit / 1e9:.1f} GB)")
            fixes = []
            fit = max((k for k, t in enumerate(by_lines) if t <= shape.window
                       and shape.memory(int(t), rows, dtype_bytes) <= limit), default=0)
            if stage == "A-LLMP" and append:
                fixes.append("set allmp.order: query (it keeps expert.max_context points)")
            elif fit:
                fixes.append(f"set expert.max_context to at most {fit} (the nearest points per target)")
            if tokens <= shape.window:  # short enough: fewer rows on its cache may fit
                r = max((r for r in range(rows, -1, -1) if shape.memory(tokens, r, dtype_bytes) <= limit),
                        default=-1)
                if stage == "I-LLMP" and r >= 0:
                    fixes.append(f"lower expert.prompts_per_forward to at most {r + 1}")
                elif stage == "A-LLMP":
                    side_by_side, samples = config["allmp"]["tasks_per_forward"], config["allmp"]["n_samples"]
                    if side_by_side > 1 and r // (2 * samples) > 0:
                        fixes.append(f"lower allmp.tasks_per_forward to at most {r // (2 * samples)}")
                    elif r // 2 > 0:
                        alone = " with allmp.tasks_per_forward: 1" if side_by_side > 1 else ""
                        fixes.append(f"lower allmp.n_samples to at most {r // 2}{alone}")
            if stage == "A-LLMP":
                fixes.append("leave the task out of allmp.tasks")
            if not fixes:
                fixes.append(f"use a model with a longer window or more memory than {model}")
            key = ("allmp.tasks" if stage == "A-LLMP" else
                   "expert.max_context" if tokens > shape.window else "expert.prompts_per_forward")
            raise ConfigError(f"config error: {key}: task {name!r}: {stage} prompts of up to "
                              f"~{tokens:,} tokens ({lines} data lines), {what}; {' or '.join(fixes)}")
