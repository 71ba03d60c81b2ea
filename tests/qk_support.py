"""Helpers shared by the qkernels tests: float formats, containers (NumPy / torch), example
counts per hypothesis profile, and the generation of matmul problems from hypothesis draws.

Bulk values come from a NumPy Generator seeded by a hypothesis-drawn integer; hypothesis draws
the shape, the formats and the *kind* of values (patterns and magnitudes), so a failing example
prints as a short, reproducible `Problem`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import strategies as st

import qkernels
from qkernels import reference

# ---------------------------------------------------------------- subprocesses


def subprocess_env() -> dict[str, str]:
    """The environment of this test run for a Python subprocess: the qkernels package this run
    imports on the path, the library it loaded by its absolute path (the subprocess may run in
    another directory), and no QKERNELS_BACKEND."""
    env = dict(os.environ)
    package_root = str(Path(qkernels.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if "QKERNELS_LIBRARY" in env:
        env["QKERNELS_LIBRARY"] = str(qkernels._native.library_path)
    env.pop("QKERNELS_BACKEND", None)
    return env


# ---------------------------------------------------------------- profiles

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def examples(n: int) -> int:
    """The example count for a test tuned to `n` under the "ci" profile."""
    return {"ci": n, "dev": max(4, n // 4), "thorough": 20 * n}.get(PROFILE, n)


# ---------------------------------------------------------------- float formats

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None

DTYPES = ("float32", "float16", "bfloat16")
# bfloat16 needs a container: a torch tensor, or a NumPy array of ml_dtypes.bfloat16.
USABLE_DTYPES = tuple(d for d in DTYPES if d != "bfloat16" or HAVE_TORCH or HAVE_ML_DTYPES)

MAX = {"float32": float(np.finfo(np.float32).max), "float16": 65504.0, "bfloat16": float.fromhex("0x1.FEp127")}
MIN_NORMAL = {"float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}
MIN_SUBNORMAL = {"float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}


def kinds_for(dtype: str) -> tuple[str, ...]:
    """Containers that can hold `dtype` here."""
    kinds = []
    if dtype != "bfloat16" or HAVE_ML_DTYPES:
        kinds.append("numpy")
    if HAVE_TORCH:
        kinds.append("torch")
    return tuple(kinds)


def bf16_bits(values) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float values, rounded to nearest even via float32.
    Used to make inputs only: any bfloat16 value is a valid input, double rounding is harmless."""
    f = np.asarray(values, dtype=np.float64).astype(np.float32)
    b = f.view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    return np.where(nan, ((b >> 16) & 0x8000 | 0x7FC0).astype(np.uint16), r).astype(np.uint16)


def encode(values, dtype: str) -> np.ndarray:
    """Float values as the reference's representation of `dtype` (bfloat16: uint16 bits)."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "float32":
        return values.astype(np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    return bf16_bits(values)


def decode(rep, dtype: str) -> np.ndarray:
    """The reference representation of `dtype` as exact float64 values."""
    rep = np.asarray(rep)
    if dtype == "bfloat16":
        return (rep.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return rep.astype(np.float64)


def torch_module():
    import torch

    return torch


def to_kind(rep: np.ndarray, dtype: str, kind: str):
    """A library input (NumPy array or torch tensor) holding exactly the values of `rep`."""
    rep = np.ascontiguousarray(rep)
    if kind == "numpy":
        if dtype == "bfloat16":
            import ml_dtypes

            return rep.view(ml_dtypes.bfloat16).copy()
        return rep.copy()
    torch = torch_module()
    if dtype == "bfloat16":
        return torch.from_numpy(rep.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(rep.copy())


def kind_of(y) -> str:
    if HAVE_TORCH and isinstance(y, torch_module().Tensor):
        return "torch"
    assert isinstance(y, np.ndarray), type(y)
    return "numpy"


def dtype_name(y) -> str:
    """float32 / float16 / bfloat16 of a NumPy array or torch tensor."""
    if kind_of(y) == "torch":
        return str(y.dtype).removeprefix("torch.")
    return y.dtype.name


def to_rep(y, dtype: str) -> np.ndarray:
    """A library output in the reference's representation (bfloat16: uint16 bits)."""
    if kind_of(y) == "torch":
        torch = torch_module()
        if dtype == "bfloat16":
            return y.detach().contiguous().view(torch.int16).numpy().view(np.uint16).copy()
        return y.detach().contiguous().numpy().copy()
    if dtype == "bfloat16":
        return np.ascontiguousarray(y).view(np.uint16).copy()
    return np.ascontiguousarray(y).copy()


