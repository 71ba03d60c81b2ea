"""QuantEmbedding: an embedding table held as quantized weights (a GGUF file's Q8_0 token embedding)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._tensors import torch_dtype_name
from ..errors import InvalidArgumentError
from .linear import QuantLinear, moves_only


class QuantEmbedding(nn.Module):
    """nn.Embedding whose table [num_embeddings, embedding_dim] is quantized weights in the canonical
    format: a lookup dequantizes only the rows it gathers (qkernels.dequantize: float32, or the
    dtype given), so the float table never exists. Built on a QuantLinear's buffers, the same
    tensors, so that a tied output layer (lm_head) and the embedding share one copy. The format
    travels in the state dict as extra state, as a QuantLinear's does (qkernels.torch.load_quantized)."""

    def __init__(self, table: QuantLinear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.bits, self.group_size, self.dtype = table.bits, table.group_size, dtype
        for name in ("qdata", "scales", "zero_points", "offsets"):
            self.register_buffer(name, getattr(table, name))

    @classmethod
    def empty(cls, config: dict) -> QuantEmbedding:
        """A QuantEmbedding of the structure `config` (get_extra_state()) with zeroed buffers, to load into.
        Raises ValueError unless it has exactly that structure (a dtype alias, an unknown key), which
        set_extra_state would refuse only once the model holds it."""
        table = QuantLinear.empty({
            "out_features": config["num_embeddings"], "in_features": config["embedding_dim"], "bits": config["bits"],
            "group_size": config["group_size"], "zero_points": config["zero_points"], "offsets": config["offsets"],
            "bias": False, "activation": "float", "outlier_threshold": None, "input_scale": False,
        })
        embedding = cls(table, getattr(torch, config["dtype"], None))
        if embedding.get_extra_state() != config:
            raise ValueError(f"the QuantEmbedding it describes has the structure {embedding.get_extra_state()}")
        return embedding

    def get_extra_state(self) -> dict:
        return {
            "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
            "group_size": self.group_size, "zero_points": self.zero_points is not None,
            "offsets": self.offsets is not None, "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _apply(self, fn, *args, **kwargs):
        # The lookups' dtype follows model.half() / .to(torch.bfloat16), as nn.Embedding's weight
        # does; the quantized buffers keep theirs.
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype
        return super()._apply(moves_only(fn), *args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state saved before QuantEmbedding had extra state is taken as of this structure (torch
        # loads from its own copy of the dict). Torch checks the extra state only after copying the
        # buffers (a tied lm_head's too): another structure is refused here, before any is copied.
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        self.set_extra_state(state_dict[prefix + "_extra_state"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_extra_state(self, state: dict) -> None:
        # The lookups' dtype is no structure: a load keeps this module's, as nn.Embedding keeps its
        # weight's dtype.
        if _structure(state) != _structure(self.get_extra_state()):
            raise InvalidArgumentError(
                f"the saved embedding {state} does not have this QuantEmbedding's structure {self.get_extra_state()}"
            )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return torch.empty(*ids.shape, self.embedding_dim, dtype=self.dtype, device=self.qdata.device)
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


def _structure(state: dict) -> dict:
    """A QuantEmbedding's extra state less its lookups' dtype."""
    return {key: value for key, value in state.items() if key != "dtype"}
