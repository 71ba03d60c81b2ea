"""LLM quantization methods built on the kernels: each quantizes to the canonical format
(docs/numerics.md §1), so every backend runs the result. The math is in docs/quantization.md.

    qw = qkernels.quant.rtn(w, bits=4, group_size=128)            # round to nearest
    h = qkernels.quant.HessianAccumulator(K); h.update(x)          # calibration inputs [..., K]
    qw = qkernels.quant.gptq(w, h.hessian(), bits=4, group_size=128, act_order=True)
    y = qkernels.matmul(x, qw, mode="a16")

Inputs: NumPy arrays or CPU torch tensors; outputs: NumPy (QuantizedWeight for weights) unless a
function says otherwise. torch is needed only by zeroquant_lkd and gptq (its Cholesky factors).
"""

from .awq import ActivationStatistics, AWQScales, awq_scales
from .gptq import HessianAccumulator, gptq
from .kv_cache import QuantizedKV, dequantize_keys, dequantize_values, quantize_kv
from .llm_int8 import llm_int8_matmul, outlier_columns
from .mixed_precision import choose_bits, layer_sensitivity
from .observers import AbsMaxObserver, AbsMaxSampleObserver, MSEObserver, PercentileObserver
from .rtn import rtn
from .smoothquant import (
    fold_into_norm, search_smoothing, smooth_activations, smooth_weight, smoothquant, smoothquant_scales,
)
from .zeroquant import zeroquant, zeroquant_lkd

__all__ = [
    "AWQScales",
    "AbsMaxObserver",
    "AbsMaxSampleObserver",
    "ActivationStatistics",
    "HessianAccumulator",
    "MSEObserver",
    "PercentileObserver",
    "QuantizedKV",
    "awq_scales",
    "choose_bits",
    "dequantize_keys",
    "dequantize_values",
    "fold_into_norm",
    "gptq",
    "layer_sensitivity",
    "llm_int8_matmul",
    "outlier_columns",
    "quantize_kv",
    "rtn",
    "search_smoothing",
    "smooth_activations",
    "smooth_weight",
    "smoothquant",
    "smoothquant_scales",
    "zeroquant",
    "zeroquant_lkd",
]
