"""What the GPTQ and AWQ formats share: unsigned b-bit fields packed in int32 words, and Hugging
Face checkpoint directories (config.json, safetensors files) of transformers models whose linear
layers are QuantLinear."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..packing import unpack
from ..quant._common import from_integers
from ..torch.embedding import QuantEmbedding
from ..torch.linear import QuantLinear
from ..torch.model import linear_weight, quantized_layers


def unpack_fields(words: np.ndarray, bits: int, axis: int, order: Sequence[int] | None = None) -> np.ndarray:
    """The unsigned `bits`-bit fields of int32 `words`, spread along `axis` (int64; that axis
    grows F = 32/bits times). Word w along the axis holds elements w·F + order[i] in bits
    [i·bits, (i+1)·bits), i = 0..F−1 (order: the identity unless given)."""
    words = np.asarray(words)
    if words.dtype != np.int32:
        raise InvalidArgumentError(f"packed tensors must be int32; got {words.dtype}")
    F = 32 // bits
    shifts = np.arange(F, dtype=np.uint32) * bits
    fields = ((words.view(np.uint32)[..., None] >> shifts) & ((1 << bits) - 1)).astype(np.int64)
    if order is not None:  # the field at position i is element order[i]
        elements = np.empty_like(fields)
        elements[..., list(order)] = fields
        fields = elements
    shape = list(words.shape)
    shape[axis] *= F
    return np.moveaxis(fields, -1, axis + 1).reshape(shape)


def pack_fields(values: np.ndarray, bits: int, axis: int, order: Sequence[int] | None = None) -> np.ndarray:
    """The inverse of unpack_fields: values in [0, 2^bits) whose `axis` is a multiple of 32/bits, as
    int32 words."""
    values = np.asarray(values, dtype=np.int64)
    F = 32 // bits
    if values.shape[axis] % F:
        raise InvalidArgumentError(f"{values.shape[axis]} elements do not fill {bits}-bit fields of int32 words")
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise InvalidArgumentError(f"values outside [0, {1 << bits}) cannot be packed in {bits} bits")
    shape = list(values.shape)
    shape[axis : axis + 1] = [shape[axis] // F, F]
    fields = np.moveaxis(values.reshape(shape), axis + 1, -1)  # [..., words, ..., F]
    if order is not None:
        fields = fields[..., list(order)]
    shifts = np.arange(F, dtype=np.uint64) * bits
    words = np.bitwise_or.reduce(fields.astype(np.uint64) << shifts, axis=-1)
    return np.ascontiguousarray(words.astype(np.uint32)).view(np.int32)


# ---------------------------------------------------------------- layers: canonical <-> unsigned integers


def canonical_weight(q: np.ndarray, scales: torch.Tensor, zeros: np.ndarray, bits: int, group_size: int):
    """A canonical QuantizedWeight from a format's unsigned integers: q [N, K] in [0, 2^b), zero
    points `zeros` [N, NG] (any integers), float scales [N, NG]. The canonical integers are
    q − 2^(b−1) and zeros − 2^(b−1) (exactly the same w = s·(q − z)); all zero points at 2^(b−1)
    (symmetric checkpoints) become no zero points. Raises where a zero point has no canonical value."""
    middle = 1 << (bits - 1)
    zp = zeros - middle
    if zp.size and (zp.min() < -middle or zp.max() >= middle):
        raise InvalidArgumentError(f"zero points outside [0, {2 * middle}) have no {bits}-bit canonical form")
    if not scales.is_floating_point():
        raise InvalidArgumentError(f"scales must be float; got {scales.dtype}")
    scales32 = scales.float().numpy()  # float16 and bfloat16 convert exactly
    if not np.isfinite(scales32).all():
        raise InvalidArgumentError("scales hold NaN or Inf")
    return from_integers(q - middle, scales32, None if not zp.any() else zp, bits, group_size)


def group_inputs(group_size: int, K: int, name: str) -> int:
    """G, the inputs per group, of a checkpoint's group_size: K for −1 (one group per row)."""
    if group_size != -1 and group_size < 1:
        raise InvalidArgumentError(f"{name}: group_size={group_size}; a checkpoint's is positive, or -1 (per channel)")
    return K if group_size == -1 else group_size