def bits_of(rep: np.ndarray) -> np.ndarray:
    """The raw bit patterns of a float representation, for bit-for-bit comparisons."""
    rep = np.ascontiguousarray(rep)
    return rep.view({2: np.uint16, 4: np.uint32}[rep.dtype.itemsize])


def assert_container(y, kind: str, dtype: str, shape: tuple[int, ...]):
    assert kind_of(y) == kind, f"output is {kind_of(y)}, input was {kind}"
    assert dtype_name(y) == dtype, f"output dtype {dtype_name(y)}, input {dtype}"
    assert tuple(y.shape) == tuple(shape), f"output shape {tuple(y.shape)}, expected {shape}"


# ---------------------------------------------------------------- kernels

KERNELS = qkernels.kernels()
BACKENDS = {b.name: b for b in qkernels.backends()}


def kernel_params(with_auto: bool = False):
    """pytest params: every registered kernel (skipped, with the backend's reason, where
    unavailable), plus "auto" (automatic dispatch) if asked."""
    params = []
    for k in KERNELS:
        if BACKENDS[k.backend].reason:
            reason = f"backend {k.backend}: {BACKENDS[k.backend].reason}"
        else:  # the backend runs, the kernel needs more
            reason = f"this CPU lacks {' '.join(k.cpu_features)}"
        marks = [] if k.available else [pytest.mark.skip(reason=f"{k.name}: {reason}")]
        params.append(pytest.param(k, id=k.name, marks=marks))
    if with_auto:
        params.append(pytest.param(None, id="auto"))
    return params


# ---------------------------------------------------------------- matmul problems


@dataclass(frozen=True)
class Problem:
    mode: str
    dtype: str  # activations and output
    kind: str  # container of the activations
    bits: int
    M: int
    N: int
    K: int
    G: int
    symmetric: bool
    weights: str  # "raw" canonical arrays, or "quantized" by qkernels.quantize_weights
    granularity: str  # for "quantized": group / channel / tensor
    w_dtype: str  # dtype of the float weights given to the quantizer
    w_pattern: str
    w_mag: float  # raw: base scale; quantized: magnitude of the float weights
    x_pattern: str
    x_mag: float  # wanted max |x| (capped so that outputs stay finite)
    bias: str  # "none", "small", "large"
    seed: int
    offsets: bool = False  # per-group offsets (format v2); a shorter last group is K % G != 0

    @property
    def ragged(self) -> bool:
        return self.K % self.G != 0


@dataclass
class Built:
    problem: Problem
    x: object  # the library input [M, K]
    x_rep: np.ndarray  # the same values, reference representation
    qw: qkernels.QuantizedWeight
    bias: np.ndarray | None

    def check(self, y, x_rep=None):
        """y (library output) against the reference, with the contract's tolerance."""
        p = self.problem
        xr = self.x_rep if x_rep is None else x_rep
        reference.assert_matmul_close(
            to_rep(y, p.dtype).reshape(xr.shape[0], p.N), xr, p.dtype, self.qw.data, self.qw.scales,
            self.qw.zero_points, p.bits, p.G, p.mode, self.bias, self.qw.offsets,
        )


M_STRATEGY = st.one_of(st.just(1), st.integers(2, 17), st.sampled_from([31, 32, 33, 64, 65]))
N_STRATEGY = st.one_of(st.integers(1, 17), st.sampled_from([31, 33, 63, 64, 65, 127]))
X_PATTERNS = ("normal", "uniform", "integers", "zero_rows", "outlier", "constant", "sparse", "max", "ties", "tiny")
W_PATTERNS = ("normal", "extreme", "zero_rows", "outlier", "constant")


