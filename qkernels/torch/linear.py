"""QuantLinear: an nn.Module holding a QuantizedWeight, run by qkernels' custom ops."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..weights import QuantizedWeight
from . import ops

# How a layer's input reaches the weights:
#   "float"   weight-only: the A16 kernel on the float input;
#   "token"   dynamic per-row int8 (the A8 kernel; docs/numerics.md section 3);
#   "tensor"  static per-tensor int8 with a calibrated clip: x is rounded to that int8 grid in
#             float32 and the grid values q * step go through the A16 kernel: the W8A8 product up to
#             the float32 rounding of q * step (no kernel takes a static activation scale yet).
ACTIVATIONS = ("float", "token", "tensor")


def static_int8(x: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """x rounded to the per-tensor int8 grid of step clip / 127, in float32 (q * step), with a
    straight-through gradient: the rounding passes grad unchanged, as in quantization-aware training.
    A zero step (clip 0: calibration inputs all zero) is 1, as for any zero range (docs/numerics.md §2)."""
    step = clip.to(torch.float32) / 127
    step = torch.where(step == 0, 1.0, step)
    xf = x.to(torch.float32)
    grid = torch.clamp(torch.round(xf / step), -127, 127) * step
    return xf + (grid - xf).detach()


def moves_only(fn):
    """nn.Module._apply's fn for a module of quantized buffers: model.half() or .to(torch.bfloat16)
    casts every float buffer, but the quantized format's keep their dtypes (float32 scales and
    bias) and follow only device moves."""

    def keep_dtype(t: torch.Tensor) -> torch.Tensor:
        moved = fn(t)
        return moved if moved.dtype == t.dtype else t.to(moved.device)

    return keep_dtype


class QuantLinear(nn.Module):
    """y = x · Wᵀ + b with W quantized (any format of docs/numerics.md section 1).

    Buffers (all in the state dict): qdata, scales, zero_points (asymmetric only), offsets (format
    v2: only where the weights have them; a group size need not divide K either), bias (if any),
    input_scale [K] (a factor on x before quantization: SmoothQuant's 1/s),
    input_permutation [K] (int64: the kernel's input column i is x[..., input_permutation[i]], so
    weight column i belongs to that input; GPTQ act-order checkpoints, qkernels.checkpoints;
    input_scale then applies in that column order),
    act_clip (a scalar: the static range of "tensor" activations). The format (bits, group size, activation, LLM.int8()
    threshold) travels in the state dict too, as extra state, so a saved model loads without
    re-quantizing (qkernels.torch.load_quantized). The buffers are copies of qweight's arrays. A
    backend's own layout of them is cached and rebuilt when they change in place (torch.no_grad()
    in-place ops, load_state_dict); a change through `.data` or a NumPy view is not seen.

    Runs through torch.ops.qkernels.matmul (or matmul_outliers when outlier_threshold is set; in
    eager inference, their implementations directly, see ops.use_impl): on CPU tensors whichever
    backend automatic dispatch picks; on a model moved to a GPU (model.cuda()) the cuda backend, on
    torch's current stream, with the weights packed for the device once (from a host copy of the
    buffers). An input on another device than the layer's buffers raises InvalidArgumentError:
    qkernels never moves activations between host and device. LLM.int8() outliers run on the CPU only.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None, *, activation: str = "float",
                 input_scale: torch.Tensor | None = None, act_clip: float | None = None,
                 outlier_threshold: float | None = None, input_permutation: torch.Tensor | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InvalidArgumentError(f"activation={activation!r} is not one of {ACTIVATIONS}")
        if (activation == "tensor") != (act_clip is not None):
            raise InvalidArgumentError("act_clip is needed for activation='tensor', and only there")
        if outlier_threshold is not None and activation != "token":
            raise InvalidArgumentError("outlier_threshold (LLM.int8()) needs activation='token'")
        self.out_features, self.in_features = qweight.shape
        self.bits, self.group_size = qweight.bits, qweight.group_size
        self.activation, self.outlier_threshold = activation, outlier_threshold
        # Copies: loading a state dict writes into the buffers, which must not change qweight (nor a
        # read-only array, such as a memory-mapped file's, that it may view).
        for name in ("qdata", "scales", "zero_points", "offsets"):
            array = getattr(qweight, "data" if name == "qdata" else name)
            self.register_buffer(name, None if array is None else torch.from_numpy(array.copy()))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.to(torch.float32).clone())
        self.register_buffer("act_clip", None if act_clip is None else torch.tensor(float(act_clip)))
        if input_permutation is not None:
            K = self.in_features
            input_permutation = torch.as_tensor(input_permutation, dtype=torch.int64)
            if not torch.equal(torch.sort(input_permutation).values, torch.arange(K)):
                raise InvalidArgumentError(f"input_permutation must be a permutation of range({K})")
        self.register_buffer("input_permutation", input_permutation)
        self._handle = ops.WeightHandle()
        self._register_weight()

    @classmethod
    def empty(cls, config: dict) -> QuantLinear:
        """A QuantLinear of the structure `config` (get_extra_state()) with zeroed buffers, to load into."""
        N, K, bits, G = config["out_features"], config["in_features"], config["bits"], config["group_size"]
        groups = (N, -(-K // G))  # the last group may be shorter (format v2)
        zeros = torch.zeros(groups, dtype=torch.int8) if config["zero_points"] else None
        offsets = torch.zeros(groups) if config.get("offsets") else None
        qweight = QuantizedWeight(torch.zeros(N, K * bits // 8, dtype=torch.int8), torch.ones(groups),
                                  zeros, bits, G, (N, K), kind="torch", offsets=offsets)
        return cls(qweight, torch.zeros(N) if config["bias"] else None, activation=config["activation"],
                   input_scale=torch.ones(K) if config["input_scale"] else None,
                   act_clip=1.0 if config["activation"] == "tensor" else None,
                   outlier_threshold=config["outlier_threshold"],
                   input_permutation=torch.arange(K) if config.get("input_permutation") else None)

    def _register_weight(self) -> None:
        ops.register_weight(self.qdata, self._handle)

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(moves_only(fn), *args, **kwargs)
        self._register_weight()  # .to(), .share_memory() ... may have replaced the buffers
        return result

    def __getstate__(self):
        """Copies and pickles leave the handle behind (it holds native pointers) and make their own."""
        return {key: value for key, value in self.__dict__.items() if key != "_handle"}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._handle = ops.WeightHandle()
        self._register_weight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self.set_extra_state(extra)  # a layer of another structure: refused before any buffer is copied
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._register_weight()  # load_state_dict(assign=True) replaces the buffers

    def get_extra_state(self) -> dict:
        return {
            "in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
            "group_size": self.group_size, "activation": self.activation,
            "outlier_threshold": self.outlier_threshold, "zero_points": self.zero_points is not None,
            "bias": self.bias is not None, "input_scale": self.input_scale is not None,
            "offsets": self.offsets is not None, "input_permutation": self.input_permutation is not None,
        }

    def set_extra_state(self, state: dict) -> None:
        state = {"offsets": False, "input_permutation": False} | state  # saved before these existed
        if state != self.get_extra_state():
            raise InvalidArgumentError(
                f"the saved layer {state} does not have this QuantLinear's structure {self.get_extra_state()}"
            )

    @property
    def qweight(self) -> QuantizedWeight:
        """The weights as a QuantizedWeight (viewing this module's buffers)."""
        return ops.quantized_weight(self.qdata, self.scales, self.zero_points, self.bits, self.group_size,
                                    self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes held: quantized weights, scales, zero points, offsets, bias and activation factors."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self._buffers  # nn.Module.__getattr__ takes about 1 us a name (README, QuantLinear)
        try:
            data, scales, zero_points, bias, offsets = b["qdata"], b["scales"], b["zero_points"], b["bias"], b["offsets"]
            input_scale, permutation, act_clip = b["input_scale"], b["input_permutation"], b["act_clip"]
        except KeyError:  # one made a Parameter, or parametrized: the module's own lookup
            data, scales, zero_points, bias, offsets = self.qdata, self.scales, self.zero_points, self.bias, self.offsets
            input_scale, permutation, act_clip = self.input_scale, self.input_permutation, self.act_clip
        weight = (data, scales, zero_points, bias, self.bits, self.group_size)
        if permutation is not None:
            x = x.index_select(-1, permutation)
        if input_scale is not None:
            x = x * input_scale.to(x.dtype)
        direct = ops.use_impl(x, bias)  # skips the dispatcher's ~60 us when it would add nothing
        matmul = ops.matmul_impl if direct else torch.ops.qkernels.matmul
        if self.activation == "tensor":  # float32 grid values; the output returns to x's dtype
            return matmul(static_int8(x, act_clip), *weight, "a16", offsets).to(x.dtype)
        if self.outlier_threshold is not None:
            matmul_outliers = ops.matmul_outliers_impl if direct else torch.ops.qkernels.matmul_outliers
            return matmul_outliers(x, *weight, self.outlier_threshold, offsets)
        mode = "a8" if self.activation == "token" else "a16"
        return matmul(x, *weight, mode, offsets)

    def extra_repr(self) -> str:
        groups = "channel" if self.group_size >= self.in_features else f"group {self.group_size}"
        extra = f", outliers |x| >= {self.outlier_threshold}" if self.outlier_threshold is not None else ""
        smooth = ", smoothed" if self.input_scale is not None else ""
        smooth += ", inputs permuted" if self.input_permutation is not None else ""
        groups += " with offsets" if self.offsets is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, w{self.bits} per {groups}, "
                f"activation={self.activation}{smooth}{extra}, {math.ceil(self.nbytes / 1024)} KiB")
