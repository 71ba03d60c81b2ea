"""quantize_model: every linear layer of a torch model replaced by a QuantLinear; saving and loading."""

from __future__ import annotations

import collections
import functools
import inspect
import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _checks
from ..errors import InvalidArgumentError, NonFiniteError
from ..quant import (
    AbsMaxObserver, AbsMaxSampleObserver, HessianAccumulator, fold_into_norm, gptq, rtn, search_smoothing,
    smooth_weight, smoothquant_scales, zeroquant,
)
from ..quant._common import check_alpha, check_threshold
from ..weights import QuantizedWeight
from .embedding import QuantEmbedding
from .linear import QuantLinear
from .sequential import block_inputs, run_block, transformer_blocks

METHODS = ("rtn", "gptq", "awq", "w8a8", "smoothquant", "llm_int8", "zeroquant")
_NEEDS_CALIBRATION = {"gptq", "awq", "smoothquant"}


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W [N, K], bias) of a float linear layer: nn.Linear, or Hugging Face's Conv1D (GPT-2), which
    stores W transposed (W is then a transposed view); None for anything else (a QuantLinear too).
    These are the layers quantize_model replaces and linear_layers lists. W is detached."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.detach().T, module.bias
    return None


def linear_layers(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The linear layers of `model` by qualified name, in module order, except names in `skip`
    (a layer is skipped when its name equals, or ends with "." plus, an entry)."""
    skip = tuple(skip)
    return {
        name: m for name, m in model.named_modules()
        if linear_weight(m) is not None and not any(name == s or name.endswith("." + s) for s in skip)
    }


def run_model(model: nn.Module, batch: Any) -> Any:
    """Runs one batch of inputs: a mapping (a dict, a tokenizer's BatchEncoding) as keyword
    arguments, model(**batch), or as one positional argument, model(batch), where the model's
    forward takes a dict first (a SentenceTransformer); a tuple or list as positional arguments,
    model(*batch); a tensor as model(batch). Anything else, or arguments the forward cannot take,
    raises InvalidArgumentError saying what is expected."""
    if isinstance(batch, Mapping) or hasattr(batch, "keys"):  # BatchEncoding is a UserDict
        batch = dict(batch)
        args, kwargs = ((batch,), {}) if _takes_a_dict(model, batch) else ((), batch)
    elif isinstance(batch, (tuple, list)):
        args, kwargs = tuple(batch), {}
    elif isinstance(batch, torch.Tensor):
        args, kwargs = (batch,), {}
    else:
        raise InvalidArgumentError(f"a calibration batch is a {type(batch).__name__}; {_BATCH_FORMS}")
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as error:
        raise InvalidArgumentError(f"{type(model).__name__}.forward cannot take a calibration batch of "
                                   f"{_described(batch)}: {error}. {_BATCH_FORMS}") from None
    return model(*args, **kwargs)


_BATCH_FORMS = ("each batch must be a dict of keyword arguments (as a tokenizer returns them), a tuple or "
                "list of positional arguments, or one tensor")


def _takes_a_dict(model: nn.Module, batch: dict) -> bool:
    """Whether forward's first parameter is a required one that the mapping does not name: it then
    takes the whole mapping (SentenceTransformer.forward(input: dict))."""
    parameters = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return bool(parameters) and parameters[0].default is inspect.Parameter.empty and parameters[0].name not in batch


def _described(batch: Any) -> str:
    if isinstance(batch, dict):
        return f"keys {sorted(batch)}"
    if isinstance(batch, tuple):
        return f"{len(batch)} positional argument(s)"
    return f"one {type(batch).__name__}"


def calibration_batches(calib_data: Any) -> list:
    """calib_data as a list of batches: one batch (a mapping or a tensor) or an iterable of batches."""
    if isinstance(calib_data, (Mapping, torch.Tensor)) or hasattr(calib_data, "keys"):
        return [calib_data]
    if isinstance(calib_data, (str, bytes)) or not isinstance(calib_data, Iterable):
        raise InvalidArgumentError(f"calib_data is a {type(calib_data).__name__}: give one batch or an iterable of "
                                   f"batches; {_BATCH_FORMS}")
    return list(calib_data)


def calibrate(model: nn.Module, layers: dict[str, nn.Module], calib_data: Iterable,
              make: Callable[[int], Any]) -> dict[str, Any]:
    """Runs `model` over calib_data (run_model per batch) with every layer's inputs fed to a
    collector, make(K) per layer (anything with .update(x[..., K])). Layers that read the same
    input tensor (q, k and v of one attention) share one collector, fed once. Returns the collectors
    by layer name."""
    return collect_inputs(layers, make, (functools.partial(run_model, model, b) for b in calib_data))


class _AllInputsRead(Exception):
    """Every layer has read its input in this pass: the rest of it (a block's last layer, a
    model's head and its logits) computes nothing a collector needs. Raised from the second pass
    on, and only if the first called every layer once (a layer called again later in a pass, as
    in models that share layers across depth, would miss inputs)."""


def collect_inputs(layers: dict[str, nn.Module], make: Callable[[int], Any],
                   passes: Iterable[Callable[[], Any]]) -> dict[str, Any]:
    """calibrate() for any forward passes: each element of `passes` runs one (without gradients),
    until every layer has read its input."""
    collectors, reader = {}, {}  # reader[name]: the layer whose input `name` reads too, or None
    last = {}  # the last input fed to a collector in this pass: {"name", "tensor"}
    calls = collections.Counter()  # of each layer, in this pass
    stop_early = False  # whether to raise _AllInputsRead

    def feed(name: str, K: int):
        def update(_module, args):
            calls[name] += 1
            x = args[0]
            shared = last["name"] if last.get("tensor") is x else None
            if name not in collectors:
                reader[name] = shared
                collectors[name] = collectors[shared] if shared else make(K)
            elif reader[name] != shared:
                raise InvalidArgumentError(f"layer {name!r} read the input of {reader[name]!r} in one calibration "
                                           f"batch and of {shared!r} in another")
            if shared is None:
                try:
                    collectors[name].update(x.detach())
                except NonFiniteError as e:  # say where: a layer's input is not the caller's data
                    e.args = (f"the calibration input of layer {name!r}: {e}",)
                    raise
                last.update(name=name, tensor=x)
            if stop_early and len(calls) == len(layers):
                raise _AllInputsRead
        return update

    hooks = [module.register_forward_pre_hook(feed(name, linear_weight(module)[0].shape[1]))
             for name, module in layers.items()]
    count = 0
    try:
        with torch.no_grad():
            for run in passes:
                last.clear()
                calls.clear()
                try:
                    run()
                except _AllInputsRead:
                    pass
                if count == 0:
                    stop_early = len(calls) == len(layers) and all(n == 1 for n in calls.values())
                count += 1
    finally:
        last.clear()
        for hook in hooks:
            hook.remove()
    if count == 0:
        raise InvalidArgumentError("calib_data is empty")
    return collectors


def _quantized_layer(method: str, weight: torch.Tensor, bias, collector, *, bits: int, group_size: int | None,
                     symmetric: bool, activation: str | None, per_tensor: bool, alpha: float | tuple, threshold: float,
                     folded_s: np.ndarray | None = None) -> QuantLinear:
    """The QuantLinear of one layer; collector: its calibration inputs' statistics, None where the
    method needs none or calibration never reached the layer."""
    w = weight.float()
    if activation == "tensor" and collector is None:  # no inputs seen, no static range: one per token
        activation = "token"
    if method in ("rtn", "awq"):  # awq: W·diag(s) (qkernels.torch.awq)
        return QuantLinear(rtn(w, bits=bits, group_size=group_size, symmetric=symmetric), bias)
    if method == "w8a8":  # naive: one range for the weights, one for the activations (or per token)
        qw = rtn(w, bits=bits, per_tensor=per_tensor, symmetric=symmetric)
        clip = collector.tensor_absmax() if activation == "tensor" else None
        return QuantLinear(qw, bias, activation=activation, act_clip=clip)
    if method == "smoothquant":
        s = folded_s if folded_s is not None else _smoothing(collector, [w], alpha, activation, per_tensor,
                                                              symmetric, bits)
        qw = rtn(smooth_weight(w, s), bits=bits, per_tensor=per_tensor, symmetric=symmetric)
        clip = float((collector.channel_absmax() / s).max()) if activation == "tensor" else None
        # folded: the norm divides; s = 1 (the search chose no smoothing): nothing to divide
        input_scale = None if folded_s is not None or (s == 1).all() else torch.from_numpy(1 / s)
        return QuantLinear(qw, bias, activation=activation, input_scale=input_scale, act_clip=clip)
    if method == "llm_int8":
        qw = rtn(w, bits=bits, symmetric=symmetric)
        return QuantLinear(qw, bias, activation="token", outlier_threshold=threshold)
    if method == "zeroquant":
        return QuantLinear(zeroquant(w, bits=bits, group_size=group_size, symmetric=symmetric), bias,
                           activation="token")
    raise InvalidArgumentError(f"method={method!r} is not one of {METHODS}")


def quantize_model(model: nn.Module, method: str = "rtn", bits: int | None = None, group_size: int | None = None,
                   calib_data: Iterable | None = None, *, symmetric: bool = True, activation: str | None = None,
                   per_tensor: bool | None = None, alpha: float | Sequence[float] | None = None,
                   threshold: float | None = None,
                   skip: Iterable[str] = (),
                   fold_norms: dict[str, list[str]] | None = None,
                   gptq_options: dict | None = None, awq_options: dict | None = None,
                   progress: Callable[[int, int], None] | bool | None = None) -> nn.Module:
    """Replaces every linear layer of `model` (nn.Linear; Hugging Face Conv1D) with a QuantLinear,
    in place, and returns the model.

    method (defaults in brackets):
      "rtn"          round to nearest, weight-only (A16) [bits 4; group_size None: per channel]
      "gptq"         GPTQ, weight-only (A16); needs calib_data [bits 4]. As published: block by
                     block, each block's layers calibrated on the outputs of the blocks before it,
                     already quantized (qkernels.torch.sequential); act_order with static groups
                     (gptq_options={"act_order": False} for the plain column order); the layers that
                     read one input (q, k, v) share its Hessian and are quantized together.
      "awq"          AWQ, weight-only (A16); needs calib_data [bits 4]: each group of layers that
                     reads one input gets per-channel scales s = mean|x|^α, α searched on calib_data
                     (awq_options: {"grid": 20}), multiplied into their weights before RTN and
                     divided out of the op before (pre_norm_groups' norms; LLaMA-family up_proj for
                     down_proj, v_proj for o_proj); layers in no such group get plain RTN
      "w8a8"         naive W8A8: one weight range per tensor (per_tensor=False: per output channel);
                     activation "tensor" (static, from calib_data) or "token" (dynamic per row)
                     [bits 8, activation "tensor"]
      "smoothquant"  SmoothQuant (alpha): weights W·diag(s) quantized as for "w8a8", activations
                     as for "w8a8"; needs calib_data [bits 8]. The inputs are divided by s at run
                     time, except for the layers named in fold_norms: {norm name: [layers that
                     alone read its output]} (pre-LN blocks: pre_norm_groups(model)), which share
                     one s, divided out of that norm's weight (and bias). alpha: the migration
                     strength [0.5], or a sequence of them: a search per norm group (per layer
                     where unfolded) for the α, or no smoothing, whose quantized outputs are
                     closest to the float ones on calib_data (qkernels.quant.search_smoothing).
      "llm_int8"     LLM.int8(): 8-bit weights per channel, int8 activations per row, the input
                     features holding an |x| ≥ threshold in float [bits 8]
      "zeroquant"    ZeroQuant: group-wise weights, dynamic per-row int8 activations [bits 8, group_size 64]
    group_size need not divide a layer's input features K: the last group of each row is then
    shorter (format v2; G > K is one group per row). calib_data: one batch of model inputs or an
    iterable of them, each a dict of keyword arguments (a tokenizer's output; passed whole where the
    model's forward takes a dict, as a SentenceTransformer's does), a tuple or list of positional
    ones, or one tensor (run_model), run without gradients. skip: layer names left in float (a
    name, or a suffix after a dot, e.g. "lm_head"). progress: called as progress(done, total) per
    layer, or True for a tqdm progress bar.

    Options are checked before calibration; an error leaves the model as it was. A layer no
    calibration input reaches (an MoE expert no token is routed to) is quantized without its
    statistics, with a warning naming it: GPTQ with an identity Hessian (RTN), SmoothQuant with
    s = 1, static activations per token instead, AWQ unscaled (docs/quantization.md §10).
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method={method!r} is not one of {METHODS}")
    if group_size is not None and method in ("w8a8", "smoothquant", "llm_int8"):
        raise InvalidArgumentError(f"method={method!r} quantizes weights per tensor or channel: no group_size")
    # An option the method does not use is an error, not silently ignored.
    for option, value, methods in (("activation", activation, ("w8a8", "smoothquant")),
                                   ("per_tensor", per_tensor, ("w8a8", "smoothquant")),
                                   ("alpha", alpha, ("smoothquant",)), ("threshold", threshold, ("llm_int8",)),
                                   ("gptq_options", gptq_options, ("gptq",)),
                                   ("awq_options", awq_options, ("awq",)),
                                   ("fold_norms", fold_norms or None, ("smoothquant",))):
        if value is not None and method not in methods:
            raise InvalidArgumentError(f"{option}= is for {' and '.join(map(repr, methods))}, not {method!r}")
    from .awq import awq_weights  # imports this module

    # Every option is checked before calibration, which can take long, and before the model changes.
    for option, options, function in (("gptq_options", gptq_options, gptq),
                                      ("awq_options", awq_options, awq_weights)):
        takes = [name for name, p in inspect.signature(function).parameters.items()
                 if p.kind == p.KEYWORD_ONLY and name not in ("bits", "group_size", "symmetric")]  # ours
        unknown = sorted(set(options or {}) - set(takes))
        if unknown:
            raise InvalidArgumentError(f"{option} names {unknown}: it takes {takes}")
    per_tensor = True if per_tensor is None else per_tensor
    alpha = 0.5 if alpha is None else (tuple(alpha) if isinstance(alpha, Sequence) else alpha)
    alphas = alpha if isinstance(alpha, tuple) else (alpha,)
    if not alphas:
        raise InvalidArgumentError("alpha= is an empty sequence: give one α, or the α values to search")
    for value in alphas:
        check_alpha(value)
    threshold = 6.0 if threshold is None else threshold
    check_threshold(threshold)
    bits = _checks.bits(bits if bits is not None else (4 if method in ("rtn", "gptq", "awq") else 8))
    if method == "zeroquant" and group_size is None:
        group_size = 64
    if group_size is not None:
        _checks.group_size(group_size)
    if method in ("w8a8", "smoothquant"):
        activation = activation or "tensor"
        if activation not in ("tensor", "token"):
            raise InvalidArgumentError(f"activation={activation!r} must be 'tensor' or 'token' for {method}")
    layers = linear_layers(model, skip)
    modules = dict(model.named_modules())
    for norm_name, names in (fold_norms or {}).items():
        norm = modules.get(norm_name)
        if not isinstance(getattr(norm, "weight", None), torch.Tensor):
            raise InvalidArgumentError(f"fold_norms[{norm_name!r}]: " + (
                "not a module of the model" if norm is None else f"a {type(norm).__name__} without a weight to fold s into"))
        missing = [n for n in names if n not in layers]
        if missing:
            raise InvalidArgumentError(f"fold_norms[{norm_name!r}] names {missing}: not linear layers being quantized")
    needs_data = method in _NEEDS_CALIBRATION or (method == "w8a8" and activation == "tensor")
    if needs_data:
        if calib_data is None:
            raise InvalidArgumentError(f"method={method!r} needs calib_data")
        calib_data = calibration_batches(calib_data)
        if not calib_data:
            raise InvalidArgumentError("calib_data is empty")
    progress = _progress_bar(progress, len(layers), f"{method} layers")
    if method == "gptq":
        options = dict(bits=bits, group_size=group_size, symmetric=symmetric,
                       **{"act_order": True, **(gptq_options or {})})
        try:
            unreached = _gptq_block_by_block(model, layers, calib_data, options, progress)
        except BaseException:
            for name, module in layers.items():  # it replaces layers block by block: the float ones go back
                _set_module(model, name, module)
            raise
        _warn_uncalibrated(unreached, "GPTQ quantized them with an identity Hessian, as RTN does")
        return model
    collectors, scaled, outside = {}, {}, []
    if method == "awq":
        scaled, outside = awq_weights(model, layers, calib_data, bits=bits, group_size=group_size,
                                      symmetric=symmetric, **(awq_options or {}))
    elif needs_data:
        # the α search scores the layers' outputs on a sample of their calibration inputs
        search = method == "smoothquant" and isinstance(alpha, tuple)
        collectors = calibrate(model, layers, calib_data,
                               lambda _K: AbsMaxSampleObserver() if search else AbsMaxObserver())
        collectors = {name: c for name, c in collectors.items() if c.count}  # not those called on no rows
        fallbacks = []
        if method == "smoothquant":
            fallbacks.append("their inputs are not smoothed (s = 1, or the s of their fold_norms group)")
        if activation == "tensor":
            fallbacks.append("their activations are quantized per token (no inputs: no static range)")
        _warn_uncalibrated([name for name in layers if name not in collectors], "; ".join(fallbacks))
    norm_s = _norm_smoothing(layers, collectors, fold_norms or {}, alpha, activation, per_tensor, symmetric, bits)
    folded = {name: s for norm_name, s in norm_s.items() for name in fold_norms[norm_name]}
    replacements = {}
    for index, (name, module) in enumerate(layers.items()):
        weight, bias = scaled[name] if name in scaled else linear_weight(module)
        replacements[name] = _quantized_layer(
            method, weight, bias, collectors.get(name), bits=bits, group_size=group_size, symmetric=symmetric,
            activation=activation, per_tensor=per_tensor, alpha=alpha, threshold=threshold,
            folded_s=folded.get(name),
        )
        if progress:
            progress(index + 1, len(layers))
    # The model changes only once every layer is quantized and every division computed: a failure
    # before leaves it as it was.
    divisions = [output_division(model, producer, s) for producer, s in outside + list(norm_s.items())]
    for write in divisions:
        write()
    for name, layer in replacements.items():
        _set_module(model, name, layer)
    return model


def _smoothing(collector, weights: list, alpha: float | tuple, activation: str, per_tensor: bool, symmetric: bool,
               bits: int) -> np.ndarray:
    """SmoothQuant's s for layers that read one input: from alpha, or searched over alpha's values;
    s = 1 (no smoothing) for an input calibration never reached (collector None)."""
    if collector is None:
        return np.ones(weights[0].shape[1], np.float32)
    if not isinstance(alpha, tuple):
        return smoothquant_scales(collector.channel_absmax(), weights, alpha)
    s, _alpha = search_smoothing(collector.rows(), collector.channel_absmax(), weights, alpha,
                                 activation=activation, per_tensor=per_tensor, symmetric=symmetric, bits=bits)
    return s


def _warn_uncalibrated(names: list[str], fallback: str, stacklevel: int = 3) -> None:
    """Warns that calibration gave the layers `names` no input (a mixture-of-experts expert no
    calibration token was routed to, a branch never taken), and what they get instead."""
    if names:
        warnings.warn(f"no calibration input reached {len(names)} layer(s), {_listed(names)}: {fallback}",
                      stacklevel=stacklevel)


def _listed(items: list[str]) -> str:
    """items joined by commas: the first 8 of a longer list, and how many more."""
    return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")


def _progress_bar(progress: Callable[[int, int], None] | bool | None, total: int, description: str):
    """The progress(done, total) to call per layer: the caller's, or for progress=True a tqdm bar."""
    if progress is not True:
        return progress or None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise InvalidArgumentError("progress=True draws a tqdm bar: pip install tqdm") from None
    bar = tqdm(total=total, desc=description, unit="layer")

    def report(done: int, _total: int) -> None:
        bar.update(done - bar.n)
        if done == bar.total:
            bar.close()

    return report


def _gptq_block_by_block(model: nn.Module, layers: dict[str, nn.Module], calib_data: list, options: dict,
                         progress: Callable[[int, int], None] | None) -> list[str]:
    """GPTQ as published: the layers of each transformer block (sequential.transformer_blocks)
    quantized on the outputs of the blocks before it, already quantized; the layers outside the
    blocks (a head that is not skipped) last, from a run of the whole quantized model. A model
    without such blocks has all its layers' Hessians collected in one run of the float model.
    Returns the layers calibration gave no input: they get an identity Hessian (RTN's rounding)."""
    done, unreached = 0, []

    def quantize(names: list[str], collectors: dict[str, HessianAccumulator]) -> None:
        nonlocal done
        reached = [n for n in names if n in collectors and collectors[n].count]
        unreached.extend(n for n in names if n not in reached)
        # Layers that read one input (q, k, v; gate, up) share its Hessian. GPTQ treats each weight row
        # on its own given the Hessian, so they are quantized as one stacked matrix: one pass, same result.
        jobs = [([n for n in reached if collectors[n] is collector], collector.hessian)
                for collector in {id(collectors[n]): collectors[n] for n in reached}.values()]
        # No input: with an identity Hessian no column's error moves to another, and GPTQ rounds as RTN does.
        jobs += [([n], functools.partial(np.eye, linear_weight(layers[n])[0].shape[1])) for n in names
                 if n not in reached]
        for group, hessian in jobs:
            weights = [linear_weight(layers[n]) for n in group]
            stacked = gptq(torch.cat([w.float() for w, _ in weights]), hessian(), **options)
            start = 0
            for name, (weight, bias) in zip(group, weights):
                stop = start + weight.shape[0]
                _set_module(model, name, QuantLinear(_rows(stacked, start, stop), bias))
                start = stop
                done += 1
                if progress:
                    progress(done, len(layers))

    found = transformer_blocks(model, layers)
    if found is None:
        quantize(list(layers), calibrate(model, layers, calib_data, HessianAccumulator))
        return unreached
    blocks_name, blocks = found
    inputs = block_inputs(model, blocks[0], calib_data, run_model)
    for index, block in enumerate(blocks):
        inside = {n: m for n, m in layers.items() if n.startswith(f"{blocks_name}.{index}.")}
        if inside:
            quantize(list(inside), collect_inputs(
                inside, HessianAccumulator, (functools.partial(block, *args, **kwargs) for args, kwargs in inputs)))
        if index + 1 < len(blocks):
            inputs = run_block(block, inputs)  # through the quantized layers: the next block's inputs
    outside = {n: m for n, m in layers.items() if not n.startswith(blocks_name + ".")}
    if outside:
        quantize(list(outside), calibrate(model, outside, calib_data, HessianAccumulator))
    return unreached


def _rows(qw: QuantizedWeight, start: int, stop: int) -> QuantizedWeight:
    """Rows [start, stop) of quantized weights (each row holds its own scales and zero points)."""
    zero_points = None if qw.zero_points is None else qw.zero_points[start:stop]
    return QuantizedWeight(qw.data[start:stop], qw.scales[start:stop], zero_points, qw.bits, qw.group_size,
                           (stop - start, qw.shape[1]), qw.dtype, qw.kind)


def _norm_smoothing(layers: dict, collectors: dict, fold_norms: dict[str, list[str]], alpha: float | tuple,
                    activation: str, per_tensor: bool, symmetric: bool, bits: int) -> dict[str, np.ndarray]:
    """SmoothQuant's s of each norm of fold_norms, to divide it by: shared by the layers reading it
    (from their weights together; their inputs are the same). Changes nothing."""
    smoothing = {}
    for norm_name, names in fold_norms.items():
        # the layers read the same input: any one's collector holds it (none: calibration reached none)
        collector = next((collectors[n] for n in names if n in collectors), None)
        smoothing[norm_name] = _smoothing(collector, [linear_weight(layers[n])[0].float() for n in names], alpha,
                                          activation, per_tensor, symmetric, bits)
    return smoothing


def divide_output(model: nn.Module, name: str, s: np.ndarray) -> None:
    """Divides the output of the module `name` by s in place: a norm's weight and bias, or a linear
    layer's output rows and bias."""
    output_division(model, name, s)()


def output_division(model: nn.Module, name: str, s: np.ndarray) -> Callable[[], None]:
    """divide_output's new values, computed now (a failure here changes nothing), written into the
    module by the function returned."""
    module = model.get_submodule(name)
    found = linear_weight(module)
    if found is not None:
        params, new = found, _rows_divided(*found, torch.from_numpy(s))
    else:  # a norm: qkernels.quant.fold_into_norm (RMSNorms have no bias)
        bias = getattr(module, "bias", None)
        gamma, beta = fold_into_norm(module.weight.detach(), None if bias is None else bias.detach(), s)
        params, new = (module.weight, bias), (torch.from_numpy(gamma), None if beta is None else torch.from_numpy(beta))
    return functools.partial(_assign, params, new)


def divide_rows(weight: torch.Tensor, bias: torch.Tensor | None, s: torch.Tensor) -> None:
    """Divides a linear layer's output rows (weight [N, K]) and bias [N] by s [N] in place."""
    _assign((weight, bias), _rows_divided(weight, bias, s))


def _rows_divided(weight: torch.Tensor, bias: torch.Tensor | None, s: torch.Tensor) -> tuple:
    return weight / s.to(weight.dtype)[:, None], None if bias is None else bias / s.to(bias.dtype)


def _assign(params: tuple, values: tuple) -> None:
    """Each tensor of params (None: skipped) takes the value beside it, in place."""
    with torch.no_grad():
        for param, value in zip(params, values):
            if param is not None and value is not None:
                param.copy_(value)


# LLaMA-family decoder blocks by class name (AWQ's linear-to-linear folds look for them).
LLAMA_BLOCKS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
# Pre-norm blocks, by class name: (classes, (norm, the linear layers that alone read its output),
# relative to the block). Norms here compute x̂ · weight (+ bias), so that dividing weight and bias
# by s divides their output by s.
PRE_NORM_BLOCKS = (
    # Hugging Face GPT-2: ln_1 → the fused q, k, v projection; ln_2 → the MLP's first layer.
    (("GPT2Block",), (("ln_1", ["attn.c_attn"]), ("ln_2", ["mlp.c_fc"]))),
    # LLaMA, Mistral, Qwen2/3: RMSNorms before attention and before the gated MLP.
    (LLAMA_BLOCKS, (("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
                    ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]))),
)


def pre_norm_groups(model: nn.Module) -> dict[str, list[str]]:
    """{norm: [linear layers]} where the norm's output feeds those layers only, for the blocks of
    PRE_NORM_BLOCKS (GPT-2; LLaMA, Mistral, Qwen2/3), recognised by their class names, not by their
    modules' names alone: blocks with the same names can compute something else (Gemma's RMSNorm
    scales by 1 + weight; Gemma 2's post_attention_layernorm normalises the attention's output;
    Phi's and Cohere's MLP also read input_layernorm's output), and folding s into them would
    change the model. A group is listed when the block has the norm, with a weight, and every one of
    its layers. Post-LN models such as BERT have none: each LayerNorm's output is also the residual
    stream, which folding would change."""
    groups = {}
    for block, module in model.named_modules():
        for classes, pattern in PRE_NORM_BLOCKS:
            if type(module).__name__ not in classes:
                continue
            children = dict(module.named_modules())
            for norm, layers in pattern:
                if getattr(children.get(norm), "weight", None) is not None and all(r in children for r in layers):
                    groups[f"{block}.{norm}"] = [f"{block}.{layer}" for layer in layers]
    return groups


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


# ---------------------------------------------------------------- saving and loading

_METADATA_KEY = "qkernels.layers"
_EXTRA = "._extra_state"


def save_quantized(model: nn.Module, path: str | Path) -> None:
    """Writes the state dict of a quantized model: a .safetensors file (the formats of its QuantLinear
    and QuantEmbedding modules in its metadata; needs the safetensors package) or, for any other
    suffix, torch.save."""
    path = Path(path)
    state = model.state_dict()
    if path.suffix != ".safetensors":
        torch.save(state, path)
        return
    from safetensors.torch import save_file

    layers = {key[: -len(_EXTRA)]: value for key, value in state.items() if key.endswith(_EXTRA)}
    tensors = {key: value.contiguous() for key, value in state.items() if not key.endswith(_EXTRA)}
    save_file(_untied(tensors), str(path), metadata={_METADATA_KEY: json.dumps(layers)})


def _untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): each gets its own copy."""
    seen, out = set(), {}
    for key, t in tensors.items():
        pointer = t.data_ptr()
        out[key] = t.clone() if pointer in seen else t
        seen.add(pointer)
    return out


def load_quantized(model: nn.Module, source: str | Path | dict) -> nn.Module:
    """Loads a quantized state dict (a path written by save_quantized, or the dict itself) into
    `model`, a model of the same architecture in float or already quantized: the layers the state
    names as quantized become QuantLinear of the saved formats, its quantized embeddings (a GGUF
    model's) QuantEmbedding, and every tensor is loaded as saved, nothing re-quantized. An embedding
    saved with the tensors of a quantized layer (a tied lm_head) shares that layer's buffers again.
    Returns the model.

    A state of another architecture (layers missing or extra, other shapes, a quantized layer
    where `model` has no linear layer of that size, a quantized embedding where it has no embedding
    of that size) raises InvalidArgumentError naming what differs, before anything in `model` is changed.
    """
    if isinstance(source, dict):
        state = source
    elif Path(source).suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as f:
            layers = json.loads(f.metadata()[_METADATA_KEY])
            state = {key: f.get_tensor(key) for key in f.keys()}
        state |= {name + _EXTRA: config for name, config in layers.items()}
    else:
        state = torch.load(source, weights_only=True)
    replacements = _replacements(model, state)
    _check_fits(model, state, replacements)
    for name, layer in replacements.items():
        _set_module(model, name, layer)
    model.load_state_dict(state)
    return model


def _replacements(model: nn.Module, state: dict) -> dict[str, nn.Module]:
    """The QuantLinear or QuantEmbedding, with zeroed buffers, for each module the state saves as
    quantized (an embedding on the buffers of the layer it was tied to: _tied); checks that `model`
    has a module of that kind and size (float or quantized) there."""
    modules = dict(model.named_modules())
    replacements = {}
    for key, config in state.items():
        if not (key.endswith(_EXTRA) and isinstance(config, dict) and "bits" in config):
            continue
        name = key[: -len(_EXTRA)]
        if not name:  # the model is one quantized module: its set_extra_state checks the format
            continue
        if name not in modules:
            raise InvalidArgumentError(
                f"the state holds a quantized layer {name!r}, which the model does not have: a model of "
                "another architecture"
            )
        embedding = "num_embeddings" in config  # QuantEmbedding.get_extra_state()
        try:
            module = QuantEmbedding.empty(config) if embedding else QuantLinear.empty(config)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(f"the state's quantized {'embedding' if embedding else 'layer'} {name!r} has "
                                       f"a malformed format {config}: {error}") from None
        (_check_embedding_target if embedding else _check_layer_target)(name, module, modules[name])
        replacements[name] = module
    return {name: _tied(name, module, state, replacements) if isinstance(module, QuantEmbedding) else module
            for name, module in replacements.items()}


def _check_layer_target(name: str, layer: QuantLinear, target: nn.Module) -> None:
    """Raises unless `target` is a linear layer (or a QuantLinear) of the layer's size and bias."""
    if isinstance(target, QuantLinear):
        size, bias = (target.out_features, target.in_features), target.bias
    else:
        weight_bias = linear_weight(target)
        if weight_bias is None:
            raise InvalidArgumentError(
                f"the state holds a quantized linear layer {name!r}; the model has a {type(target).__name__} there"
            )
        size, bias = tuple(weight_bias[0].shape), weight_bias[1]
    if size != (layer.out_features, layer.in_features):
        raise InvalidArgumentError(
            f"the state's quantized layer {name!r} is [out, in] = {[layer.out_features, layer.in_features]}; "
            f"the model's is {list(size)}"
        )
    if (bias is None) != (layer.bias is None):
        has = ("has no bias", "has a bias")
        raise InvalidArgumentError(
            f"the state's quantized layer {name!r} {has[layer.bias is not None]}; the model's "
            f"{has[bias is not None]}"
        )


def _check_embedding_target(name: str, embedding: QuantEmbedding, target: nn.Module) -> None:
    """Raises unless `target` is an embedding (nn.Embedding or QuantEmbedding) of the embedding's size."""
    if not isinstance(target, (nn.Embedding, QuantEmbedding)):
        raise InvalidArgumentError(
            f"the state holds a quantized embedding {name!r}; the model has a {type(target).__name__} there"
        )
    size = [embedding.num_embeddings, embedding.embedding_dim]
    if [target.num_embeddings, target.embedding_dim] != size:
        raise InvalidArgumentError(
            f"the state's quantized embedding {name!r} is [num_embeddings, embedding_dim] = {size}; the model's "
            f"is {[target.num_embeddings, target.embedding_dim]}"
        )


def _tied(name: str, embedding: QuantEmbedding, state: dict, replacements: dict[str, nn.Module]) -> QuantEmbedding:
    """The embedding on the buffers of the quantized layer whose saved tensors are its own (a tied
    output layer, a GGUF model's lm_head), so that the model holds one copy, as the saved one did;
    else `embedding`. Equal tensors, not shared ones: a .safetensors file holds each copy (_untied)."""
    keys = [key for key, _ in embedding.named_buffers()]
    own = [state.get(f"{name}.{key}") for key in keys]
    for layer_name, layer in replacements.items():
        if not isinstance(layer, QuantLinear):
            continue
        tied = QuantEmbedding(layer, embedding.dtype)
        theirs = [state.get(f"{layer_name}.{key}") for key in keys]
        if tied.get_extra_state() == embedding.get_extra_state() and all(
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
            for a, b in zip(own, theirs)
        ):
            return tied
    return embedding


def _check_fits(model: nn.Module, state: dict, replacements: dict[str, nn.Module]) -> None:
    """Raises InvalidArgumentError unless `state` has exactly the keys and tensor shapes that `model`
    will have once the replacements are made (what a strict load_state_dict needs)."""
    expected = {
        key: value for key, value in model.state_dict().items()
        if not any(key.startswith(name + ".") for name in replacements)
    }
    for name, layer in replacements.items():
        expected |= {f"{name}.{key}": value for key, value in layer.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {list(state[key].shape)} (the model's: {list(value.shape)})" for key, value in expected.items()
        if key in state and isinstance(value, torch.Tensor) and isinstance(state[key], torch.Tensor)
        and state[key].shape != value.shape
    ]
    problems = [
        f"{what}: {_listed(items)}"
        for what, items in (("missing from the state", missing), ("not in the model", unexpected),
                            ("other shapes", shapes))
        if items
    ]
    if problems:
        raise InvalidArgumentError(
            "the state does not fit the model (another architecture?); nothing was loaded. " + "; ".join(problems)
        )


def quantized_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, quantized layers as stored (shared tensors once)."""
    tensors = {t.data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


__all__ = [
    "METHODS", "calibrate", "calibration_batches", "collect_inputs", "linear_layers", "linear_weight", "load_quantized", "pre_norm_groups", "quantize_model",
    "quantized_layers", "quantized_nbytes", "run_model", "save_quantized",
]