def unsigned_integers(layer: QuantLinear) -> tuple[np.ndarray, np.ndarray]:
    """(q [N, K] in [0, 2^b), zero points [N, NG]): canonical_weight's inverse."""
    middle = 1 << (layer.bits - 1)
    q = unpack(layer.qdata.numpy(), layer.bits, layer.in_features).astype(np.int64) + middle
    zp = np.zeros(layer.scales.shape, np.int64) if layer.zero_points is None else layer.zero_points.numpy()
    return q, zp.astype(np.int64) + middle


def float16_scales(layer: QuantLinear, name: str, round_float16: bool) -> np.ndarray:
    """The layer's scales as float16 (both formats store them so): exactly, or rounded when asked."""
    scales = layer.scales.numpy()
    half = scales.astype(np.float16)
    if not round_float16 and not np.array_equal(half.astype(np.float32), scales):
        raise InvalidArgumentError(
            f"{name}: scales are not float16 numbers, as the format stores them; pass round_float16=True to "
            "round them (the exported weights then differ from this model's by that rounding)"
        )
    return half


def float16_bias(layer: QuantLinear, name: str, round_float16: bool) -> torch.Tensor | None:
    if layer.bias is None:
        return None
    half = layer.bias.to(torch.float16)
    if not round_float16 and not torch.equal(half.float(), layer.bias):
        raise InvalidArgumentError(f"{name}: the bias is not float16, as the format stores it; pass round_float16=True")
    return half


def check_exportable(layer: QuantLinear, name: str, *, permutation_ok: bool) -> None:
    """Refuses what the formats cannot hold: activation quantization, run-time input factors,
    offsets, LLM.int8() outliers (and an input permutation where the format has no g_idx)."""
    problems = [
        what for what, present in (
            (f"activation={layer.activation!r}", layer.activation != "float"),
            ("an input_scale (run-time smoothing)", layer.input_scale is not None),
            ("offsets", layer.offsets is not None),
            ("an outlier threshold", layer.outlier_threshold is not None),
            ("an input permutation (act-order: GPTQ's g_idx holds it)",
             layer.input_permutation is not None and not permutation_ok),
        ) if present
    ]
    if problems:
        raise InvalidArgumentError(f"{name} has {', '.join(problems)}: the format stores weight-only layers")


def common_group_size(layers: dict[str, QuantLinear]) -> int:
    """The one group size of a checkpoint's layers: −1 if every layer is per channel (G ≥ K)."""
    grouped = {layer.group_size for layer in layers.values() if layer.group_size < layer.in_features}
    if not grouped:
        return -1
    if len(grouped) > 1:
        raise InvalidArgumentError(f"the layers have group sizes {sorted(grouped)}: a checkpoint has one")
    (G,) = grouped
    wide = [name for name, layer in layers.items() if layer.in_features > G and layer.group_size >= layer.in_features]
    if wide:
        raise InvalidArgumentError(f"{wide[0]} is per channel and the others have groups of {G}: a checkpoint has one")
    return G


def common_bits(layers: dict[str, QuantLinear]) -> int:
    bits = {layer.bits for layer in layers.values()}
    if len(bits) != 1:
        raise InvalidArgumentError(f"the layers have {sorted(bits)} bits: a checkpoint has one width")
    return bits.pop()


# ---------------------------------------------------------------- models and directories


def quantized_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """The layer names of a state dict that holds `<name>.qweight`."""
    return sorted(key[: -len(".qweight")] for key in state if key.endswith(".qweight"))


def replace_layers(model: nn.Module, layers: dict[str, QuantLinear]) -> None:
    """Puts each QuantLinear where `model` has a float linear layer of the same size and bias shape."""
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        target = modules.get(name)
        found = None if target is None else linear_weight(target)
        if found is None:
            raise InvalidArgumentError(f"the checkpoint quantizes {name!r}; the model has no linear layer there")
        weight, bias = found
        ours, theirs = (None if b is None else list(b.shape) for b in (layer.bias, bias))
        if list(weight.shape) != [layer.out_features, layer.in_features] or ours != theirs:
            raise InvalidArgumentError(
                f"{name}: the checkpoint's layer is [out, in] = {[layer.out_features, layer.in_features]}, bias "
                f"{ours}; the model's is {list(weight.shape)}, bias {theirs}"
            )
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)


