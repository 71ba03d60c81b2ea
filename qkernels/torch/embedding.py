"""QuantEmbedding: an embedding table held as quantized weights (a GGUF file's Q8_0 token embedding)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._tensors import torch_dtype_name
from .linear import QuantLinear


class QuantEmbedding(nn.Module):
    """nn.Embedding whose table [num_embeddings, embedding_dim] is quantized weights in the canonical
    format: a lookup dequantizes only the rows it gathers (qkernels.dequantize: float32, or the
    dtype given), so the float table never exists. Built on a QuantLinear's buffers, the same
    tensors, so that a tied output layer (lm_head) and the embedding share one copy."""

    def __init__(self, table: QuantLinear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.bits, self.group_size, self.dtype = table.bits, table.group_size, dtype
        for name in ("qdata", "scales", "zero_points", "offsets"):
            self.register_buffer(name, getattr(table, name))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = ids.reshape(-1)
        # Gathered as nn.Embedding gathers: an id outside [0, num_embeddings) is an IndexError (indexing
        # would take a negative id from the end of the table).
        data, scales, zero_points, offsets = (
            None if t is None else F.embedding(rows, t) for t in (self.qdata, self.scales, self.zero_points, self.offsets)
        )
        # Rounded once to float16 / bfloat16: float32 first, then the dtype, could round twice.
        rounded = torch_dtype_name(self.dtype) or "float32"
        table = torch.ops.qkernels.dequantize(data, scales, zero_points, self.bits, self.group_size, offsets, rounded)
        return table.to(self.dtype).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, w{self.bits} per group {self.group_size}"
