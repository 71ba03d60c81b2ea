"""Perplexity of a causal language model over a text, by a sliding window with a stride (the
recipe of the Hugging Face "Perplexity of fixed-length models" guide): each token is scored at most
once, given up to max_length − 1 tokens of context before it in its window. Overlapping windows
(stride < max_length) score every token after the text's first; non-overlapping ones
(stride = max_length) every token but each window's first, which has no context in its window."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError

if TYPE_CHECKING:  # torch is imported where it computes: `qkernels info` and `bench` import this package without it
    import torch
    from torch import nn


@dataclass(frozen=True)
class Perplexity:
    perplexity: float  # exp(nll / tokens)
    nll: float  # summed negative log-likelihood, nats
    tokens: int  # tokens scored: all but the text's first, or each window's first without overlap
    windows: int  # forward passes


def windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `length` tokens: windows of up to
    max_length tokens start every `stride` tokens; each scores the tokens after the previous
    window's end (and never its own first token, which has no context in the window)."""
    if max_length < 2:
        raise InvalidArgumentError(f"max_length={max_length} must be at least 2: a window scores every token "
                                   "but its first")
    if not 0 < stride <= max_length:
        raise InvalidArgumentError(f"stride={stride} must lie in [1, max_length={max_length}]")
    if length < 2:
        raise InvalidArgumentError(f"the text has {length} token(s); at least 2 are needed")
    out, previous_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + max_length, length)
        out.append((begin, end, max(previous_end, begin + 1)))
        previous_end = end
        if end == length:
            break
    return out


def perplexity_of_ids(model: nn.Module, ids: torch.Tensor, *, max_length: int, stride: int,
                      progress: Callable[[int, int], None] | None = None,
                      cache: Callable[[], object] | None = None) -> Perplexity:
    """Perplexity of token ids [T] (or [1, T]) under `model` (called as model(input_ids) and
    returning .logits [1, T, vocab], as Hugging Face causal LMs do). cache: makes a fresh KV cache
    per window, passed as model(input_ids, cache=cache()) (e.g. a QuantizedKVCache: attention
    then reads the keys and values as that cache stores them); a cache the model left unfilled
    raises InvalidArgumentError."""
    import torch

    ids = ids.reshape(-1)
    plan = windows(len(ids), max_length, stride)
    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for index, (begin, end, first) in enumerate(plan):
            window = ids[begin:end].unsqueeze(0)
            if cache is None:
                logits = model(window).logits[0].double()
            else:
                window_cache = cache()
                logits = model(window, cache=window_cache).logits[0].double()
                # A model that does not take cache= (before transformers 5.24: past_key_values)
                # ignores it silently and runs its own float cache: check that this one was filled.
                if window_cache.get_seq_length() != window.shape[1]:
                    raise InvalidArgumentError(
                        f"cache: the model left {window_cache.get_seq_length()} of the window's {window.shape[1]} "
                        "tokens in it; it does not take cache= (transformers >= 5.24 needed)")
            # logits[t − begin − 1] predicts token t, for t in [first, end)
            log_probs = torch.log_softmax(logits[first - begin - 1 : end - begin - 1], dim=-1)
            nll -= float(log_probs.gather(1, ids[first:end].unsqueeze(1)).sum())
            tokens += end - first
            if progress:
                progress(index + 1, len(plan))
    return Perplexity(math.exp(nll / tokens), nll, tokens, len(plan))


def context_length(model: nn.Module) -> int:
    """The longest input the model's config allows (n_positions or max_position_embeddings)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise InvalidArgumentError("the model's config names no context length: give max_length")


def perplexity(model: nn.Module, tokenizer, text: str, *, max_length: int | None = None, stride: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               cache: Callable[[], object] | None = None) -> Perplexity:
    """Perplexity of `text` (tokenized whole by the Hugging Face `tokenizer`) under a causal LM.
    max_length: tokens per window (default: the model's context length); stride: tokens between
    window starts (default max_length // 2; stride = max_length gives non-overlapping windows)."""
    max_length = max_length or context_length(model)
    stride = stride or max(1, max_length // 2)
    ids = tokenizer(text, return_tensors="pt").input_ids
    return perplexity_of_ids(model, ids, max_length=max_length, stride=stride, progress=progress, cache=cache)


def load_causal_lm(path: str) -> tuple[nn.Module, object]:
    """(model in float32, eval mode; tokenizer) from a local Hugging Face checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return model.float().eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)