def _multiple(value: int, of: int) -> int:
    return max(of, -(-value // of) * of)


def even_for_4_bit(K: int, G: int, bits: int) -> int:
    """K, made even for 4 bits (two values a byte): one column more, or one fewer where one more
    would fill a shorter last group (it stays shorter)."""
    if bits == 4 and K % 2:
        return K - 1 if K > 1 and (K + 1) % G == 0 else K + 1
    return K


def _draw_v2(draw, wanted: bool | None, supported: bool) -> bool:
    """Whether a problem has a format v2 feature: `wanted` if given, else in a quarter of the
    problems where the kernel under test supports it."""
    if wanted is not None:
        return wanted
    return supported and draw(st.sampled_from([False, False, False, True]))


@st.composite
def shapes(draw, bits: int, group_multiple: int = 1, ragged: bool | None = None):
    """(K, G): per-channel, 32/64/128 tiles (K = G .. 4G), small odd group sizes, many groups, or
    (format v2) a shorter last group. ragged: True for the last only, False never, None in a quarter."""
    gm = group_multiple
    if _draw_v2(draw, ragged, True):
        # Whole groups, then 1 .. G-1 more columns; no whole group at all is G > K, one short group.
        # K = 576, G = 128 is a real model's (SmolLM's hidden size).
        G = gm * draw(st.sampled_from([3, 5, 7, 9, 32, 64, 128]))
        K = even_for_4_bit(G * draw(st.sampled_from([0, 1, 2, 3, 4])) + draw(st.integers(1, G - 1)), G, bits)
        return draw(st.sampled_from([(K, G), (K, G), (K, G), (576, 128)])) if gm == 1 else (K, G)
    style = draw(st.sampled_from(["channel", "tile", "odd", "channel", "tile", "odd", "many"]))
    if style == "many":  # hundreds of small groups (docs/numerics.md reading 14)
        G = gm * draw(st.sampled_from([1, 2, 4, 8]))
        groups = draw(st.sampled_from([256, 300, 513]))
        if bits == 4 and (G * groups) % 2:
            groups += 1
        return G * groups, G
    if style == "channel":
        K = draw(st.one_of(st.integers(1, 40), st.sampled_from([63, 64, 65, 127, 128, 129, 255, 256, 257, 384, 512])))
        K = _multiple(K, gm)
        if bits == 4 and K % 2:
            K *= 2
        return K, K
    if style == "tile":
        G = _multiple(draw(st.sampled_from([32, 64, 128])), gm)
        return G * draw(st.sampled_from([1, 2, 3, 4])), G
    G = draw(st.sampled_from([1, 3, 5, 7, 9, 15])) * gm
    groups = draw(st.integers(1, 12))
    if bits == 4 and (G * groups) % 2:
        groups *= 2
    return G * groups, G


@st.composite
def problems(draw, kernel=None, modes=("a16", "a8"), dtypes=None, bits=None, weights=None, bias=None,
             offsets=None, ragged=None):
    """A matmul problem for `kernel` (None: automatic dispatch) within its limits. offsets, ragged
    (format v2): True or False to force them; None draws them in a fraction of the problems where
    the kernel supports them (automatic dispatch supports both)."""
    mode = kernel.mode if kernel is not None else draw(st.sampled_from(modes))
    allowed = kernel.dtypes if kernel is not None else DTYPES
    dtype = draw(st.sampled_from([d for d in (dtypes or allowed) if d in USABLE_DTYPES and d in allowed]))
    kind = draw(st.sampled_from(kinds_for(dtype)))
    bits = draw(st.sampled_from(bits or (kernel.bits if kernel is not None else (4, 8))))
    M, N = draw(M_STRATEGY), draw(N_STRATEGY)
    K, G = draw(shapes(bits, kernel.group_multiple if kernel is not None else 1,
                       ragged=ragged if ragged is not None or kernel is None or kernel.ragged_groups else False))
    if kernel is not None and kernel.max_group_size:
        assume(min(G, K) <= kernel.max_group_size)  # longer groups are not this kernel's problem
    symmetric = draw(st.booleans())
    source = draw(st.sampled_from(weights or ("raw", "quantized")))
    granularity = "group"
    if source == "quantized" and G == K:
        granularity = draw(st.sampled_from(["channel", "tensor", "group"]))
    w_dtype = draw(st.sampled_from(USABLE_DTYPES))
    w_pattern = draw(st.sampled_from(W_PATTERNS))
    # Weight magnitudes such that a kernel may round dequantized weights to the activation dtype
    # (docs/numerics.md §3, A16) without leaving its normal range.
    if source == "raw":
        mags = [2.0**-10, 0.05, 1.0, 16.0] if dtype == "float16" else [1e-8, 1e-3, 1.0, 1e3, 1e8]
    else:
        # |w| >= 0.05·w_mag before quantization: every scale stays above float16's smallest normal.
        mags = [0.5, 1.0, 30.0] if (dtype == "float16" or w_dtype == "float16") else [1e-6, 1.0, 1e6]
    w_mag = draw(st.sampled_from(mags))
    x_pattern = draw(st.sampled_from(X_PATTERNS))
    x_mag = draw(st.sampled_from([1e-3, 1.0, 100.0, math.inf] if dtype == "float16" else [1e-8, 1.0, 1e8, math.inf]))
    bias_kind = draw(st.sampled_from(bias or ("none", "small", "large")))
    seed = draw(st.integers(0, 2**32 - 1))
    with_offsets = _draw_v2(draw, offsets, kernel is None or kernel.offsets)
    return Problem(mode, dtype, kind, bits, M, N, K, G, symmetric, source, granularity, w_dtype, w_pattern, w_mag,
                   x_pattern, x_mag, bias_kind, seed, with_offsets)


def _unit_weights(rng, pattern: str, N: int, K: int) -> np.ndarray:
    w = rng.standard_normal((N, K))
    w = np.sign(w) * (np.abs(w) + 0.05)  # no element near zero unless exactly zero
    if pattern == "extreme":
        w = rng.choice([-1.0, 1.0], (N, K))
    elif pattern == "zero_rows":
        w[rng.random(N) < 0.4] = 0.0
        w[rng.integers(N)] = 0.0
    elif pattern == "outlier":
        w[rng.integers(N), rng.integers(K)] *= 1000.0
    elif pattern == "constant":
        w[:] = rng.choice([-1.5, 0.75, 1.0])
    return w


def pack4(q) -> np.ndarray:
    """int4 values [N, K] packed two per byte, low nibble first (docs/numerics.md §1)."""
    q = np.asarray(q, dtype=np.int64) & 0xF
    return np.ascontiguousarray((q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).view(np.int8))


def as_int8(a) -> np.ndarray:
    """An int8 view of integer bytes however the reference types them (int8, uint8, wider)."""
    a = np.asarray(a)
    if a.dtype == np.int8:
        return a
    if a.dtype == np.uint8:
        return a.view(np.int8)
    return (a.astype(np.int64) & 0xFF).astype(np.uint8).view(np.int8)


def raw_weights(rng, N, K, G, bits, symmetric, s0, pattern="normal"):
    """Random canonical arrays: random bytes (4-bit: any byte is two valid nibbles), positive
    float32 scales around s0 (x/÷4), zero points in range."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if pattern == "extreme":  # every element at an end of the integer range
        q = rng.choice([qmin, qmax], (N, K))
        data = q.astype(np.int8) if bits == 8 else pack4(q)
    else:
        data = rng.integers(0, 256, (N, K * bits // 8), dtype=np.uint8).view(np.int8)
        if pattern == "zero_rows":
            data[rng.random(N) < 0.4] = 0
    groups = (N, -(-K // G))  # the last group may be shorter (format v2)
    scales = (s0 * np.exp(rng.uniform(-math.log(4), math.log(4), groups))).astype(np.float32)
    if pattern == "constant":
        scales[:] = np.float32(s0)
    zp = None
    if not symmetric:
        zp = rng.integers(qmin, qmax + 1, groups).astype(np.int8)
        if pattern == "extreme":
            zp = rng.choice([qmin, qmax], groups).astype(np.int8)
    return np.ascontiguousarray(data), scales, zp


def raw_offsets(rng, scales, bits) -> np.ndarray:
    """Per-group offsets s·(j + f), j an integer within the weights' range and f in [1/4, 3/4]: then
    s·(q − zp) + offset lies at least s/4 from zero, so no cancellation makes a dequantized weight
    subnormal in the activation dtype (docs/numerics.md reading 13). float32, ±Inf where s·(j + f)
    overflows."""
    half = 1 << (bits - 1)
    j = rng.integers(-half, half + 1, scales.shape)
    f = rng.uniform(0.25, 0.75, scales.shape)
    with np.errstate(over="ignore"):
        return (scales.astype(np.float64) * (j + f)).astype(np.float32)


def _unit_activations(rng, pattern: str, M: int, K: int) -> np.ndarray:
    if pattern == "uniform":
        return rng.uniform(-1, 1, (M, K))
    if pattern == "integers":
        return rng.integers(-8, 9, (M, K)).astype(np.float64)
    if pattern == "constant":
        return np.full((M, K), rng.choice([-1.0, 0.5, 3.0]))
    if pattern == "sparse":
        return rng.standard_normal((M, K)) * (rng.random((M, K)) < 0.1)
    if pattern == "max":  # every element at ±max|x|
        return rng.choice([-1.0, 1.0], (M, K))
    if pattern == "ties":  # x·(127/amax) lands on halves: round half to even decides (A8)
        x = (rng.integers(0, 64, (M, K)) + 0.5) * rng.choice([-1.0, 1.0], (M, K))
        x[:, rng.integers(K)] = 127.0
        return x
    x = rng.standard_normal((M, K))
    if pattern == "zero_rows":
        x[rng.random(M) < 0.4] = 0.0
        x[rng.integers(M)] = 0.0
    elif pattern == "outlier":
        x[rng.integers(M), rng.integers(K)] = 1000.0 * rng.choice([-1.0, 1.0])
    return x


def build(p: Problem, batch_shape: tuple[int, ...] | None = None) -> Built:
    rng = np.random.default_rng(p.seed)
    N, K, G = p.N, p.K, p.G
    if p.weights == "raw":
        data, scales, zp = raw_weights(rng, N, K, G, p.bits, p.symmetric, p.w_mag, p.w_pattern)
        qw = qkernels.QuantizedWeight(data, scales, zp, p.bits, G, (N, K))
    else:
        w = _unit_weights(rng, p.w_pattern, N, K) * p.w_mag
        w = np.clip(w, -0.5 * MAX[p.w_dtype], 0.5 * MAX[p.w_dtype])  # an outlier stays finite
        w_obj = to_kind(encode(w, p.w_dtype), p.w_dtype, kinds_for(p.w_dtype)[0])
        group = G if p.granularity == "group" else None
        qw = qkernels.quantize_weights(w_obj, bits=p.bits, group_size=group, symmetric=p.symmetric,
                                       granularity=p.granularity)
        assert qw.group_size == G
    if p.offsets:
        qw = replace(qw, offsets=raw_offsets(rng, qw.scales, p.bits))
    w_absmax = float(np.abs(reference.dequantize(qw.data, qw.scales, qw.zero_points, p.bits, G, qw.offsets)).max())

    dmax = MAX[p.dtype]
    bias = None
    bmax = 0.0
    if p.bias != "none":
        magnitude = 0.2 * dmax if p.bias == "large" else max(w_absmax, 1e-3) * min(p.x_mag, 1.0)
        bias = (rng.standard_normal(N) * magnitude / 4).astype(np.float32)
        bias = np.clip(bias, -0.2 * dmax, 0.2 * dmax).astype(np.float32)
        bmax = float(np.abs(bias).max())

    # The largest max|x| that keeps every output below half the format's range.
    cap = (0.5 * dmax - bmax) / (K * max(w_absmax, 1e-300))
    unit = _unit_activations(rng, p.x_pattern, p.M, K)
    if p.x_pattern == "tiny":
        # A8: amax below 127/FLT_MAX, where 127/amax overflows (docs/numerics.md reading 4).
        # A16: small but with normal float32 products.
        if p.mode == "a8":
            target = {"float16": 2.0**-20, "float32": 1e-40, "bfloat16": 1e-39}[p.dtype]
        else:
            target = {"float16": 2.0**-20, "float32": 1e-20, "bfloat16": 1e-20}[p.dtype]
        unit = rng.standard_normal((p.M, K))
    else:
        target = min(p.x_mag, cap, 0.9 * dmax)
    peak = float(np.abs(unit).max())
    if p.x_pattern == "ties":  # keep the halves exact: scale by a power of two
        x = unit * 2.0 ** math.floor(math.log2(max(target, 1e-30) / 127.0))
    elif peak > 0:
        x = unit * (target / peak)
    else:
        x = unit
    x_rep = encode(x, p.dtype)
    assert np.isfinite(decode(x_rep, p.dtype)).all()
    shape = batch_shape + (K,) if batch_shape else (p.M, K)
    x_obj = to_kind(x_rep.reshape(shape), p.dtype, p.kind)
    return Built(p, x_obj, x_rep, qw, bias)
