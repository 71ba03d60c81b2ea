"""GPTQ checkpoints, the format of AutoGPTQ and GPTQModel (and of transformers' GPTQ support),
read into and written from QuantLinear layers: exactly, with the file's own integers.

Per linear layer W [N, K] (`b` = bits, 4 or 8; F = 32/b fields per int32 word; G = group_size,
−1 meaning one group per row; NG = ceil(K / G)):

    qweight  int32 [K/F, N]   word [i, n] holds q[n, i·F + j] (unsigned) in bits [j·b, (j+1)·b)
    qzeros   int32 [NG, N/F]  word [g, c] holds the zero point of column c·F + j in bits [j·b, (j+1)·b):
                              z itself (checkpoint_format "gptq_v2"), or z − 1 ("gptq", v1)
    scales   float16 [NG, N]
    g_idx    int32 [K]        the group of each input k (k // G, unless act-order reordered them)
    bias     float16 [N]      optional

and w[n, k] = scales[g_idx[k], n] · (q[n, k] − z[g_idx[k], n]).

v1's "z − 1" is AutoGPTQ's historical convention: its packer subtracts 1 and every reader adds it
back. A zero point of 0 has no v1 form (the packer writes −1, which ORs ones into the neighbouring
fields, and readers then disagree about the field: some mask (z + 1) to 0, others read 16), so a v1
field holding 2^b − 1 is refused on reading and a zero point of 0 on writing v1; v2 (GPTQModel's
internal format, which it converts v1 to by adding 1 to every field) stores every z.

To the canonical format: q − 2^(b−1) and z − 2^(b−1) (the same products); zero points all at
2^(b−1), as symmetric quantization writes them, become no zero points. Act-order checkpoints
(desc_act) have a g_idx that is not k // G: the input columns are then permuted so that each group
is G consecutive columns again, π = the stable sort of g_idx, and the layer gathers its input
x[..., π] before the kernel (QuantLinear.input_permutation): column i of the canonical weights is
input π[i]; the products, and the weights, are exactly the file's. Writing inverts all of this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..torch.linear import QuantLinear
from ..torch.model import quantized_layers
from . import _packed

FORMATS = ("gptq", "gptq_v2")  # v1, v2


def layer_from_gptq(tensors: dict[str, torch.Tensor], *, bits: int, group_size: int,
                    checkpoint_format: str = "gptq", name: str = "layer") -> QuantLinear:
    """A QuantLinear from one layer's tensors (qweight, qzeros, scales, and optional g_idx, bias)."""
    if bits not in (4, 8):
        raise InvalidArgumentError(f"{name}: {bits}-bit GPTQ has no canonical form (4 or 8 bits)")
    if checkpoint_format not in FORMATS:
        raise InvalidArgumentError(f"checkpoint_format={checkpoint_format!r} is not one of {FORMATS}")
    unknown = set(tensors) - {"qweight", "qzeros", "scales", "g_idx", "bias"}
    missing = {"qweight", "qzeros", "scales"} - set(tensors)
    if unknown or missing:
        raise InvalidArgumentError(f"{name}: tensors {sorted(missing)} missing, {sorted(unknown)} unexpected")
    F = 32 // bits
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    K, N = qweight.shape[0] * F, qweight.shape[1]
    G = _packed.group_inputs(group_size, K, name)
    NG = -(-K // G)
    for what, tensor, shape in (("qzeros", qzeros, (NG, N // F)), ("scales", scales, (NG, N))):
        if tuple(tensor.shape) != shape or N % F:
            raise InvalidArgumentError(f"{name}: {what} is {list(tensor.shape)}; K={K}, N={N}, group_size={group_size} "
                                       f"need {list(shape)}")
    q = _packed.unpack_fields(qweight.numpy(), bits, axis=0).T  # [N, K]
    zeros = _packed.unpack_fields(qzeros.numpy(), bits, axis=1)  # [NG, N]
    if checkpoint_format == "gptq":
        if (zeros == (1 << bits) - 1).any():
            raise InvalidArgumentError(
                f"{name}: a v1 zero-point field holds {(1 << bits) - 1}, which v1 readers disagree on (AutoGPTQ "
                "writes it for a zero point of 0, corrupting its neighbours): no exact reading exists"
            )
        zeros = zeros + 1
    permutation = None
    if "g_idx" in tensors:
        g_idx = tensors["g_idx"]
        if g_idx.is_floating_point() or g_idx.is_complex() or g_idx.dtype == torch.bool:  # would be truncated
            raise InvalidArgumentError(f"{name}: g_idx is {g_idx.dtype}; group indices are integers")
        g_idx = g_idx.numpy().astype(np.int64)
        if g_idx.shape != (K,):
            raise InvalidArgumentError(f"{name}: g_idx is {list(g_idx.shape)}; expected [{K}]")
        order = np.argsort(g_idx, kind="stable")
        if not np.array_equal(g_idx[order], np.arange(K) // G):
            raise InvalidArgumentError(
                f"{name}: g_idx does not give each group {G} inputs (the last group the rest): no canonical form"
            )
        if not np.array_equal(order, np.arange(K)):
            permutation, q = torch.from_numpy(order), q[:, order]
    weight = _packed.canonical_weight(q, scales.T, zeros.T, bits, G)
    bias = tensors.get("bias")
    return QuantLinear(weight, None if bias is None else bias.float(), input_permutation=permutation)


def layer_to_gptq(layer: QuantLinear, *, checkpoint_format: str = "gptq", group_size: int | None = None,
                  round_float16: bool = False, name: str = "layer") -> dict[str, torch.Tensor]:
    """One QuantLinear's GPTQ tensors (layer_from_gptq's inverse). group_size: the checkpoint's
    (−1 for per channel; default the layer's), which must make the layer's groups. Scales and bias
    must be float16 numbers unless round_float16 rounds them."""
    if checkpoint_format not in FORMATS:
        raise InvalidArgumentError(f"checkpoint_format={checkpoint_format!r} is not one of {FORMATS}")
    _packed.check_exportable(layer, name, permutation_ok=True)
    bits, K = layer.bits, layer.in_features
    G = layer.group_size if group_size is None else _packed.group_inputs(group_size, K, name)
    if min(G, K) != min(layer.group_size, K):  # any G ≥ K is one group per row
        raise InvalidArgumentError(f"{name} has groups of {layer.group_size}; the checkpoint's are {group_size}")
    q, zeros = _packed.unsigned_integers(layer)
    g_idx = np.arange(K) // G
    if layer.input_permutation is not None:  # canonical column i is input π[i]
        permutation = layer.input_permutation.numpy()
        original = np.empty_like(q)
        original[:, permutation] = q
        q, g_idx = original, np.empty_like(g_idx)
        g_idx[permutation] = np.arange(K) // G
    if checkpoint_format == "gptq":
        if (zeros == 0).any():
            raise InvalidArgumentError(f"{name}: a zero point of 0 has no v1 form; write checkpoint_format='gptq_v2'")
        zeros = zeros - 1
    tensors = {
        "qweight": torch.from_numpy(_packed.pack_fields(q.T, bits, axis=0)),
        "qzeros": torch.from_numpy(_packed.pack_fields(zeros.T, bits, axis=1)),
        "scales": torch.from_numpy(_packed.float16_scales(layer, name, round_float16).T.copy()),
        "g_idx": torch.from_numpy(g_idx.astype(np.int32)),
    }
    bias = _packed.float16_bias(layer, name, round_float16)
    return tensors if bias is None else tensors | {"bias": bias}


def quantization_config(config: dict, directory: Path | None = None) -> dict:
    """The GPTQ settings of a checkpoint: config.json's quantization_config, else quantize_config.json."""
    settings = config.get("quantization_config")
    if settings is None and directory is not None and (directory / "quantize_config.json").is_file():
        import json

        settings = json.loads((directory / "quantize_config.json").read_text())
    if not settings or settings.get("quant_method", "gptq") != "gptq":
        raise InvalidArgumentError("not a GPTQ checkpoint: no quantization_config with quant_method 'gptq'")
    return settings


def load_gptq_state(model: nn.Module, state: dict[str, torch.Tensor], settings: dict) -> nn.Module:
    """Makes `model` (a float transformers model of the checkpoint's architecture) the checkpoint:
    every layer with a qweight becomes a QuantLinear, every other tensor is loaded. settings: the
    quantization_config (bits, group_size, checkpoint_format or format: "gptq" (v1, the default)
    or "gptq_v2")."""
    checkpoint_format = settings.get("checkpoint_format", settings.get("format", "gptq"))
    if settings.get("dynamic"):
        raise InvalidArgumentError("GPTQModel's per-module 'dynamic' settings are not read")
    bits, group_size = int(settings["bits"]), int(settings["group_size"])
    return _packed.load_model(model, state, lambda name, tensors: layer_from_gptq(
        tensors, bits=bits, group_size=group_size, checkpoint_format=checkpoint_format, name=name))


def load_gptq(directory: str | Path) -> nn.Module:
    """The transformers model of a GPTQ checkpoint directory (config.json, model.safetensors or
    its shards, quantize_config.json where config.json has no quantization_config), in float32
    with QuantLinear layers holding the file's integers. Needs transformers and safetensors. The
    model is first built in float (its linear layers are then replaced)."""
    config, state = _packed.read_directory(directory)
    settings = quantization_config(config, Path(directory))
    return load_gptq_state(_packed.float_model(config), state, settings)


def gptq_state(model: nn.Module, *, checkpoint_format: str = "gptq",
               round_float16: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, quantization_config) of a model whose quantized layers are weight-only QuantLinear
    of one width and group size; its other tensors as they are (a tied head once)."""
    layers = quantized_layers(model)
    if not layers:
        raise InvalidArgumentError("the model has no QuantLinear layer")
    bits, group_size = _packed.common_bits(layers), _packed.common_group_size(layers)
    tensors = _packed.float_tensors(model)
    for name, layer in layers.items():
        tensors |= {f"{name}.{key}": value for key, value in layer_to_gptq(
            layer, checkpoint_format=checkpoint_format, group_size=group_size, round_float16=round_float16,
            name=name).items()}
    settings = {
        "quant_method": "gptq", "bits": bits, "group_size": group_size,
        "desc_act": any(layer.input_permutation is not None for layer in layers.values()),
        "sym": all(layer.zero_points is None for layer in layers.values()),
        "checkpoint_format": checkpoint_format,
    }
    return tensors, settings


def save_gptq(model: nn.Module, directory: str | Path, *, checkpoint_format: str = "gptq",
              round_float16: bool = False) -> None:
    """Writes a GPTQ checkpoint directory: model.safetensors, config.json with the
    quantization_config, and quantize_config.json (AutoGPTQ's copy of it). checkpoint_format:
    "gptq" (v1: what AutoGPTQ and transformers read) or "gptq_v2". Nothing is written if a layer
    cannot be stored (see layer_to_gptq)."""
    tensors, settings = gptq_state(model, checkpoint_format=checkpoint_format, round_float16=round_float16)
    _packed.write_directory(directory, model, tensors, settings, {"quantize_config.json": settings})


__all__ = ["FORMATS", "gptq_state", "layer_from_gptq", "layer_to_gptq", "load_gptq", "load_gptq_state", "save_gptq"]
