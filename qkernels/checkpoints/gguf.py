"""GGUF checkpoints (llama.cpp's format) with their own integers, read by the `gguf` package.

Each quantized tensor of the file becomes a QuantizedWeight whose dequantization reproduces the file's
values bit for bit (docs/numerics.md section 5, reading 23):

    type   block                                   canonical format
    Q4_0   d, 32 × 4-bit u: d·(u − 8)              4-bit, G 32, scale d, q = u − 8
    Q4_1   d, m, 32 × 4-bit u: d·u + m             4-bit, G 32, scale d, q = u − 8, zero point −8, offset m
    Q8_0   d, 32 × int8 q: d·q                     8-bit, G 32, scale d
    Q4_K   256 = 8 × 32: d·sc_j·u − dmin·m_j       4-bit, G 32, scale d·sc_j, q = u − 8, zero point −8,
                                                   offset −dmin·m_j
    Q5_0   d, 32 × 5-bit u: d·(u − 16)             8-bit, G 32, scale d, q = u − 16
    Q5_1   d, m, 32 × 5-bit u: d·u + m             8-bit, G 32, scale d, q = u, offset m
    Q5_K   256 = 8 × 32: d·sc_j·u − dmin·m_j       8-bit, G 32, scale d·sc_j, q = u, offset −dmin·m_j
    Q6_K   256 = 16 × 16: d·sc_j·(u − 32)          8-bit, G 16, scale d·sc_j, q = u − 32

(d, dmin, m: float16; sc_j, m_j: 6-bit unsigned, Q6_K's sc_j int8.) Every other quantized type is
refused (UnsupportedError naming the tensor and its type); F32, F16 and BF16 tensors are float.

    model = qkernels.checkpoints.gguf.load_model(path)   # transformers' model, QuantLinear layers
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from ..packing import pack_int4
from ..weights import QuantizedWeight

__all__ = ["FLOAT_TYPES", "QUANTIZED_TYPES", "load_model", "load_tokenizer", "quantized_weight"]

QUANTIZED_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
# (elements, bytes) per block: GGML's layouts (ggml-common.h), which the gguf package's GGML_QUANT_SIZES confirms.
_BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34), "Q5_0": (32, 22), "Q5_1": (32, 24),
           "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block [..., bytes], as float32 [..., 1] (exact)."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16·c bytes [..., 16c] as 32·c 4-bit values [..., 32c] in GGML's order: runs of 32 values
    (16 bytes for the 32-blocks, 32 for the K-quants' 64) hold first the low nibbles, then the high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 bytes [..., 12] of eight 6-bit scales and mins, as (sc, m) uint8 [..., 8]:
    sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 have
    their low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits in
    the top 2 bits of bytes 0-3 (scales) and 4-7 (mins)."""
    low_sc, low_m, rest = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([low_sc & 0x3F, (rest & 0x0F) | ((low_sc >> 6) << 4)], axis=-1)
    m = np.concatenate([low_m & 0x3F, (rest >> 4) | ((low_m >> 6) << 4)], axis=-1)
    return sc, m


def _decode(blocks: np.ndarray, qtype: str):
    """Blocks uint8 [N, B, bytes] as (q int8 [N, B, block], scales, zero point, offsets or None, group):
    scales and offsets float32 [N, B, groups per block], the zero point one int for all groups or None."""
    N, B = blocks.shape[:2]
    if qtype in ("Q4_0", "Q4_1"):
        q = _nibbles(blocks[..., 4 if qtype == "Q4_1" else 2 :]).astype(np.int8) - 8
        if qtype == "Q4_0":
            return q, _f16(blocks, 0), None, None, 32
        return q, _f16(blocks, 0), -8, _f16(blocks, 2), 32
    if qtype == "Q8_0":
        return blocks[..., 2:].view(np.int8), _f16(blocks, 0), None, None, 32
    if qtype in ("Q5_0", "Q5_1"):
        start = 4 if qtype == "Q5_1" else 2
        high = np.ascontiguousarray(blocks[..., start : start + 4]).view("<u4")  # bit i: value i's fifth bit
        fifth = (high >> np.arange(32, dtype=np.uint32)) & 1
        u = (_nibbles(blocks[..., start + 4 :]) | (fifth.astype(np.uint8) << 4)).astype(np.int8)
        if qtype == "Q5_0":
            return u - 16, _f16(blocks, 0), None, None, 32
        return u, _f16(blocks, 0), None, _f16(blocks, 2), 32
    if qtype in ("Q4_K", "Q5_K"):
        sc, m = _k_scales(blocks[..., 4:16])
        scales = _f16(blocks, 0) * sc.astype(np.float32)  # exact: 11 × 6 significant bits
        offsets = -(_f16(blocks, 2) * m.astype(np.float32))  # exact, as the scales
        if qtype == "Q4_K":  # 4 runs of 64 values in 32 bytes
            q = _nibbles(blocks[..., 16:].reshape(N, B, 4, 32)).reshape(N, B, 256).astype(np.int8) - 8
            return q, scales, -8, offsets, 32
        # Q5_K: the fifth bit of value i of sub-block j is bit j of byte i % 32 of the 32 qh bytes.
        fifth = (blocks[..., 16:48, None] >> np.arange(8, dtype=np.uint8)) & 1  # [N, B, i, j]
        fifth = fifth.transpose(0, 1, 3, 2).reshape(N, B, 256)
        low = _nibbles(blocks[..., 48:].reshape(N, B, 4, 32)).reshape(N, B, 256)
        return (low | (fifth << 4)).astype(np.int8), scales, None, offsets, 32
    if qtype == "Q6_K":
        # Two halves of 128 values: 64 bytes of low nibbles (values 0-63 low, 64-127 high, as
        # _nibbles with runs of 64) and 32 bytes whose bit pairs 0-1, 2-3, 4-5, 6-7 are the top two
        # bits of values 0-31, 32-63, 64-95, 96-127.
        low = _nibbles(blocks[..., :128].reshape(N, B, 2, 64))  # [N, B, 2, 128]
        high = (blocks[..., 128:192].reshape(N, B, 2, 1, 32) >> np.arange(0, 8, 2, dtype=np.uint8)[:, None]) & 3
        u = low | (high.reshape(N, B, 2, 128) << 4)
        scales = _f16(blocks, 208) * blocks[..., 192:208].view(np.int8).astype(np.float32)  # exact: 11 × 8 bits
        return u.reshape(N, B, 256).astype(np.int8) - 32, scales, None, None, 16
    raise AssertionError(qtype)


