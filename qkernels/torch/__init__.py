"""PyTorch integration: QuantLinear, quantize_model, saving and loading, and the kernels as
torch.library custom ops (torch.ops.qkernels.matmul, .matmul_outliers) for torch.compile.

    import qkernels.torch as qt
    qt.quantize_model(model, method="gptq", bits=4, group_size=128, calib_data=batches)
    qt.save_quantized(model, "model.safetensors"); qt.load_quantized(fresh_model, "model.safetensors")
"""

from . import ops
from .linear import ACTIVATIONS, QuantLinear
from .model import (
    METHODS,
    calibrate,
    linear_layers,
    linear_weight,
    load_quantized,
    pre_norm_groups,
    quantize_model,
    quantized_layers,
    quantized_nbytes,
    run_model,
    save_quantized,
)

__all__ = [
    "ACTIVATIONS",
    "METHODS",
    "QuantLinear",
    "calibrate",
    "linear_layers",
    "linear_weight",
    "load_quantized",
    "ops",
    "pre_norm_groups",
    "quantize_model",
    "quantized_layers",
    "quantized_nbytes",
    "run_model",
    "save_quantized",
]
