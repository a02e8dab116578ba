"""I-LLMP expert: binned predictive densities over numbers from an LLM's digit tokens.

One module per concept:

- ``numbers``: the number grammar (fixed-point strings, their intervals, the trie's units);
- ``prompt``: how a task's text and context are written (``PromptStyle``, ``build_prompt``);
- ``tokens``: which tokens write each unit after a prompt, and where scoring starts;
- ``lm``: KV-cached next-token log-probabilities for batches of token paths;
- ``trie``: ``binned_distribution``, every bin of the next number with its probability;
- ``score``: ``number_logprob``, the exact probability of one given number string;
- ``task``: the stage's driver, bins at every target of a task in data units, cached.
"""

from llmflow.expert.lm import (Scorer, first_unit_logprobs, next_unit_logprobs, rows_only,
                               tail_logits, token_logprobs, vocab_logprobs)
from llmflow.expert.numbers import DIGITS, TERM, UNITS, allowed_units, format_number, number_interval
from llmflow.expert.prompt import (STYLES, PromptStyle, build_prompt, chat_wrapper, check_context,
                                   prepare_text, prompt_parts, prompt_style)
from llmflow.expert.score import number_logprob, number_token_logprobs
from llmflow.expert.task import (ExpertConfig, affine_for, default_int_digits, fingerprint,
                                 run_cached, task_expert)
from llmflow.expert.tokens import NumberTokens, continuation_ids, number_tokens
from llmflow.expert.trie import Bins, binned_distribution

__all__ = [
    "Bins", "DIGITS", "ExpertConfig", "NumberTokens", "PromptStyle", "STYLES", "Scorer", "TERM",
    "UNITS", "affine_for", "allowed_units", "binned_distribution", "build_prompt", "chat_wrapper",
    "check_context", "continuation_ids", "default_int_digits", "fingerprint",
    "first_unit_logprobs", "format_number", "next_unit_logprobs", "number_interval",
    "number_logprob", "number_token_logprobs", "number_tokens", "prepare_text", "prompt_parts",
    "prompt_style", "rows_only", "run_cached", "tail_logits", "task_expert", "token_logprobs",
    "vocab_logprobs",
]
