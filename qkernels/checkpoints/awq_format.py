"""AWQ checkpoints in AutoAWQ's GEMM layout (what transformers' AWQ support and vLLM read as
version "gemm"), read into and written from QuantLinear layers: exactly, with the file's integers.

Per linear layer W [N, K], 4 bits, G = group_size (−1: one group per row), NG = K / G:

    qweight  int32 [K, N/8]   word [k, c] holds q[c·8 + ORDER[i], k] (unsigned) in bits [4i, 4i+4)
    qzeros   int32 [NG, N/8]  word [g, c] holds z[g, c·8 + ORDER[i]] likewise
    scales   float16 [NG, N]
    bias     float16 [N]      optional

with ORDER = (0, 2, 4, 6, 1, 3, 5, 7): the nibbles of a word hold output columns 0, 2, 4, 6, 1, 3,
5, 7 of its eight, the interleaving AutoAWQ's GEMM kernel unpacks for free. Unlike GPTQ, qweight is
packed along N, the zero points are stored as they are, and there is no g_idx. Then
w[n, k] = scales[k // G, n] · (q[n, k] − z[k // G, n]).

To the canonical format: q − 8 and z − 8; zero points all 8 become no zero points. AutoAWQ always
writes zero points (zero_point=True); checkpoints of other versions (gemv, gemv_fast, marlin, exllama)
and zero_point=False are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..torch.linear import QuantLinear
from ..torch.model import quantized_layers
from . import _packed

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the output column each nibble of a word holds
BITS = 4


def layer_from_awq(tensors: dict[str, torch.Tensor], *, group_size: int, name: str = "layer") -> QuantLinear:
    """A QuantLinear from one layer's tensors (qweight, qzeros, scales, optional bias)."""
    unknown = set(tensors) - {"qweight", "qzeros", "scales", "bias"}
    missing = {"qweight", "qzeros", "scales"} - set(tensors)
    if unknown or missing:
        raise InvalidArgumentError(f"{name}: tensors {sorted(missing)} missing, {sorted(unknown)} unexpected")
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    K, N = qweight.shape[0], qweight.shape[1] * 8
    G = _packed.group_inputs(group_size, K, name)
    if K % G:
        raise InvalidArgumentError(f"{name}: K={K} is not a multiple of group_size={G}, as AWQ needs")
    for what, tensor, shape in (("qzeros", qzeros, (K // G, N // 8)), ("scales", scales, (K // G, N))):
        if tuple(tensor.shape) != shape:
            raise InvalidArgumentError(f"{name}: {what} is {list(tensor.shape)}; K={K}, N={N}, group_size={group_size} "
                                       f"need {list(shape)}")
    q = _packed.unpack_fields(qweight.numpy(), BITS, axis=1, order=ORDER).T  # [N, K]
    zeros = _packed.unpack_fields(qzeros.numpy(), BITS, axis=1, order=ORDER).T  # [N, NG]
    bias = tensors.get("bias")
    return QuantLinear(_packed.canonical_weight(q, scales.T, zeros, BITS, G), None if bias is None else bias.float())


def layer_to_awq(layer: QuantLinear, *, round_float16: bool = False, name: str = "layer") -> dict[str, torch.Tensor]:
    """One QuantLinear's AWQ tensors (layer_from_awq's inverse): 4 bits, G dividing K, no input
    permutation. Scales and bias must be float16 numbers unless round_float16 rounds them."""
    _packed.check_exportable(layer, name, permutation_ok=False)
    if layer.bits != BITS:
        raise InvalidArgumentError(f"{name} has {layer.bits}-bit weights; AWQ's GEMM layout is 4-bit")
    if layer.in_features % min(layer.group_size, layer.in_features):
        raise InvalidArgumentError(f"{name}: K={layer.in_features} is not a multiple of the group size "
                                   f"{layer.group_size}, as AWQ needs")
    q, zeros = _packed.unsigned_integers(layer)
    tensors = {
        "qweight": torch.from_numpy(_packed.pack_fields(q.T, BITS, axis=1, order=ORDER)),
        "qzeros": torch.from_numpy(_packed.pack_fields(zeros.T, BITS, axis=1, order=ORDER)),
        "scales": torch.from_numpy(_packed.float16_scales(layer, name, round_float16).T.copy()),
    }
    bias = _packed.float16_bias(layer, name, round_float16)
    return tensors if bias is None else tensors | {"bias": bias}


def quantization_config(config: dict, directory: Path | None = None) -> dict:
    """The AWQ settings as transformers names them (bits, group_size, zero_point, version), from
    config.json's quantization_config or AutoAWQ's quant_config.json (w_bit, q_group_size, ...)."""
    settings = config.get("quantization_config")
    if settings is None and directory is not None and (directory / "quant_config.json").is_file():
        raw = json.loads((directory / "quant_config.json").read_text())
        settings = {"quant_method": "awq", "bits": raw.get("w_bit"), "group_size": raw.get("q_group_size"),
                    "zero_point": raw.get("zero_point"), "version": raw.get("version")}
    if not settings or settings.get("quant_method") != "awq":
        raise InvalidArgumentError("not an AWQ checkpoint: no quantization_config with quant_method 'awq'")
    version = str(settings.get("version", "gemm")).lower()
    if version != "gemm" or settings.get("bits", BITS) != BITS or settings.get("zero_point") is False:
        raise InvalidArgumentError(
            f"AWQ version {version!r}, {settings.get('bits')} bits, zero_point={settings.get('zero_point')}: only "
            "AutoAWQ's GEMM layout (4 bits, zero points) is read"
        )
    return settings


def load_awq_state(model: nn.Module, state: dict[str, torch.Tensor], settings: dict) -> nn.Module:
    """Makes `model` (a float transformers model of the checkpoint's architecture) the checkpoint:
    every layer with a qweight becomes a QuantLinear, every other tensor is loaded."""
    group_size = int(settings["group_size"])
    return _packed.load_model(model, state, lambda name, tensors: layer_from_awq(tensors, group_size=group_size,
                                                                                name=name))


def load_awq(directory: str | Path) -> nn.Module:
    """The transformers model of an AWQ checkpoint directory (config.json, model.safetensors or its
    shards, quant_config.json where config.json has no quantization_config), in float32 with
    QuantLinear layers holding the file's integers. Needs transformers and safetensors."""
    config, state = _packed.read_directory(directory)
    settings = quantization_config(config, Path(directory))
    return load_awq_state(_packed.float_model(config), state, settings)


def awq_state(model: nn.Module, *, round_float16: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, quantization_config) of a model whose quantized layers are 4-bit weight-only
    QuantLinear of one group size G that divides every layer's K; its other tensors as they are
    (a tied head once)."""
    layers = quantized_layers(model)
    if not layers:
        raise InvalidArgumentError("the model has no QuantLinear layer")
    group_size = _packed.common_group_size(layers)
    # Every layer's scales are [K/G, N] for the checkpoint's one G: a layer whose K it does not divide (a
    # per-channel layer narrower than the others' groups, say) has no AWQ form, and load_awq would refuse it.
    ragged = [name for name, layer in layers.items() if group_size != -1 and layer.in_features % group_size]
    if ragged:
        raise InvalidArgumentError(
            f"{ragged[0]}: K={layers[ragged[0]].in_features} is not a multiple of the checkpoint's group size "
            f"{group_size}, as AWQ needs (GPTQ stores such a layer)"
        )
    tensors = _packed.float_tensors(model)
    for name, layer in layers.items():
        tensors |= {f"{name}.{key}": value
                    for key, value in layer_to_awq(layer, round_float16=round_float16, name=name).items()}
    floats = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    settings = {"quant_method": "awq", "bits": BITS, "group_size": group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": floats or None}
    return tensors, settings


def save_awq(model: nn.Module, directory: str | Path, *, round_float16: bool = False) -> None:
    """Writes an AWQ checkpoint directory: model.safetensors, config.json with the
    quantization_config and AutoAWQ's quant_config.json. Nothing is written if a layer cannot be
    stored (see layer_to_awq)."""
    tensors, settings = awq_state(model, round_float16=round_float16)
    autoawq = {"zero_point": True, "q_group_size": settings["group_size"], "w_bit": BITS, "version": "GEMM"}
    _packed.write_directory(directory, model, tensors, settings, {"quant_config.json": autoawq})


__all__ = ["ORDER", "awq_state", "layer_from_awq", "layer_to_awq", "load_awq", "load_awq_state", "save_awq"]
