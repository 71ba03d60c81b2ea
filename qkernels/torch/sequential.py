"""Block-by-block calibration, as GPTQ (Frantar et al. 2022, arXiv:2210.17323, §5) runs it: each
transformer block's linear layers are calibrated on what the blocks before it output once they are
quantized, so every layer compensates the errors of the layers it follows, not only its own.

The model's blocks are the elements of the nn.ModuleList that holds the most of the layers to
quantize (`model.layers` of a LLaMA, `transformer.h` of GPT-2, `encoder.layer` of BERT). The
inputs of the first block are captured from one run of the model over the calibration data (the
run stops there); then each block runs on its own, twice: in float with its layers' inputs fed to
the collectors, and, once its layers are quantized, to produce the next block's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError

# Keyword arguments through which a block would read or extend a key-value cache: each block runs
# more than once on the same inputs here, so they are dropped (use_cache is set to False).
_CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")

Inputs = tuple[tuple, dict]  # one call's positional and keyword arguments


def transformer_blocks(model: nn.Module, layer_names: Iterable[str]) -> tuple[str, nn.ModuleList] | None:
    """(name, ModuleList) of the model's repeated blocks: the ModuleList holding the most of the named
    layers (one in each of several elements); None if no ModuleList holds any."""
    layer_names = list(layer_names)
    best, best_count = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not name:
            continue
        count = sum(n.startswith(name + ".") for n in layer_names)
        if count > best_count:
            best, best_count = (name, module), count
    return best


def block_inputs(model: nn.Module, first_block: nn.Module, calib_data: Iterable,
                 run: Callable[[nn.Module, Any], Any]) -> list[Inputs]:
    """The arguments `first_block` is called with when `run(model, batch)` runs each batch of
    calib_data; each run stops there. Cache arguments are dropped."""
    captured = []

    class Reached(Exception):
        pass

    def catch(_module, args, kwargs):
        kwargs = dict(kwargs)
        for key in _CACHE_ARGUMENTS:
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((args, kwargs))
        raise Reached

    hook = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in calib_data:
                try:
                    run(model, batch)
                except Reached:
                    continue
                raise InvalidArgumentError("the model ran a calibration batch without calling its first block")
    finally:
        hook.remove()
    if not captured:
        raise InvalidArgumentError("calib_data is empty")
    return captured


def hidden_states(inputs: Inputs) -> torch.Tensor:
    """The block's input hidden states: the first positional argument, else `hidden_states=`."""
    args, kwargs = inputs
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise InvalidArgumentError(f"a block was called without positional arguments or hidden_states= ({list(kwargs)})")


def run_block(block: nn.Module, inputs: list[Inputs]) -> list[Inputs]:
    """Runs `block` on each captured call; returns the calls of the next block: the same arguments
    with the hidden states replaced by this block's output (its first element, if a tuple)."""
    following = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = block(*args, **kwargs)
            out = out if isinstance(out, torch.Tensor) else out[0]
            following.append(((out, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": out}))
    return following
