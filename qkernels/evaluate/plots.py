"""PNG figures of the evaluation (matplotlib, from the eval extra): weight and activation
histograms before and after quantization, and each method's error per layer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..weights import dequantize
from ..torch.linear import QuantLinear, static_int8
from ..torch.model import calibrate, linear_weight


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


class _LastInput:
    """A calibrate() collector that keeps the last input it saw, as rows [M, K]."""

    def update(self, x: torch.Tensor) -> None:
        self.rows = x.reshape(-1, x.shape[-1])


def layer_inputs(model: nn.Module, names: list[str], batch: dict) -> dict[str, torch.Tensor]:
    """The inputs of the named layers on one batch (flattened to rows [M, K])."""
    layers = {name: model.get_submodule(name) for name in names}
    collectors = calibrate(model, layers, [batch], lambda _K: _LastInput())
    return {name: collector.rows for name, collector in collectors.items()}


def layer_errors(float_model: nn.Module, quantized: nn.Module, batch: dict) -> dict[str, float]:
    """Per quantized layer, ‖y − y_float‖ / ‖y_float‖ on the input that layer receives in the
    quantized model, y_float from the float layer's weights: the error that layer adds."""
    errors, hooks = {}, []

    def record(name):
        weight, bias = linear_weight(float_model.get_submodule(name))

        def hook(_module, args, output):
            reference = nn.functional.linear(args[0].double(), weight.double(), None if bias is None else bias.double())
            errors[name] = float((output.double() - reference).norm() / reference.norm())

        return hook

    for name, module in quantized.named_modules():
        if isinstance(module, QuantLinear):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.inference_mode():
            quantized(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return errors


def weight_histograms(path: Path, layer: str, float_weight: torch.Tensor, quantized: dict[str, QuantLinear]) -> None:
    """One layer's weights: their values in float and as the first three methods store them, and
    the error w_quantized − w_float of every method."""
    plt = _pyplot()
    figure, (values_axis, errors_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    w = float_weight.float()
    bins = torch.linspace(float(w.min()), float(w.max()), 161).numpy()
    values_axis.hist(w.flatten().numpy(), bins=bins, histtype="stepfilled", alpha=0.35, color="gray", label="float32")
    for index, (label, module) in enumerate(quantized.items()):
        stored = dequantize(module.qweight, "float32")
        if index < 3:
            values_axis.hist(stored.flatten().numpy(), bins=bins, histtype="step", label=label)
        errors_axis.hist((stored - w).flatten().numpy(), bins=200, histtype="step", label=label)
    values_axis.set(yscale="log", xlabel="weight value", ylabel="count", title=f"weights of {layer}")
    errors_axis.set(yscale="log", xlabel="quantized − float", ylabel="count", title="weight error")
    values_axis.legend(fontsize=8)
    errors_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def activation_histograms(path: Path, layer: str, x: torch.Tensor, smooth: torch.Tensor | None,
                          clip: float | None) -> None:
    """One layer's input: per-channel max|x| before and after SmoothQuant's smoothing (x · smooth,
    smooth = 1/s), and the values before and after per-tensor int8 rounding with the static clip."""
    plt = _pyplot()
    figure, (channels, values) = plt.subplots(1, 2, figsize=(12, 4.5))
    channels.plot(x.abs().amax(dim=0).numpy(), lw=0.8, label="float input")
    if smooth is not None:
        channels.plot((x * smooth).abs().amax(dim=0).numpy(), lw=0.8, label="smoothed (x / s)")
    channels.set(xlabel="input channel", ylabel="max |x| over tokens", title=f"input of {layer}")
    channels.legend(fontsize=8)
    flat = x.flatten()
    values.hist(flat.numpy(), bins=200, histtype="stepfilled", alpha=0.4, label="float input")
    if clip is not None:
        rounded = static_int8(flat, torch.tensor(clip))
        values.hist(rounded.numpy(), bins=200, histtype="step", label=f"int8 per-tensor (clip {clip:.1f})")
    values.set(yscale="log", xlabel="activation value", ylabel="count", title="values")
    values.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def error_per_layer(path: Path, errors: dict[str, dict[str, float]]) -> None:
    """Relative output error of every quantized layer, one line per method."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(12, 5))
    names = next(iter(errors.values())).keys() if errors else []
    for label, per_layer in errors.items():
        axis.plot([per_layer[n] for n in names], marker=".", lw=0.8, label=label)
    axis.set_xticks(range(len(names)), [n.replace("encoder.layer.", "") for n in names], rotation=90, fontsize=6)
    axis.set(yscale="log", ylabel="‖y − y_float‖ / ‖y_float‖",
             title="error each layer adds (on its quantized-model input)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
