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

Beam search reorders the cache (reorder_cache), and assisted decoding (an assistant model, or
prompt lookup) takes back the tokens the model did not accept (crop): the float keys of the blocks
the last update completed are kept until the next update, so that taking back up to that update's
tokens leaves the cache exactly as if they had never arrived; taking back more is refused.
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

    def map(self, f) -> None:
        """f applied to each tensor (a batch reordering, repetition or selection)."""
        if self.q is not None:
            self.q, self.scales, self.zero_points = f(self.q), f(self.scales), f(self.zero_points)

    def truncate(self, tokens: int, metadata: int) -> None:
        """The first `tokens` along axis -2 of q and `metadata` of the scales and zero points (none:
        empty, as before the first append)."""
        if not tokens:
            self.q = self.scales = self.zero_points = None
        elif self.q is not None:
            self.q = self.q[..., :tokens, :]
            self.scales, self.zero_points = self.scales[..., :metadata, :], self.zero_points[..., :metadata, :]


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
    is_croppable = True  # back to the start of the last update, exactly (crop)

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
        # The float keys of the blocks the last update completed, from block recent_first on: what
        # crop restores when it takes back tokens of those blocks.
        self.recent_keys, self.recent_first = self.key_residual, 0
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
        first = self._complete_blocks()
        if full:
            blocks = pending[..., :full, :]
            B, H, _, D = blocks.shape
            # [B, H, n, G, D] → channels last-but-one: one range per (block, channel) over its G tokens
            by_block = blocks.reshape(B, H, -1, self.block_size, D).transpose(-1, -2)
            q, scales, zero_points = _quantize_last_axis(by_block, self.bits)
            self.key_blocks.append(q.transpose(-1, -2).reshape(blocks.shape), scales.squeeze(-1), zero_points.squeeze(-1))
        self.value_tokens.append(*values)
        self.recent_keys, self.recent_first = pending[..., :full, :], first
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
        """Bytes held: integers (one per byte, 4-bit too), scales, zero points, the float key residual
        and the float keys of the blocks the last update completed (for crop)."""
        if not self.is_initialized:
            return 0
        floats = sum(t.numel() * t.element_size() for t in (self.key_residual, self.recent_keys))
        return self.key_blocks.nbytes + self.value_tokens.nbytes + floats

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.is_initialized, self.length = False, 0

    def _complete_blocks(self) -> int:
        return 0 if self.key_blocks.q is None else self.key_blocks.q.shape[-2] // self.block_size

    def _map_batch(self, f) -> None:
        """f (on the batch axis, 0) applied to every tensor held."""
        if self.length:
            self.key_blocks.map(f)
            self.value_tokens.map(f)
            self.key_residual, self.recent_keys = f(self.key_residual), f(self.recent_keys)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the batch becomes row beam_idx[i]."""
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        """Takes back the last -tokens_to_remove tokens (transformers' convention: a count <= 0), as
        if they had never arrived. Key blocks those tokens belong to are reopened from their float
        keys, which are kept only for the blocks the last update completed: a crop past the start of
        the last update's first such block is refused, with nothing changed."""
        if tokens_to_remove > 0:
            raise InvalidArgumentError(f"crop({tokens_to_remove}): pass minus the number of tokens to take back")
        if not tokens_to_remove or not self.is_initialized:
            return
        length = self.length + tokens_to_remove
        if length < 0:
            raise InvalidArgumentError(f"crop({tokens_to_remove}): the cache holds {self.length} tokens")
        G, complete = self.block_size, self._complete_blocks()
        keep = length // G
        if keep < min(complete, self.recent_first):
            raise InvalidArgumentError(
                f"crop({tokens_to_remove}) reaches key block {keep}, quantized before the last update: "
                "QuantizedKVCache takes back only what its last update completed"
            )
        if not length:
            self.reset()  # as new
            return
        if keep < complete:  # complete blocks to reopen: their float keys, then the residual's
            floats = torch.cat([self.recent_keys[..., (keep - self.recent_first) * G:, :], self.key_residual], dim=-2)
            self.recent_keys = self.recent_keys[..., :(keep - self.recent_first) * G, :]
            self.key_blocks.truncate(keep * G, keep)
        else:
            floats = self.key_residual
        self.key_residual = floats[..., :length - min(keep, complete) * G, :].clone()
        self.value_tokens.truncate(length, length)
        self.length = length


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
