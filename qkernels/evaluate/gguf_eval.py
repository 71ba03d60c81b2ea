"""`qkernels eval --gguf [FILE]`: a GGUF checkpoint run by the kernels on the file's own integers
(qkernels.checkpoints.gguf.load_model) against transformers' float32 load of the same file:
perplexity on held-out text, prefill and decode tokens per second, load time and peak memory.

Each model is loaded and measured in a fresh process (multiprocessing, spawn), so that each peak
resident set size (ru_maxrss) is that model's alone; "base MB" is the process's resident size after
the imports, before the load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from pathlib import Path

from . import corpus

MODELS = ("qkernels", "float32")
LABELS = {"qkernels": "qkernels (the file's integers)", "float32": "transformers float32 (dequantized)"}
PROMPT_TOKENS, DECODE_TOKENS, REPEATS = 32, 32, 3


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1e3


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux


def measure(which: str, path: str, text: str, max_length: int, stride: int) -> dict:
    """Loads one model of the file and measures it (runs in its own process)."""
    import torch
    from transformers.utils import logging

    from ..checkpoints.gguf import load_model, load_tokenizer
    from ..torch.model import quantized_nbytes
    from .perplexity import perplexity_of_ids
    from .smollm2 import load_smollm2_float

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    base = _resident_mb()
    start = time.perf_counter()
    model = load_model(path) if which == "qkernels" else load_smollm2_float(Path(path))[0]
    load_seconds = time.perf_counter() - start
    ids = load_tokenizer(path)(text, return_tensors="pt").input_ids[0]
    start = time.perf_counter()
    result = perplexity_of_ids(model, ids, max_length=max_length, stride=stride)
    eval_seconds = time.perf_counter() - start
    with torch.inference_mode():
        window = ids[None, :max_length]
        prefill = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            model(window, use_cache=False)
            prefill.append(time.perf_counter() - start)
        decode = []
        for _ in range(REPEATS):  # greedy, one token per step (M = 1) on the KV cache
            out = model(ids[None, :PROMPT_TOKENS], use_cache=True)
            start = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                token = out.logits[:, -1:].argmax(-1)
                out = model(token, cache=out.cache, use_cache=True)
            decode.append(time.perf_counter() - start)
    return {
        "model": LABELS[which], "weights MB": quantized_nbytes(model) / 1e6, "perplexity": result.perplexity,
        "tokens": result.tokens, "eval s": eval_seconds, "load s": load_seconds,
        "prefill tok/s": window.shape[1] / statistics.median(prefill),
        "decode tok/s": DECODE_TOKENS / statistics.median(decode),
        "base MB": base, "peak MB": _peak_mb(),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from .run import _say, print_table
    from .smollm2 import smollm2_gguf

    path = Path(args.gguf) if args.gguf else smollm2_gguf()
    text = args.text.read_text(encoding="utf-8") if args.text else " ".join(corpus.sentences(512))
    source = str(args.text) if args.text else f"512 sentences from the {corpus.SOURCE}"
    max_length = args.max_length or 512
    stride = args.stride or max_length // 2
    rows = []
    # PyTorch's OpenMP threads spin after each op by default, taking the cores from qkernels' own
    # threads between them: measured 13 s against 0.39 s for a 128-token SmolLM2 prefill on 2 busy
    # cores. Both processes run with passive waits unless the caller chose otherwise.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = multiprocessing.get_context("spawn")
    for which in MODELS:
        _say(f"{LABELS[which]}: loading {path.name} and measuring in a fresh process ...")
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (which, str(path), text, max_length, stride)))
    tokens = rows[0].pop("tokens")
    rows[1].pop("tokens")
    formats = {"weights MB": "{:.1f}", "perplexity": "{:.4f}", "eval s": "{:.1f}", "load s": "{:.1f}",
               "prefill tok/s": "{:.0f}", "decode tok/s": "{:.1f}", "base MB": "{:.0f}", "peak MB": "{:.0f}"}
    rows = [{key: formats.get(key, "{}").format(value) for key, value in row.items()} for row in rows]
    print(f"{path.name}: perplexity on {source} ({tokens} tokens; windows of {max_length}, stride "
          f"{stride}); prefill: one window of {max_length} tokens; decode: greedy, {DECODE_TOKENS} tokens one "
          f"at a time after a {PROMPT_TOKENS}-token prompt (medians of {REPEATS}); float32 PyTorch on "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; peak MB: the "
          "process's peak resident set, base MB: after imports.")
    print_table(rows)
    return 0
