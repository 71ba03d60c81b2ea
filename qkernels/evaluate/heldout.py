"""GPTQ against RTN on SmolLM2-135M (W4 g64), by perplexity on two kinds of held-out text.

    python -m qkernels.evaluate.heldout [--sequences 64 --length 256]

Texts, all from the Python installation, pairwise disjoint:
  prose       the first 512 sentences of the docstring corpus (corpus.sentences), as `qkernels eval
              --perplexity` scores by default;
  code        the source of EVAL_CODE (standard-library modules outside the corpus's);
  calibration half of the sequences from the corpus's other sentences (from position 512 on), half
              from the source of CALIBRATION_CODE (other modules again): generic text of both kinds.
The "float" model is the GGUF file dequantized: its weights are 4-bit-rounded (Q4_1) already.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

from . import corpus

EVAL_SENTENCES = 512
EVAL_CODE = ("pprint", "shlex")
CALIBRATION_CODE = ("ast", "copy", "glob", "numbers", "operator", "queue", "reprlib", "timeit", "weakref")


def calibration_ids(tokenizer, sequences: int, length: int):
    """[sequences, length] token ids: contiguous runs of `length` tokens, half from the corpus's
    sentences from position EVAL_SENTENCES on, half from the source of CALIBRATION_CODE, spread
    evenly over each text."""
    import torch

    from ..errors import InvalidArgumentError

    prose = " ".join(corpus.sentences(corpus.sentence_count() - EVAL_SENTENCES, offset=EVAL_SENTENCES))
    rows = []
    for text, count in ((prose, sequences - sequences // 2), (corpus.python_source(CALIBRATION_CODE), sequences // 2)):
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        runs = len(ids) // length
        if count > runs:
            raise InvalidArgumentError(f"the calibration text holds {runs} runs of {length} tokens; asked for {count}")
        rows += [ids[i * length:(i + 1) * length] for i in torch.linspace(0, runs - 1, count).round().long().tolist()]
    return torch.stack(rows)



def main(argv: list[str] | None = None) -> int:
    import torch

    from ..torch.model import quantize_model
    from .perplexity import perplexity
    from .smollm2 import load_smollm2_float

    parser = argparse.ArgumentParser(prog="python -m qkernels.evaluate.heldout", description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=32, help="calibration sequences (default 32)")
    parser.add_argument("--length", type=int, default=256, help="tokens per calibration sequence (default 256)")
    parser.add_argument("--batch", type=int, default=8, help="calibration sequences per forward pass (default 8)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512, help="perplexity: tokens per window, no overlap")
    args = parser.parse_args(argv)

    model, tokenizer = load_smollm2_float()
    ids = calibration_ids(tokenizer, args.sequences, args.length)
    calibration = [{"input_ids": ids[i:i + args.batch]} for i in range(0, len(ids), args.batch)]
    texts = {"prose": " ".join(corpus.sentences(EVAL_SENTENCES)), "code": corpus.python_source(EVAL_CODE)}
    print(f"SmolLM2-135M-Instruct (weights dequantized from Q4_1), W4 g{args.group_size} symmetric, lm_head in "
          f"float; calibration {args.sequences} x {args.length} tokens; torch threads {torch.get_num_threads()}")
    print("| method | quantize s (wall) | quantize s (CPU) | " + " | ".join(f"{k} perplexity" for k in texts) + " |")
    print("|---|---|---|" + "---|" * len(texts))
    for method in ("float", "rtn", "gptq"):
        quantized, wall, cpu = model, 0.0, 0.0
        if method != "float":
            quantized = copy.deepcopy(model)
            wall, cpu = time.perf_counter(), _cpu_seconds()
            quantize_model(quantized, method, bits=4, group_size=args.group_size, skip=("lm_head",),
                           calib_data=calibration if method == "gptq" else None, progress=True)
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        scores = [perplexity(quantized, tokenizer, text, max_length=args.max_length, stride=args.max_length).perplexity
                  for text in texts.values()]
        print(f"| {method} | {wall:.1f} | {cpu:.1f} | " + " | ".join(f"{p:.3f}" for p in scores) + " |", flush=True)
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
