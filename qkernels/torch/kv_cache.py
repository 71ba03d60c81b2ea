"""A quantized KV cache for Hugging Face transformers' generation loop: keys per channel, values
per token (qkernels.quant.quantize_kv's split, after KIVI: Liu et al. 2024, arXiv:2402.02750),
int8 or int4, stored as integers and dequantized for attention on every step.

    cache = QuantizedKVCache(model.config, bits=4)
    model.generate(ids, cache=cache, max_new_tokens=32)
    model(ids, cache=QuantizedKVCache(model.config, bits=8))   # one forward: the same cache

Appending: each value token is quantized on arrival (its own range over its head's channels). A
key channel's range is taken over a block of `block_size` tokens (KIVI's grouping along tokens);
the keys of the block not yet full stay in float, at most block_size − 1 tokens per head. Blocks
start at positions 0, G, 2G, ..., so the stored integers do not depend on how the tokens arrive
(one by one, in chunks, or all at once). What attention reads does: a key is read in float until
its block is full, then dequantized.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..errors import InvalidArgumentError, NonFiniteError
from ..quant._common import check_bits, quantize_rows


class _Quantized:
    """Integers q (int8, one per byte; 4-bit values in [-8, 7]) with scales and zero points broadcast
    against them, concatenated along the token axis (-2) as tokens arrive."""

    def __init__(self):
        self.q = self.scales = self.zero_points = None

    def append(self, q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor) -> None:
        """q [..., t, D]; scales and zero points [..., t, 1] (values: per token) or [..., blocks, D]
        (keys: per channel of each block): both grow along axis -2."""
        if self.q is None:
            self.q, self.scales, self.zero_points = q, scales, zero_points
        else:
            self.q = torch.cat([self.q, q], dim=-2)
            self.scales = torch.cat([self.scales, scales], dim=-2)
            self.zero_points = torch.cat([self.zero_points, zero_points], dim=-2)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scales, self.zero_points) if t is not None)


def _quantize_last_axis(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract's asymmetric quantizer (docs/numerics.md §2) with one range per vector along the
    last axis: (q int8 as x, scales float32 [..., 1], zero points int8 [..., 1])."""
    rows = x.detach().to(torch.float32).reshape(-1, x.shape[-1]).numpy()
    q, scales, zero_points = quantize_rows(rows, bits, symmetric=False)
    shape = x.shape[:-1] + (1,)
    return (torch.from_numpy(q).reshape(x.shape), torch.from_numpy(scales).reshape(shape),
            torch.from_numpy(np.asarray(zero_points)).reshape(shape))


def _dequantize(q: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, dtype) -> torch.Tensor:
    """scales · (q − zero_points) in float64, rounded once to dtype (as qkernels.quant.dequantize_keys)."""
    return ((q.double() - zero_points.double()) * scales.double()).to(dtype)


class QuantizedKVLayer(CacheLayerMixin):
    """One attention layer's cache: keys [B, H, T, D] per channel in blocks of block_size tokens,
    values per token; `bits` 8 or 4; zero points (asymmetric ranges)."""

    is_sliding = False

    def __init__(self, bits: int = 8, block_size: int = 32):
        super().__init__()
        check_bits(bits)
        if block_size < 1:
            raise InvalidArgumentError(f"block_size={block_size} must be positive")
        self.bits, self.block_size = bits, block_size
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if key_states.device.type != "cpu":
            raise InvalidArgumentError("QuantizedKVCache quantizes on the CPU; the key states are on "
                                       f"{key_states.device}")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_blocks, self.value_tokens = _Quantized(), _Quantized()
        self.key_residual = key_states[..., :0, :].detach().clone()  # the block not yet full, in float
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Appends [B, H, t, D] keys and values; returns every cached token's keys and values as
        attention reads them: dequantized (the unfinished key block as given). Appending no tokens
        (t = 0) changes nothing. Everything is checked and quantized before anything is stored, so
        that an error (NaN or Inf states) leaves the cache as it was."""
        # Up front: a NaN key would otherwise wait in the float residual, reach attention, and make
        # every later append that completes its block fail.
        for name, states in (("key_states", key_states), ("value_states", value_states)):
            if not torch.isfinite(states).all():
                raise NonFiniteError(f"{name} holds NaN or Inf")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        if not t:  # the quantizer refuses empty rows; nothing cached yet: the empty values given
            return self.keys_for_attention(), self._dequantized_values() if self.length else value_states.detach()
        values = _quantize_last_axis(value_states, self.bits)
        pending = torch.cat([self.key_residual, key_states.detach()], dim=-2)
        full = pending.shape[-2] // self.block_size * self.block_size
        if full:
            blocks = pending[..., :full, :]
            B, H, _, D = blocks.shape
            # [B, H, n, G, D] → channels last-but-one: one range per (block, channel) over its G tokens
            by_block = blocks.reshape(B, H, -1, self.block_size, D).transpose(-1, -2)
            q, scales, zero_points = _quantize_last_axis(by_block, self.bits)
            self.key_blocks.append(q.transpose(-1, -2).reshape(blocks.shape), scales.squeeze(-1), zero_points.squeeze(-1))
        self.value_tokens.append(*values)
        self.key_residual = pending[..., full:, :].clone()
        self.length += t
        return self.keys_for_attention(), self._dequantized_values()

    def keys_for_attention(self) -> torch.Tensor:
        if self.key_blocks.q is None:
            return self.key_residual
        B, H, T, D = self.key_blocks.q.shape
        blocks = self.key_blocks.q.reshape(B, H, T // self.block_size, self.block_size, D)
        keys = _dequantize(blocks, self.key_blocks.scales.unsqueeze(-2), self.key_blocks.zero_points.unsqueeze(-2),
                           self.dtype).reshape(B, H, T, D)
        return torch.cat([keys, self.key_residual], dim=-2)

    def _dequantized_values(self) -> torch.Tensor:
        v = self.value_tokens
        return _dequantize(v.q, v.scales, v.zero_points, self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held: integers (one per byte, 4-bit too), scales, zero points, the float key residual."""
        if not self.is_initialized:
            return 0
        residual = self.key_residual.numel() * self.key_residual.element_size()
        return self.key_blocks.nbytes + self.value_tokens.nbytes + residual

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.is_initialized, self.length = False, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise InvalidArgumentError("QuantizedKVCache does not reorder beams (beam search): use greedy or sampling")

    def crop(self, max_length: int) -> None:
        raise InvalidArgumentError("QuantizedKVCache cannot be cropped (assisted decoding)")


class QuantizedKVCache(Cache):
    """A transformers Cache of QuantizedKVLayer, one per decoder layer of `config`: pass it as
    `cache=` (transformers >= 5.24) to a model's forward or to generate()."""

    def __init__(self, config, bits: int = 8, block_size: int = 32):
        layers = config.get_text_config().num_hidden_layers
        super().__init__(layers=[QuantizedKVLayer(bits, block_size) for _ in range(layers)])
        self.bits, self.block_size = bits, block_size

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)