def check_float_tensors(model: nn.Module, state: dict[str, torch.Tensor], quantized: Sequence[str]) -> None:
    """Raises unless `state` holds every tensor of `model` outside the layers named `quantized`
    (a tensor tied to one it holds, such as an output head sharing the embedding, may be left out)
    and nothing else, each of the model's shape."""
    own = {key for key in model.state_dict() if not any(key.startswith(name + ".") for name in quantized)}
    unexpected = sorted(set(state) - own)
    if unexpected:
        raise InvalidArgumentError(f"the checkpoint has tensors the model does not: {unexpected[:8]}")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    loaded = {tensors[key].data_ptr() for key in state if key in tensors}
    missing = sorted(key for key in own - set(state) if key in tensors and tensors[key].data_ptr() not in loaded)
    if missing:
        raise InvalidArgumentError(f"the checkpoint lacks {missing[:8]}")
    check_shapes(model, state)


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raises unless each tensor of `state` has the shape of the model's tensor of that name (if any)."""
    own = model.state_dict()
    for key in sorted(state.keys() & own.keys()):
        if state[key].shape != own[key].shape:
            raise InvalidArgumentError(f"{key}: the checkpoint's tensor is {list(state[key].shape)}; the model's "
                                       f"is {list(own[key].shape)}")


def float_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors other than its QuantLinear layers', each stored once (a tied head is left
    out, as transformers writes it). A quantized embedding (a GGUF model's QuantEmbedding) is refused:
    the formats hold embeddings in float, and its buffers would be written as tensors no model has."""
    embeddings = [name for name, m in model.named_modules() if isinstance(m, QuantEmbedding)]
    if embeddings:
        raise InvalidArgumentError(
            f"{embeddings[0]} is a QuantEmbedding: GPTQ and AWQ checkpoints have no quantized embedding (replace it "
            "by an nn.Embedding of its dequantized table to export; qkernels.torch.save_quantized stores it as is)"
        )
    quantized = quantized_layers(model)
    seen, out = set(), {}
    for key, value in model.state_dict().items():
        if any(key.startswith(name + ".") for name in quantized) or not isinstance(value, torch.Tensor):
            continue
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        out[key] = value.contiguous()
    return out


def read_directory(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, every tensor of model.safetensors or of the shards that
    model.safetensors.index.json names)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InvalidArgumentError(f"{directory} has no config.json")
    config = json.loads(config_path.read_text())
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise InvalidArgumentError(f"{directory} has neither model.safetensors nor model.safetensors.index.json")
    state = {}
    for name in files:
        state |= load_file(str(directory / name))
    return config, state


def float_model(config: dict) -> nn.Module:
    """The transformers model of config.json (its quantization_config left out), in float32, built
    with fresh weights that loading replaces. Needs transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {key: value for key, value in config.items() if key != "quantization_config"}
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise InvalidArgumentError("config.json names no model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()


def load_model(model: nn.Module, state: dict[str, torch.Tensor],
               layer: Callable[[str, dict[str, torch.Tensor]], QuantLinear]) -> nn.Module:
    """`model` with every `<name>.qweight` group of `state` made a QuantLinear by layer(name, its
    tensors by suffix) and every other tensor loaded. Nothing in `model` changes if a layer fails."""
    layers = {}
    for name in quantized_prefixes(state):
        tensors = {key[len(name) + 1 :]: value for key, value in state.items()
                   if key.startswith(name + ".") and "." not in key[len(name) + 1 :]}
        layers[name] = layer(name, tensors)
    if not layers:
        raise InvalidArgumentError("the checkpoint holds no quantized layer (no tensor named <layer>.qweight)")
    rest = {key: value for key, value in state.items() if not any(key.startswith(name + ".") for name in layers)}
    check_float_tensors(model, rest, list(layers))
    replace_layers(model, layers)
    model.load_state_dict(rest, strict=False)  # the QuantLinear buffers are set; the rest is checked above
    return model


def write_directory(directory: str | Path, model: nn.Module, tensors: dict[str, torch.Tensor],
                    quantization_config: dict, extra_files: dict[str, dict]) -> None:
    """Writes config.json (the model's config with quantization_config), model.safetensors and
    the format's own JSON files. Needs safetensors."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise InvalidArgumentError("the model has no Hugging Face config to write to config.json")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    config_dict = config.to_dict() | {"quantization_config": quantization_config}
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    for name, content in extra_files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
