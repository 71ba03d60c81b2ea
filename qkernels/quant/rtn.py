"""Round-to-nearest (RTN) weight quantization: the foundation's quantizer under the methods' names."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError
from ..weights import QuantizedWeight, quantize_weights


def rtn(weight: Any, *, bits: int, group_size: int | None = None, symmetric: bool = True,
        per_tensor: bool = False) -> QuantizedWeight:
    """Round-to-nearest quantization of W[N, K] (the baseline of every LLM quantization paper;
    absmax and zero-point quantization as in Dettmers et al. 2022, arXiv:2208.07339, §2).

    Exactly ``qkernels.quantize_weights`` (docs/numerics.md §2): symmetric absmax
    (``s = max|w| / (2^(b−1) − 1)``) or asymmetric zero point (range widened to hold 0),
    per output channel (``group_size=None``), group-wise (``group_size`` consecutive inputs share a
    scale) or per tensor (``per_tensor=True``: one range over W, stored per channel). bits: 8 or 4.
    weight: float32/float16/bfloat16 NumPy array or CPU torch tensor.
    """
    if per_tensor and group_size is not None:
        raise InvalidArgumentError(f"per_tensor=True takes no group_size (got {group_size})")
    granularity = "tensor" if per_tensor else ("channel" if group_size is None else "group")
    return quantize_weights(weight, bits=bits, group_size=group_size, symmetric=symmetric, granularity=granularity)