def quantized_weight(data: np.ndarray, qtype: str, K: int, name: str = "tensor") -> QuantizedWeight:
    """A GGUF tensor's bytes (uint8 [N, K / block · bytes per block], as the gguf package's
    ReaderTensor.data has them) in the canonical format, its integers and scales unchanged: see the
    table of the module's docstring."""
    if qtype in FLOAT_TYPES:
        raise UnsupportedError(f"{name}: GGUF type {qtype} is float, not quantized weights")
    if qtype not in QUANTIZED_TYPES:
        raise UnsupportedError(
            f"{name}: GGUF type {qtype} has no exact canonical form here (supported: {', '.join(QUANTIZED_TYPES)}; "
            f"float: {', '.join(FLOAT_TYPES)})"
        )
    block, size = _BLOCKS[qtype]
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or K % block or data.shape[1] != K // block * size:
        raise InvalidArgumentError(
            f"{name}: {qtype} bytes of shape {data.shape} ({data.dtype}) do not hold rows of K={K} values"
        )
    N, B = data.shape[0], K // block
    q, scales, zero_points, offsets, group = _decode(data.reshape(N, B, size), qtype)
    groups = (N, K // group)
    bits = 4 if qtype in ("Q4_0", "Q4_1", "Q4_K") else 8
    q = q.reshape(N, K)
    return QuantizedWeight(
        pack_int4(q) if bits == 4 else np.ascontiguousarray(q), scales.reshape(groups),
        None if zero_points is None else np.full(groups, zero_points, np.int8),
        bits, group, (N, K), offsets=None if offsets is None else offsets.reshape(groups),
    )


# ---------------------------------------------------------------- the model


def load_tokenizer(path: str | Path):
    """The Hugging Face tokenizer transformers builds from the GGUF file's metadata."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def load_model(path: str | Path):
    """The transformers model of a GGUF file (any architecture transformers reads from GGUF; the
    config from the file's metadata, as transformers builds it), in eval mode, with the file's own
    integers: every linear layer stored in a quantized type is a QuantLinear (weight-only, float32
    activations) and a quantized token embedding a QuantEmbedding; a file without an output
    layer (tied embeddings) gets an lm_head QuantLinear on the embedding's buffers. Norms, and
    tensors stored as F32 / F16 / BF16, are float32, as in transformers' float load. No float copy
    of a quantized tensor is made. The tensors transformers' own loader skips (none of
    SmolLM2's) are skipped too; a quantized type outside QUANTIZED_TYPES, or one on a tensor
    that is neither a linear layer's weight nor the embedding, raises UnsupportedError; a tensor
    whose shape is not the model's, or a truncated or malformed file, InvalidArgumentError."""
    import gc

    import gguf
    import torch
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    from ..torch.embedding import QuantEmbedding
    from ..torch.linear import QuantLinear
    from ..torch.model import _set_module
    from ._packed import check_shapes

    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{path} is not a file")
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception:  # transformers' readers (struct, numpy errors) say neither "truncated" nor the file's name
        _reader(path)  # raises that when it is the cause
        raise
    gc.collect()  # the metadata transformers parsed (its own reader: ~180 MB for a 49k-token vocabulary)
    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reader = _reader(path)
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)  # GGUF tensor name -> the model's parameter name
    modules = dict(model.named_modules())
    floats, weights = {}, {}  # parameter name -> float32 tensor; module name -> QuantizedWeight
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        if qtype in FLOAT_TYPES:  # processed and named as transformers' loader does
            result = processor.process(weights=gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                                       name=tensor.name, tensor_key_mapping=names, parsed_parameters={})
            if result.name in names:
                floats[names[result.name]] = torch.from_numpy(np.array(result.weights, np.float32))  # a copy
            continue
        if tensor.name not in names:
            continue
        module_name, _, parameter = names[tensor.name].rpartition(".")
        if parameter != "weight" or not isinstance(modules[module_name], (nn.Linear, nn.Embedding)):
            raise UnsupportedError(f"{tensor.name} ({names[tensor.name]}) is stored as {qtype}: quantized, but not "
                                   "the weight of a linear layer or an embedding")
        qw = quantized_weight(tensor.data, qtype, int(tensor.shape[0]), tensor.name)
        expected = tuple(modules[module_name].weight.shape)
        if qw.shape != expected:
            raise InvalidArgumentError(f"{tensor.name} ({names[tensor.name]}): the file's is [N, K] = "
                                       f"{list(qw.shape)}; the model's is {list(expected)}")
        weights[module_name] = _permuted_rows(qw, processor, tensor.name, names)
    del reader, tensor  # the file's memory map: every tensor kept is a copy
    check_shapes(model, floats)  # before any layer is replaced
    # One at a time, each QuantizedWeight dropped once its layer holds a copy: peak one model, not two.
    layers = {name: QuantLinear(weights.pop(name), floats.pop(f"{name}.bias", None)) for name in list(weights)}
    for name, layer in layers.items():
        _set_module(model, name, QuantEmbedding(layer) if isinstance(modules[name], nn.Embedding) else layer)
    _tie_output(model, layers, floats)
    missing = model.load_state_dict(floats, strict=False, assign=True)
    if missing.unexpected_keys:
        raise AssertionError(missing.unexpected_keys)  # every name came from the model itself
    absent = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if absent:
        raise InvalidArgumentError(f"{path.name} has no tensor for {', '.join(absent[:8])}"
                                   f"{f' and {len(absent) - 8} more' if len(absent) > 8 else ''}")
    return model.eval()


def _reader(path: Path):
    """The gguf package's reader of the file; its errors on a truncated or malformed file (a
    reshape, an index out of bounds) say neither that nor which file."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError) as error:
        raise InvalidArgumentError(f"{path}: not a readable GGUF file, truncated or malformed ({error})") from error


def _permuted_rows(qw: QuantizedWeight, processor, name: str, names: dict) -> QuantizedWeight:
    """qw with its rows reordered as transformers' processor reorders the float tensor (LLaMA's
    q and k projections: llama.cpp stores their rows permuted for its rotary embedding). A
    processor that does more than reorder rows cannot act on quantized blocks: refused."""
    rows = np.arange(qw.N, dtype=np.int64)[:, None]
    result = processor.process(weights=rows, name=name, tensor_key_mapping=names, parsed_parameters={})
    order = np.asarray(result.weights)
    if result.name != name or order.shape != rows.shape or not np.array_equal(np.sort(order[:, 0]), rows[:, 0]):
        raise UnsupportedError(f"{name}: transformers transforms this tensor ({type(processor).__name__}) in a "
                               "way other than reordering rows, which quantized blocks cannot follow")
    if np.array_equal(order, rows):
        return qw
    order = order[:, 0]
    pick = lambda a: None if a is None else np.ascontiguousarray(a[order])  # noqa: E731
    return QuantizedWeight(pick(qw.data), pick(qw.scales), pick(qw.zero_points), qw.bits, qw.group_size, qw.shape,
                           offsets=pick(qw.offsets))


def _tie_output(model, layers: dict, floats: dict) -> None:
    """A model whose config ties the output layer to the embedding, loaded from a file that has no
    output layer of its own: the output layer reads the embedding's table (its quantized buffers,
    or its float parameter)."""
    from ..torch.model import _set_module

    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if not getattr(model.config, "tie_word_embeddings", False) or output is None:
        return
    output_name = next(name for name, m in model.named_modules() if m is output)
    embedding_name = next(name for name, m in model.named_modules() if m is embedding)
    if output_name in layers or f"{output_name}.weight" in floats:
        return  # the file has it
    if embedding_name in layers:
        _set_module(model, output_name, layers[embedding_name])
    elif f"{embedding_name}.weight" in floats:
        floats[f"{output_name}.weight"] = floats[f"{embedding_name}.weight"]

