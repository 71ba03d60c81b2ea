"""Evaluation of quantized models: sentence embeddings of all-MiniLM-L6-v2 against float32
(`qkernels eval`), and the perplexity of causal language models by a sliding window.

    from qkernels.evaluate import perplexity, load_causal_lm
    model, tokenizer = load_causal_lm("/path/to/gpt2")        # a local Hugging Face checkpoint
    print(perplexity(model, tokenizer, text, max_length=1024, stride=512).perplexity)
"""

from .perplexity import Perplexity, context_length, load_causal_lm, perplexity, perplexity_of_ids, windows

__all__ = ["Perplexity", "context_length", "load_causal_lm", "perplexity", "perplexity_of_ids", "windows"]
