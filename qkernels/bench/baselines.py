"""What qkernels is compared with: NumPy float32, and PyTorch's float and int8 linear layers where installed."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from .layers import Layer

BASELINES = (
    "numpy f32 x @ w.T",
    "torch linear f32",
    "torch linear bf16",
    "torch dynamic int8 (fbgemm)",
    "torch _weight_int8pack_mm",
)


@dataclass
class Baseline:
    """A non-qkernels implementation of the layer, its weight copies made once per layer."""

    label: str
    weight_bytes: int  # of one copy
    weights: list
    run: Callable[[Any, Any], Any]  # (input, weights) -> output
    convert: Callable[[np.ndarray], Any]  # the benchmark's NumPy activations -> this input


def make_baselines(layer: Layer, dtype: str, names: tuple[str, ...] = BASELINES) -> dict[str, Baseline | str]:
    """Each of `names` (of BASELINES) on the layer's weights for activations of `dtype`, or why it
    cannot run here. Only these are made: their weight copies take memory."""
    N, K = layer.N, layer.K
    result: dict[str, Baseline | str] = {}
    w32 = layer.copies(layer.w) if {BASELINES[0], BASELINES[1]} & set(names) else []  # shared by both
    if BASELINES[0] in names:
        result[BASELINES[0]] = Baseline("f32", layer.w.nbytes, w32, lambda x, w: x @ w.T,
                                        lambda x: x.astype(np.float32))
    try:
        import torch
    except ImportError:
        return result | {name: "torch is not installed" for name in BASELINES[1:] if name in names}
    F = torch.nn.functional

    def f32(x):
        return torch.from_numpy(x.astype(np.float32))

    def linear_bf16():
        w = torch.from_numpy(layer.w).to(torch.bfloat16)
        return Baseline("bf16", w.nbytes, layer.copies(w), F.linear, lambda x: torch.from_numpy(x).to(w.dtype))

    def dynamic_int8():
        # skip_init: the weights are replaced at once, so random initialization would be wasted time.
        linear = torch.nn.utils.skip_init(torch.nn.Linear, K, N, bias=False)
        linear.weight.data = torch.from_numpy(layer.w)
        spec = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        module = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), spec, dtype=torch.qint8)
        copies = [module] + [copy.deepcopy(module) for _ in range(layer.count(N * K) - 1)]
        return Baseline("a8 w8/ch", N * K, copies, lambda x, m: m(x), f32)

    def int8pack():
        act = getattr(torch, dtype)
        weights = [
            (torch.from_numpy(qw.data), torch.from_numpy(qw.scales[:, 0].copy()).to(act))
            for qw in layer.quantized(8, K)
        ]
        run = lambda x, w: torch.ops.aten._weight_int8pack_mm(x, *w)  # noqa: E731
        return Baseline("a16 w8/ch", N * K + N * act.itemsize, weights, run, torch.from_numpy)

    builders = {
        BASELINES[1]: lambda: Baseline("f32", layer.w.nbytes, [torch.from_numpy(w) for w in w32], F.linear, f32),
        BASELINES[2]: linear_bf16,
        BASELINES[3]: dynamic_int8,
        BASELINES[4]: int8pack,
    }
    for name, build in builders.items():
        if name not in names:
            continue
        try:
            with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
                warnings.simplefilter("ignore")
                result[name] = build()
        except Exception as error:  # a torch build without this operator or engine
            result[name] = f"{type(error).__name__}: {error}"
    return result
