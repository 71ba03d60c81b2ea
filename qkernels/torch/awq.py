"""AWQ on a torch model (quantize_model(method="awq")): the scales of each group of layers that read
one input, searched on calibration data (qkernels.quant.awq_scales), multiplied into the layers'
weights and divided out of the operation that produces their input."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..quant.awq import ActivationStatistics, awq_scales
from .model import LLAMA_BLOCKS, _warn_uncalibrated, calibrate, divide_rows, linear_weight, pre_norm_groups

# In LLaMA-family blocks, linear layers that feed linear layers through per-channel operations only:
# up_proj → (act(gate) · up) → down_proj, and v_proj → attention (a weighted sum over tokens, per
# channel) → o_proj, the latter only without grouped-query attention (v's outputs then map one to
# one onto o's inputs; with it, one v channel feeds several heads).
_LINEAR_FOLDS = (("mlp.up_proj", "mlp.down_proj"), ("self_attn.v_proj", "self_attn.o_proj"))


def _progress_bar(items, description: str):
    """tqdm over items on a terminal (tqdm comes with transformers); the items as they are elsewhere."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, disable=None, leave=False)


def awq_groups(model: nn.Module, layers: dict[str, nn.Module]) -> list[tuple[str, list[str]]]:
    """(producer, [layers]) for each group of `layers` whose common input comes from an operation
    the AWQ scales can be divided out of: a pre-norm (pre_norm_groups) or, in LLaMA-family blocks,
    up_proj (for down_proj) and v_proj (for o_proj, when their sizes match). A group is kept only
    when all its layers are being quantized."""
    modules = dict(model.named_modules())
    groups = list(pre_norm_groups(model).items())
    for block, module in modules.items():
        if type(module).__name__ not in LLAMA_BLOCKS:
            continue
        for producer, consumer in _LINEAR_FOLDS:
            producer, consumer = f"{block}.{producer}", f"{block}.{consumer}"
            found = [linear_weight(modules[n]) if n in modules else None for n in (producer, consumer)]
            if None not in found and found[0][0].shape[0] == found[1][0].shape[1]:
                groups.append((producer, [consumer]))
    return [(producer, names) for producer, names in groups if all(name in layers for name in names)]


def awq_weights(model: nn.Module, layers: dict[str, nn.Module], calib_data: Iterable, *, bits: int,
                group_size: int | None, symmetric: bool,
                grid: int = 20) -> tuple[dict[str, tuple], list[tuple[str, np.ndarray]]]:
    """Searches the AWQ scales s of every group of awq_groups on calib_data (one pass over the float
    model, collecting each group's mean |x| and second moment). Returns {layer: (float32 weight
    [N, K], bias)} for every layer of `layers`, the groups' columns multiplied by s and, where a
    group's producer is one of `layers`, its output rows and bias divided by s; and [(producer, s)]
    for the other producers (norms, linear layers left in float), whose outputs are to be divided by
    s (model.divide_output) once the layers are quantized: `model` itself is not changed. Layers in
    no group, or in one whose input calibration never reached (with a warning), are returned
    unscaled (plain RTN)."""
    groups = awq_groups(model, layers)
    weights = {}
    for name, module in layers.items():
        weight, bias = linear_weight(module)
        weights[name] = (weight.float().clone(), None if bias is None else bias.detach().float().clone())
    if not groups:
        return weights, []
    readers = {names[0]: layers[names[0]] for _, names in groups}  # one layer per input suffices
    statistics = calibrate(model, readers, _progress_bar(calib_data, "AWQ calibration"), ActivationStatistics)
    reached = [(producer, names) for producer, names in groups
               if names[0] in statistics and statistics[names[0]].count]
    _warn_uncalibrated([name for group in groups if group not in reached for name in group[1]],
                       "AWQ leaves them unscaled (plain RTN)", stacklevel=4)
    found = []
    for producer, names in _progress_bar(reached, "AWQ scale search"):
        stats = statistics[names[0]]
        result = awq_scales([weights[name][0] for name in names], stats.mean_abs(), stats.hessian(), bits=bits,
                            group_size=group_size, symmetric=symmetric, grid=grid)
        found.append((producer, names, result.scales))
    # Every search saw the original weights (a layer can be both a producer and in a group: up_proj).
    outside = []
    for producer, names, s in found:
        s_t = torch.from_numpy(s)
        for name in names:
            weights[name][0].mul_(s_t)
        if producer not in weights:
            outside.append((producer, s))
            continue
        divide_rows(*weights[producer], s_t)  # a linear layer being quantized: its float copy
    return weights, outside
