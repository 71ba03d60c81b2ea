"""qkernels: quantized matrix-multiplication kernels for large language models.

    qw = qkernels.quantize_weights(w, bits=4, group_size=128)   # w: [N, K] float
    y  = qkernels.matmul(x, qw, mode="a16")                      # y = x · dequantize(qw)ᵀ
    qkernels.quantize_model(torch_model, method="gptq", bits=4, group_size=128, calib_data=batches)

The numeric contract is docs/numerics.md; qkernels.reference implements it independently in NumPy.
"""

from . import activations, dispatch, packing, tensors
from ._native import ffi, lib, library_path
from .dispatch import backends, cpu_features, get_num_threads, kernels, set_num_threads, use_backend
from .errors import (
    BackendUnavailableError,
    DtypeError,
    InvalidArgumentError,
    NonFiniteError,
    OutOfMemoryError,
    QKernelsError,
    UnsupportedError,
)
from .ops import matmul, quantized_matmul, select
from .weights import QuantizedWeight, dequantize, quantize_weights

__version__ = ffi.string(lib.qk_version()).decode()

__all__ = [
    "BackendUnavailableError",
    "DtypeError",
    "InvalidArgumentError",
    "NonFiniteError",
    "OutOfMemoryError",
    "QKernelsError",
    "QuantizedWeight",
    "UnsupportedError",
    "activations",
    "backends",
    "cpu_features",
    "dequantize",
    "dispatch",
    "get_num_threads",
    "kernels",
    "library_path",
    "matmul",
    "packing",
    "quantize_weights",
    "quantized_matmul",
    "select",
    "set_num_threads",
    "tensors",
    "use_backend",
]


def __getattr__(name: str):
    """qkernels.quantize_model, from qkernels.torch: imported on first use, as torch is optional."""
    if name == "quantize_model":
        from .torch import quantize_model

        return quantize_model
    raise AttributeError(f"module 'qkernels' has no attribute {name!r}")
