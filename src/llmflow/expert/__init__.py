"""I-LLMP expert: binned predictive densities over numbers from an LLM's digit tokens.

One module per concept:

- ``numbers``: the number grammar (fixed-point strings, their intervals, the trie's units);
- ``prompt``: how a task's text and context are written (``PromptStyle``, ``build_prompt``);
- ``tokens``: which tokens write each unit after a prompt, and where scoring starts;
- ``lm``: KV-cached next-token log-probabilities for batches of token paths;
- ``trie``: ``binned_distribution(s)``, every bin of the next number with its probability;
- ``score``: ``number_logprob``, the exact probability of one given number string;
- ``task``: the stage's driver, bins at every target of a task in data units (cached per task:
  :mod:`llmflow.cache`).
"""

from llmflow.expert.lm import TokenTree, rows_only, tail_logits, token_logprobs, vocab_logprobs
from llmflow.expert.numbers import (DIGITS, TERM, UNITS, allowed_units, format_number, number_interval,
                                    prefix_intervals, to_llm_units)
from llmflow.expert.prompt import (STYLES, PromptStyle, build_prompt, chat_wrapper, check_context,
                                   prepare_text, prompt_parts, prompt_style)
from llmflow.expert.score import number_logprob, number_token_logprobs
from llmflow.expert.task import (ExpertConfig, TaskPrompts, affine_for, auto_affine, default_int_digits,
                                 llm_numbers, loo_arrays, loo_indices, loo_prompts, target_bins, task_expert,
                                 task_prompts)
from llmflow.expert.tokens import NumberTokens, continuation_ids, number_tokens
from llmflow.expert.trie import TrieResult, binned_distribution, binned_distributions

__all__ = [
    "DIGITS", "ExpertConfig", "NumberTokens", "PromptStyle", "STYLES", "TERM", "TaskPrompts", "TrieResult",
    "TokenTree", "UNITS", "affine_for", "allowed_units", "auto_affine", "binned_distribution", "binned_distributions",
    "build_prompt", "chat_wrapper", "target_bins", "task_prompts",
    "check_context", "continuation_ids", "default_int_digits", "format_number",
    "llm_numbers", "loo_arrays", "loo_indices", "loo_prompts", "number_interval", "number_logprob", "number_token_logprobs", "number_tokens",
    "prefix_intervals", "prepare_text", "prompt_parts", "prompt_style", "rows_only",
    "tail_logits", "task_expert", "to_llm_units", "token_logprobs",
    "vocab_logprobs",
]
