"""Every error of docs/numerics.md §4: typed exceptions naming the argument (Python), status codes
and messages (C), and "writes nothing to the output": C entry points are called with output
buffers poisoned and surrounded by guard bytes, which must all be unchanged after a failing call."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import numpy as np
import pytest

import qkernels
from qkernels import (
    BackendUnavailableError,
    DtypeError,
    InvalidArgumentError,
    NonFiniteError,
    OutOfMemoryError,
    QKernelsError,
    UnsupportedError,
    ffi,
    lib,
)
from qkernels import dispatch
from qkernels._native import new_struct
from qkernels.errors import error_for_status
from qk_support import KERNELS, pack4, subprocess_env

BACKENDS = qkernels.backends()
UNAVAILABLE = [b.name for b in BACKENDS if not b.available]
AVAILABLE_KERNELS = [k for k in KERNELS if k.available]


@pytest.fixture(autouse=True)
def _no_backend_from_environment(monkeypatch):
    monkeypatch.delenv("QKERNELS_BACKEND", raising=False)


def _last_error() -> str:
    return ffi.string(lib.qk_last_error()).decode()


# ---------------------------------------------------------------- the exception types


def test_exception_hierarchy():
    expected = {
        InvalidArgumentError: ValueError,
        NonFiniteError: ValueError,
        DtypeError: TypeError,
        BackendUnavailableError: RuntimeError,
        UnsupportedError: RuntimeError,
        OutOfMemoryError: MemoryError,
    }
    for cls, builtin in expected.items():
        assert issubclass(cls, QKernelsError) and issubclass(cls, builtin), cls
    assert issubclass(QKernelsError, Exception)


@pytest.mark.parametrize(
    "status, cls",
    [
        ("QK_ERR_NULL_POINTER", InvalidArgumentError),
        ("QK_ERR_INVALID_SIZE", InvalidArgumentError),
        ("QK_ERR_INVALID_GROUP", InvalidArgumentError),
        ("QK_ERR_ODD_K", InvalidArgumentError),
        ("QK_ERR_INVALID_BITS", InvalidArgumentError),
        ("QK_ERR_INVALID_DTYPE", DtypeError),
        ("QK_ERR_INVALID_ARGUMENT", InvalidArgumentError),
        ("QK_ERR_BACKEND_UNAVAILABLE", BackendUnavailableError),
        ("QK_ERR_UNSUPPORTED", UnsupportedError),
        ("QK_ERR_MISALIGNED", InvalidArgumentError),
        ("QK_ERR_BUFFER_TOO_SMALL", InvalidArgumentError),
        ("QK_ERR_NON_FINITE", NonFiniteError),
        ("QK_ERR_OUT_OF_MEMORY", OutOfMemoryError),
    ],
)
def test_every_status_has_its_exception(status, cls):
    assert hasattr(lib, status)
    error = error_for_status(status, "message")
    assert type(error) is cls and error.status == status and str(error) == "message"


def test_status_strings():
    strings = [ffi.string(lib.qk_status_string(s)).decode() for s in range(lib.QK_ERR_STATUS_COUNT)]
    assert all(strings) and len(set(strings)) == len(strings)
    assert ffi.string(lib.qk_status_string(lib.QK_ERR_STATUS_COUNT)).decode() == "unknown status"


# ---------------------------------------------------------------- Python API

RNG = np.random.default_rng(0)
N, K, G = 5, 64, 32
W32 = RNG.standard_normal((N, K)).astype(np.float32)
X16 = RNG.standard_normal((3, K)).astype(np.float16)


def _qw(bits=4, symmetric=False):
    return qkernels.quantize_weights(W32, bits=bits, group_size=G, symmetric=symmetric)


def _raw(bits=4, zp_value=None, shape=(N, K), group=G):
    n, k = shape
    data = np.zeros((n, k * bits // 8), np.int8)
    scales = np.ones((n, k // group), np.float32)
    zp = None if zp_value is None else np.full((n, k // group), zp_value, np.int8)
    return data, scales, zp


def _raises(cls, pattern, fn, *args, **kwargs):
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, QKernelsError)
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not name {pattern!r}"
    return info.value


QUANTIZE_CASES = [
    ("N=0", dict(w=np.zeros((0, 64), np.float32), group_size=32), InvalidArgumentError, r"\bN\b|\bw\b"),
    ("K=0", dict(w=np.zeros((4, 0), np.float32), group_size=None), InvalidArgumentError, r"\bK\b"),
    ("K=0 group", dict(w=np.zeros((4, 0), np.float32), group_size=32), InvalidArgumentError, r"\bK\b"),
    ("G=0", dict(w=W32, group_size=0), InvalidArgumentError, r"group_size"),
    ("G<0", dict(w=W32, group_size=-32), InvalidArgumentError, r"group_size"),
    ("G float", dict(w=W32, group_size=32.0), InvalidArgumentError, r"group_size"),
    ("odd K 4-bit", dict(w=W32[:, :63], bits=4, group_size=63), InvalidArgumentError, r"\bK\b"),
    ("odd K 4-bit channel", dict(w=W32[:, :63], bits=4, group_size=None), InvalidArgumentError, r"\bK\b"),
    ("bits=3", dict(w=W32, bits=3), InvalidArgumentError, r"bits"),
    ("bits=16", dict(w=W32, bits=16), InvalidArgumentError, r"bits"),
    ("bits=0", dict(w=W32, bits=0), InvalidArgumentError, r"bits"),
    ("int32", dict(w=np.zeros((4, 64), np.int32)), DtypeError, r"\bw\b"),
    ("float64", dict(w=np.zeros((4, 64), np.float64)), DtypeError, r"\bw\b"),
    ("int8", dict(w=np.zeros((4, 64), np.int8)), DtypeError, r"\bw\b"),
    ("list", dict(w=[[0.0] * 64] * 4), DtypeError, r"\bw\b"),
    ("1-D", dict(w=np.zeros(64, np.float32)), InvalidArgumentError, r"\bw\b"),
    ("3-D", dict(w=np.zeros((2, 4, 64), np.float32)), InvalidArgumentError, r"\bw\b"),
    ("granularity", dict(w=W32, granularity="row"), InvalidArgumentError, r"granularity"),
    ("NaN", dict(w=np.where(np.arange(64) == 63, np.nan, W32).astype(np.float32)), NonFiniteError, r"input|\bw\b"),
    ("+Inf", dict(w=np.where(np.arange(64) == 0, np.inf, W32).astype(np.float32)), NonFiniteError, r"input|\bw\b"),
    ("-Inf f16", dict(w=np.where(np.arange(64) == 5, -np.inf, W32).astype(np.float16)), NonFiniteError,
     r"input|\bw\b"),
    ("NaN symmetric 8", dict(w=np.full((2, 64), np.nan, np.float32), bits=8, symmetric=True), NonFiniteError,
     r"input|\bw\b"),
    ("range overflow", dict(w=np.array([[3e38, -3e38]], np.float32), bits=8, group_size=None, symmetric=False),
     NonFiniteError, r"range|overflow"),
]


@pytest.mark.parametrize("kwargs, cls, pattern", [c[1:] for c in QUANTIZE_CASES], ids=[c[0] for c in QUANTIZE_CASES])
def test_quantize_weights_errors(kwargs, cls, pattern):
    _raises(cls, pattern, qkernels.quantize_weights, **({"group_size": 32} | kwargs))


def test_quantize_weights_torch_dtype_errors():
    torch = pytest.importorskip("torch")
    _raises(DtypeError, r"\bw\b", qkernels.quantize_weights, torch.zeros(4, 64, dtype=torch.float64), group_size=32)
    _raises(DtypeError, r"\bw\b", qkernels.quantize_weights, torch.zeros(4, 64, dtype=torch.int32), group_size=32)
    w = torch.zeros(4, 64)
    w[1, 3] = float("nan")
    _raises(NonFiniteError, r"input|\bw\b", qkernels.quantize_weights, w.to(torch.bfloat16), group_size=32)


WEIGHT_CASES = [
    ("bits=3", dict(bits=3), InvalidArgumentError, r"bits"),
    ("G=0", dict(group_size=0), InvalidArgumentError, r"group_size"),
    ("odd K 4-bit", dict(shape=(N, 63), group_size=63, data=np.zeros((N, 31), np.int8),
                         scales=np.ones((N, 1), np.float32)), InvalidArgumentError, r"\bK\b"),
    ("data shape", dict(data=np.zeros((N, 31), np.int8)), InvalidArgumentError, r"weights"),
    # (quantized_matmul takes N from the weights' rows: there the scales disagree)
    ("data rows", dict(data=np.zeros((N + 1, 32), np.int8)), InvalidArgumentError, r"weights|scales"),
    ("data 1-D", dict(data=np.zeros(N * 32, np.int8)), InvalidArgumentError, r"weights"),
    ("scales shape", dict(scales=np.ones((N, 1), np.float32)), InvalidArgumentError, r"scales"),
    ("scales transposed", dict(scales=np.ones((2, N), np.float32)), InvalidArgumentError, r"scales"),
    ("zero_points shape", dict(zero_points=np.zeros((N, 3), np.int8)), InvalidArgumentError, r"zero_points"),
    ("data uint8", dict(data=np.zeros((N, 32), np.uint8)), DtypeError, r"weights"),
    ("data float", dict(data=np.zeros((N, 32), np.float32)), DtypeError, r"weights"),
    ("scales float64", dict(scales=np.ones((N, 2), np.float64)), DtypeError, r"scales"),
    ("scales float16", dict(scales=np.ones((N, 2), np.float16)), DtypeError, r"scales"),
    ("zero_points int32", dict(zero_points=np.zeros((N, 2), np.int32)), DtypeError, r"zero_points"),
    ("data list", dict(data=[[0] * 32] * N), DtypeError, r"weights"),
]


@pytest.mark.parametrize("override, pattern", [(dict(dtype="float64"), "dtype"), (dict(dtype=np.float16), "dtype"),
                                               (dict(kind="jax"), "kind")])
def test_quantized_weight_dtype_and_kind_errors(override, pattern):
    data, scales, zp = _raw(4, 0)
    _raises(InvalidArgumentError, pattern, qkernels.QuantizedWeight, data, scales, zp, 4, G, (N, K), **override)


def test_dequantize_to_torch_without_torch_imported_first(tmp_path):
    pytest.importorskip("torch")
    code = ("import sys, numpy as np, qkernels\n"
            "qw = qkernels.QuantizedWeight(np.zeros((4, 32), np.int8), np.ones((4, 2), np.float32), None, 4, 32, (4, 64),"
            " dtype='float16', kind='torch')\n"
            "assert 'torch' not in sys.modules\n"
            "w = qkernels.dequantize(qw)\n"
            "print(type(w).__module__, w.dtype, tuple(w.shape))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
                         timeout=120)  # another directory: `python -c` puts the current one first on sys.path
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["torch", "torch.float16", "(4,", "64)"]


@pytest.mark.parametrize("override, cls, pattern", [c[1:] for c in WEIGHT_CASES], ids=[c[0] for c in WEIGHT_CASES])
def test_quantized_weight_errors(override, cls, pattern):
    data, scales, zp = _raw(4, 0)
    args = dict(data=data, scales=scales, zero_points=zp, bits=4, group_size=G, shape=(N, K)) | override
    _raises(cls, pattern, qkernels.QuantizedWeight, **args)
    # quantized_matmul takes the same canonical arrays and raises the same errors.
    x = np.zeros((2, args["shape"][1]), np.float16)
    _raises(cls, pattern, qkernels.quantized_matmul, x, args["data"], args["scales"], args["zero_points"],
            bits=args["bits"], group_size=args["group_size"])


def _forced(how, name, monkeypatch):
    """Calls matmul with `name` forced by argument, use_backend, or QKERNELS_BACKEND."""
    qw = _qw()
    if how == "argument":
        return lambda: qkernels.matmul(X16, qw, backend=name)
    if how == "use_backend":

        def run():
            with qkernels.use_backend(name):
                return qkernels.matmul(X16, qw)

        return run
    monkeypatch.setenv("QKERNELS_BACKEND", name)
    return lambda: qkernels.matmul(X16, qw)


@pytest.mark.parametrize("how", ["argument", "use_backend", "environment"])
@pytest.mark.parametrize("name", UNAVAILABLE or ["(none)"])
def test_forced_unavailable_backend(how, name, monkeypatch):
    if name == "(none)":
        pytest.skip("every backend is available here")
    reason = next(b.reason for b in BACKENDS if b.name == name)
    error = _raises(BackendUnavailableError, re.escape(name), _forced(how, name, monkeypatch))
    assert reason in str(error)
    assert error.status == "QK_ERR_BACKEND_UNAVAILABLE"
    # select() reports the same refusal, and quantized_matmul / dequantize are not affected by dispatch.
    if how == "argument":
        _raises(BackendUnavailableError, re.escape(name), qkernels.select, X16, _qw(), backend=name)
        _raises(BackendUnavailableError, re.escape(name), qkernels.quantized_matmul, X16, *_raw(4, 0),
                bits=4, group_size=G, backend=name)


@pytest.mark.parametrize("how", ["argument", "use_backend", "environment"])
def test_unknown_backend_name(how, monkeypatch):
    pattern = "QKERNELS_BACKEND" if how == "environment" else "backend"
    _raises(InvalidArgumentError, pattern, _forced(how, "no_such_backend", monkeypatch))


# One of qkernels's own backends that no build for this architecture has, and why.
UNBUILT, UNBUILT_WHY = (("x86_amx", "not built: x86-64 builds only") if platform.machine().lower() in ("aarch64", "arm64")
                        else ("arm_neon_i8mm", "not built: aarch64 builds only"))


@pytest.mark.parametrize("how", ["argument", "use_backend", "environment"])
def test_backend_not_compiled_in_is_unavailable_not_unknown(how, monkeypatch):
    _raises(BackendUnavailableError, f"{UNBUILT}.* is {UNBUILT_WHY}", _forced(how, UNBUILT, monkeypatch))


def test_kernel_of_a_backend_not_compiled_in_is_unavailable():
    _raises(BackendUnavailableError, f"backend '{UNBUILT}' is {UNBUILT_WHY}", qkernels.matmul, X16, _qw(),
            kernel=f"{UNBUILT}_a8_w4w8_4x8")


def test_use_backend_rejects_unknown_name_at_the_with():
    with pytest.raises(InvalidArgumentError, match="backend"):
        with qkernels.use_backend("no_such_backend"):
            pytest.fail("the block must not run")
    assert qkernels.dispatch.forced_backend() is None


def test_environment_names_unavailable_backend_for_quantized_matmul(monkeypatch):
    if not UNAVAILABLE:
        pytest.skip("every backend is available here")
    monkeypatch.setenv("QKERNELS_BACKEND", UNAVAILABLE[0])
    _raises(BackendUnavailableError, UNAVAILABLE[0], qkernels.quantized_matmul, X16, *_raw(4, 0), bits=4, group_size=G)


def _matmul_cases():
    qw4 = _qw(4)
    cases = [
        ("M=0", lambda: qkernels.matmul(np.zeros((0, K), np.float16), qw4), InvalidArgumentError, r"\bM\b|\bx\b"),
        ("M=0 batched", lambda: qkernels.matmul(np.zeros((2, 0, K), np.float16), qw4), InvalidArgumentError,
         r"\bM\b|\bx\b"),
        ("x scalar", lambda: qkernels.matmul(np.array(1.0, np.float32), qw4), InvalidArgumentError,
         r"\bx\b"),
        ("x K mismatch", lambda: qkernels.matmul(np.zeros((2, K + 2), np.float16), qw4), InvalidArgumentError,
         r"\bx\b|\bK\b"),
        ("x int32", lambda: qkernels.matmul(np.zeros((2, K), np.int32), qw4), DtypeError, r"\bx\b"),
        ("x float64", lambda: qkernels.matmul(np.zeros((2, K), np.float64), qw4), DtypeError, r"\bx\b"),
        ("x list", lambda: qkernels.matmul([[0.0] * K], qw4), DtypeError, r"\bx\b"),
        ("bias length", lambda: qkernels.matmul(X16, qw4, bias=np.zeros(N + 1, np.float32)), InvalidArgumentError,
         r"bias"),
        ("bias 2-D", lambda: qkernels.matmul(X16, qw4, bias=np.zeros((1, N), np.float32)), InvalidArgumentError,
         r"bias"),
        ("mode a4", lambda: qkernels.matmul(X16, qw4, "a4"), InvalidArgumentError, r"mode"),
        ("mode A16", lambda: qkernels.matmul(X16, qw4, "A16"), InvalidArgumentError, r"mode"),
        ("mode None", lambda: qkernels.matmul(X16, qw4, None), InvalidArgumentError, r"mode"),
        ("kernel unknown", lambda: qkernels.matmul(X16, qw4, kernel="no_such_kernel"), InvalidArgumentError,
         r"kernel"),
        ("4-bit zp 8", lambda: qkernels.matmul(X16, qkernels.QuantizedWeight(*_raw(4, 8), 4, G, (N, K))),
         InvalidArgumentError, r"zero_points"),
        ("4-bit zp -9", lambda: qkernels.matmul(X16, qkernels.QuantizedWeight(*_raw(4, -9), 4, G, (N, K)), "a8"),
         InvalidArgumentError, r"zero_points"),
        ("quantized_matmul M=0", lambda: qkernels.quantized_matmul(np.zeros((0, K), np.float16), *_raw(4, 0), bits=4,
                                                                   group_size=G), InvalidArgumentError, r"\bM\b|\bx\b"),
        ("quantized_matmul bits", lambda: qkernels.quantized_matmul(X16, *_raw(8, 0), bits=5, group_size=G),
         InvalidArgumentError, r"bits"),
        ("quantized_matmul odd K", lambda: qkernels.quantized_matmul(
            np.zeros((2, 63), np.float16), *_raw(4, 0, shape=(N, 62), group=62), bits=4, group_size=63),
         InvalidArgumentError, r"\bK\b|weights"),
        ("quantized_matmul float64", lambda: qkernels.quantized_matmul(np.zeros((2, K)), *_raw(4, 0), bits=4,
                                                                       group_size=G), DtypeError, r"\bx\b"),
        ("quantized_matmul zp 8", lambda: qkernels.quantized_matmul(X16, *_raw(4, 8), bits=4, group_size=G),
         InvalidArgumentError, r"zero_points"),
        ("quantized_matmul mode", lambda: qkernels.quantized_matmul(X16, *_raw(4, 0), bits=4, group_size=G,
                                                                    mode="int8"), InvalidArgumentError, r"mode"),
        ("quantized_matmul bias", lambda: qkernels.quantized_matmul(X16, *_raw(4, 0), bits=4, group_size=G,
                                                                    bias=np.zeros(3, np.float32)),
         InvalidArgumentError, r"bias"),
        ("select mode", lambda: qkernels.select(X16, qw4, "a12"), InvalidArgumentError, r"mode"),
        ("select backend", lambda: qkernels.select(X16, qw4, backend="gpu"), InvalidArgumentError, r"backend"),
        ("select kernel", lambda: qkernels.select(X16, qw4, kernel="gpu"), InvalidArgumentError, r"kernel"),
        ("dequantize zp 8", lambda: qkernels.dequantize(qkernels.QuantizedWeight(*_raw(4, 8), 4, G, (N, K))),
         InvalidArgumentError, r"zero_points"),
    ]
    for k in AVAILABLE_KERNELS:
        other = "a8" if k.mode == "a16" else "a16"
        cases.append((f"kernel {k.name} in {other}", lambda k=k, other=other: qkernels.matmul(X16, qw4, other, kernel=k.name),
                      UnsupportedError, re.escape(k.name)))
        wrong = next((b.name for b in BACKENDS if b.name != k.backend), None)
        if wrong is None:
            continue
        cases.append((f"kernel {k.name} with backend {wrong}",
                      lambda k=k, wrong=wrong: qkernels.matmul(X16, qw4, k.mode, backend=wrong, kernel=k.name),
                      InvalidArgumentError, re.escape(k.name)))
    for k in AVAILABLE_KERNELS:
        if k.max_group_size and "float16" in k.dtypes and 4 in k.bits:
            big = 2 * k.max_group_size
            cases.append((f"kernel {k.name} G > {k.max_group_size}", lambda k=k, big=big: qkernels.matmul(
                np.zeros((1, big), np.float16), qkernels.QuantizedWeight(*_raw(4, 0, shape=(N, big), group=big), 4, big,
                                                                         (N, big)), k.mode, kernel=k.name),
                UnsupportedError, re.escape(k.name)))
    for k in KERNELS:
        if not k.available:
            cases.append((f"kernel {k.name} unavailable",
                          lambda k=k: qkernels.matmul(X16, qw4, k.mode, kernel=k.name), BackendUnavailableError,
                          re.escape(k.backend)))
    return cases


MATMUL_CASES = _matmul_cases()


@pytest.mark.parametrize("fn, cls, pattern", [c[1:] for c in MATMUL_CASES], ids=[c[0] for c in MATMUL_CASES])
def test_matmul_errors(fn, cls, pattern):
    _raises(cls, pattern, fn)


def test_weights_with_no_rows():
    data, scales, zp = _raw(8, 0, shape=(0, K))
    qw = qkernels.QuantizedWeight(data, scales, zp, 8, G, (0, K))
    _raises(InvalidArgumentError, r"\bN\b", qkernels.matmul, X16, qw)
    _raises(InvalidArgumentError, r"\bN\b", qkernels.dequantize, qw)
    _raises(InvalidArgumentError, r"\bN\b", qkernels.quantized_matmul, X16, data, scales, zp, bits=8, group_size=G)


def test_numpy_integer_sizes_are_accepted():
    """Group sizes and bit widths computed with NumPy (np.int64) are sizes like any other."""
    data, scales, zp = _raw(4, 0)
    for group in (np.int64(G), np.int32(G)):
        qw = qkernels.QuantizedWeight(data, scales, zp, np.int64(4), group, (np.int64(N), np.int64(K)))
        qkernels.matmul(X16, qw)
        qkernels.quantized_matmul(X16, data, scales, zp, bits=np.int64(4), group_size=group)
        qkernels.quantize_weights(W32, bits=np.int64(4), group_size=group)


def test_matmul_torch_dtype_errors():
    torch = pytest.importorskip("torch")
    qw = _qw()
    _raises(DtypeError, r"\bx\b", qkernels.matmul, torch.zeros(2, K, dtype=torch.float64), qw)
    _raises(DtypeError, r"\bx\b", qkernels.matmul, torch.zeros(2, K, dtype=torch.int8), qw)
    _raises(InvalidArgumentError, r"bias", qkernels.matmul, torch.zeros(2, K), qw, bias=torch.zeros(N + 1))


@pytest.mark.parametrize("dtype", ["float64", "int8", "int32", "bf16"])
def test_dequantize_unsupported_output_dtype(dtype):
    """An output dtype that is not float32 / float16 / bfloat16 is refused, naming `dtype`
    (DtypeError is what the C layer's QK_ERR_INVALID_DTYPE maps to; InvalidArgumentError is
    accepted for a value that is not a dtype name at all)."""
    with pytest.raises((DtypeError, InvalidArgumentError), match="dtype"):
        qkernels.dequantize(_qw(), dtype)


def test_nonfinite_activations_are_not_an_error():
    """NaN / Inf activations are computed (section 3), never refused."""
    x = X16.copy()
    x[0, 0] = np.nan
    for mode in ("a16", "a8"):
        y = qkernels.matmul(x, _qw(), mode)
        assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


# ---------------------------------------------------------------- argument types and ranges, before any work


@pytest.mark.parametrize("not_weights", [W32, [[0.0] * K] * N, None, "qw"], ids=["ndarray", "list", "None", "str"])
def test_a_non_quantized_weight_is_a_typed_error(not_weights):
    """matmul, select and dequantize name `qw` and the type they need (was AttributeError)."""
    for fn in (lambda: qkernels.matmul(X16, not_weights), lambda: qkernels.select(X16, not_weights),
               lambda: qkernels.dequantize(not_weights)):
        error = _raises(DtypeError, r"\bqw\b", fn)
        assert "QuantizedWeight" in str(error)


BAD_BITS = [-4, 2**31, 4.0, 8.0, True, "4", None, np.float32(4)]


@pytest.mark.parametrize("bits", BAD_BITS, ids=repr)
def test_bad_bits_are_refused_before_any_allocation(bits):
    """bits=-4 was a bare ValueError from NumPy, bits=2**31 a MemoryError after asking for 4 TiB,
    bits=4.0 a TypeError: each is an InvalidArgumentError naming bits, raised before allocating."""
    _raises(InvalidArgumentError, r"\bbits\b", qkernels.quantize_weights, W32, bits=bits, group_size=G)
    _raises(InvalidArgumentError, r"\bbits\b", qkernels.QuantizedWeight, *_raw(4, 0), bits, G, (N, K))
    _raises(InvalidArgumentError, r"\bbits\b", qkernels.quantized_matmul, X16, *_raw(4, 0), bits=bits, group_size=G)


@pytest.mark.parametrize("group", [True, False, 32.0], ids=repr)
def test_group_size_must_be_an_integer_not_a_bool(group):
    """group_size=True was taken for 1."""
    _raises(InvalidArgumentError, r"group_size", qkernels.quantize_weights, W32, bits=4, group_size=group)
    data, scales, _ = _raw(4, shape=(N, K), group=1)
    _raises(InvalidArgumentError, r"group_size", qkernels.QuantizedWeight, data, scales, None, 4, group, (N, K))


def test_sizes_beyond_int32_are_typed_errors():
    """K = 2^31 (or N) reached cffi as an OverflowError; now InvalidArgumentError names the size."""
    big = 2**31
    # 1 GiB of zero pages, never touched: the canonical arrays of a [1, 2^31] 4-bit weight.
    data, scales = np.zeros((1, big // 2), np.int8), np.ones((1, 2), np.float32)
    _raises(InvalidArgumentError, r"\bK\b", qkernels.QuantizedWeight, data, scales, None, 4, big // 2, (1, big))
    _raises(InvalidArgumentError, r"\bK\b", qkernels.QuantizedWeight, *_raw(4, 0), 4, G, (N, 2**40))
    _raises(InvalidArgumentError, r"\bN\b", qkernels.QuantizedWeight, *_raw(4, 0), 4, G, (big, K))
    _raises(InvalidArgumentError, r"\bN\b", qkernels.QuantizedWeight, *_raw(4, 0), 4, G, (-1, K))
    # A bool is not a size either (True was 1).
    data, scales, zp = _raw(4, 0, shape=(1, K))
    _raises(InvalidArgumentError, r"\bN\b", qkernels.QuantizedWeight, data, scales, zp, 4, G, (True, K))


@pytest.mark.parametrize("threads", [2**31, -(2**31) - 1, 2**64])
def test_set_num_threads_beyond_int32(threads):
    before = qkernels.get_num_threads()
    _raises(InvalidArgumentError, r"\bthreads\b", qkernels.set_num_threads, threads)
    assert qkernels.get_num_threads() == before


def test_set_num_threads_takes_any_integer():
    before = qkernels.get_num_threads()
    try:
        qkernels.set_num_threads(np.int64(1))
        assert qkernels.get_num_threads() == 1
        _raises(InvalidArgumentError, r"\bthreads\b", qkernels.set_num_threads, 1.0)
        _raises(InvalidArgumentError, r"\bthreads\b", qkernels.set_num_threads, True)
    finally:
        qkernels.set_num_threads(0)
    assert qkernels.get_num_threads() == before


def test_empty_backend_or_kernel_name_is_not_automatic():
    """backend="" and kernel="" meant automatic; only None (and "auto" for backend) do."""
    qw = _qw()
    data, scales, zp = _raw(4, 0)
    for fn in (qkernels.matmul, qkernels.select):
        _raises(InvalidArgumentError, r"\bbackend\b", fn, X16, qw, backend="")
        _raises(InvalidArgumentError, r"\bkernel\b", fn, X16, qw, kernel="")
        _raises(InvalidArgumentError, r"\bkernel\b", fn, X16, qw, kernel=b"x")
    _raises(InvalidArgumentError, r"\bbackend\b", qkernels.quantized_matmul, X16, data, scales, zp, bits=4,
            group_size=G, backend="")
    _raises(InvalidArgumentError, r"\bkernel\b", qkernels.quantized_matmul, X16, data, scales, zp, bits=4,
            group_size=G, kernel="")
    _raises(InvalidArgumentError, r"\bbackend\b", lambda: qkernels.use_backend("").__enter__())
    automatic = qkernels.matmul(X16, qw)
    assert np.array_equal(qkernels.matmul(X16, qw, backend="auto"), automatic)
    assert np.array_equal(qkernels.matmul(X16, qw, backend=None, kernel=None), automatic)


BAD_BIASES = [
    ("int64", np.arange(N)),
    ("int8", np.zeros(N, np.int8)),
    ("bool", np.zeros(N, bool)),
    ("complex", np.ones(N, np.complex64)),
    ("str", "abcde"),
    ("str array", np.array(list("abcde"))),
    ("list", [0.0] * N),
    ("scalar", 1.0),
]


@pytest.mark.parametrize("bias", [b for _, b in BAD_BIASES], ids=[name for name, _ in BAD_BIASES])
def test_bias_must_be_a_float_array(bias):
    """An integer or complex bias was cast silently, a string one a bare ValueError."""
    _raises(DtypeError, r"\bbias\b", qkernels.matmul, X16, _qw(), bias=bias)
    _raises(DtypeError, r"\bbias\b", qkernels.quantized_matmul, X16, *_raw(4, 0), bits=4, group_size=G, bias=bias)


def test_float_biases_of_every_width_are_accepted():
    qw, bias = _qw(), np.linspace(-1, 1, N).astype(np.float32)
    expected = qkernels.matmul(X16, qw, bias=bias)
    for dtype in (np.float16, np.float64):
        exact = bias.astype(dtype).astype(np.float32)
        assert np.array_equal(qkernels.matmul(X16, qw, bias=bias.astype(dtype)), qkernels.matmul(X16, qw, bias=exact))
    assert np.array_equal(qkernels.matmul(X16, qw, bias=bias.astype(np.float64)), expected)


def test_torch_bias_dtypes():
    torch = pytest.importorskip("torch")
    qw, x = _qw(), torch.from_numpy(X16.astype(np.float32))
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        _raises(DtypeError, r"\bbias\b", qkernels.matmul, x, qw, bias=torch.zeros(N, dtype=dtype))
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        bias = torch.linspace(-1, 1, N).to(dtype)
        assert torch.equal(qkernels.matmul(x, qw, bias=bias), qkernels.matmul(x, qw, bias=bias.float()))


def test_an_activation_of_the_wrong_width_is_blamed_on_x():
    """quantized_matmul took K from x and blamed the weights (or the group size) for the mismatch."""
    data, scales, zp = _raw(4, 0)
    for width in (K - 2, K + 2, 2 * K):
        x = np.zeros((2, width), np.float16)
        pattern = rf"\bx\b.*last dimension.*\bK={K}\b.*weights"
        _raises(InvalidArgumentError, pattern, qkernels.quantized_matmul, x, data, scales, zp, bits=4, group_size=G)
        _raises(InvalidArgumentError, pattern, qkernels.matmul, x, _qw())


# ---------------------------------------------------------------- C API: nothing written on failure

POISON = 0xA5


class Guarded:
    """`nbytes` of output in the middle of a larger poisoned block, at `offset` bytes past a
    64-byte boundary (an odd offset misaligns it)."""

    def __init__(self, nbytes: int, offset: int = 0, guard: int = 256):
        self.block = np.full(nbytes + 2 * guard + 128, POISON, np.uint8)
        base = self.block.ctypes.data
        self.start = (-base) % 64 + guard + offset
        self.nbytes = nbytes
        self.address = base + self.start

    def ptr(self, ctype: str = "void *"):
        return ffi.cast(ctype, self.address)

    def sized(self, struct: str):
        """A pointer to an output struct whose leading size field is set, as callers must."""
        self.block[self.start:self.start + 4] = np.frombuffer(np.uint32(ffi.sizeof(struct)).tobytes(), np.uint8)
        self.size_field = slice(self.start, self.start + 4)
        return self.ptr(struct + " *")

    def untouched(self) -> bool:
        poisoned = self.block == POISON
        if hasattr(self, "size_field"):
            poisoned[self.size_field] = True
        return bool(poisoned.all())

    def guards_intact(self) -> bool:
        return bool((self.block[: self.start] == POISON).all() and (self.block[self.start + self.nbytes:] == POISON).all())


def _misaligned_copy(array: np.ndarray, offset: int):
    """A copy of `array`'s bytes at `offset` past a 64-byte boundary, and the owner to keep."""
    raw = np.ascontiguousarray(array).view(np.uint8).ravel()
    owner = np.zeros(raw.size + 128, np.uint8)
    start = (-owner.ctypes.data) % 64 + offset
    owner[start:start + raw.size] = raw
    return owner, owner.ctypes.data + start


ELEMENT = {lib.QK_DTYPE_F32: 4, lib.QK_DTYPE_F16: 2, lib.QK_DTYPE_BF16: 2}


class MatmulCall:
    """A valid qk_matmul / quantizedMatMul / qk_matmul_packed call whose pieces a case can break."""

    M, N, K, G = 3, 5, 64, 32

    def __init__(self, bits=4, dtype=lib.QK_DTYPE_F16, mode=lib.QK_MODE_A16, out_offset=0):
        rng = np.random.default_rng(1)
        self.bits = bits
        self.x = rng.standard_normal((self.M, self.K)).astype(np.float16 if dtype != lib.QK_DTYPE_F32 else np.float32)
        if dtype == lib.QK_DTYPE_BF16:
            self.x = (rng.integers(0x3F00, 0x4000, (self.M, self.K))).astype(np.uint16)
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        q = rng.integers(qmin, qmax + 1, (self.N, self.K))
        self.data = q.astype(np.int8) if bits == 8 else pack4(q)
        self.scales = rng.uniform(0.1, 1, (self.N, self.K // self.G)).astype(np.float32)
        self.zp = rng.integers(qmin, qmax + 1, (self.N, self.K // self.G)).astype(np.int8)
        self.bias = rng.standard_normal(self.N).astype(np.float32)
        self.out = Guarded(self.M * self.N * ELEMENT[dtype], out_offset)
        self.keep = []
        self.w = new_struct("qk_weights")
        self.w.data = ffi.cast("int8_t *", self.data.ctypes.data)
        self.w.scales = ffi.cast("float *", self.scales.ctypes.data)
        self.w.zero_points = ffi.cast("int8_t *", self.zp.ctypes.data)
        self.w.N, self.w.K, self.w.group_size, self.w.bits = self.N, self.K, self.G, bits
        self.a = new_struct("qk_matmul_args")
        self.a.input = ffi.cast("void *", self.x.ctypes.data)
        self.a.output = self.out.ptr()
        self.a.bias = ffi.cast("float *", self.bias.ctypes.data)
        self.a.M, self.a.input_dtype, self.a.mode = self.M, dtype, mode
        self.a.backend, self.a.kernel, self.a.stream = lib.QK_BACKEND_AUTO, ffi.NULL, ffi.NULL
        self.wp, self.ap = self.w, self.a

    # helpers for the cases
    def misalign(self, field: str, offset: int):
        source = {"input": self.x, "bias": self.bias, "scales": self.scales}[field]
        owner, address = _misaligned_copy(source, offset)
        self.keep.append(owner)
        if field == "scales":
            self.w.scales = ffi.cast("float *", address)
        elif field == "bias":
            self.a.bias = ffi.cast("float *", address)
        else:
            self.a.input = ffi.cast("void *", address)

    def set_kernel(self, name: str):
        self.keep.append(ffi.new("char[]", name.encode()))
        self.a.kernel = self.keep[-1]

    def set_zero_point(self, value: int):
        self.zp[1, 1] = value

    def run(self):
        return lib.qk_matmul(self.wp, self.ap)

    def run_entry_point(self):
        w, a = self.w, self.a
        lib.quantizedMatMul(a.input, w.data, w.scales, w.zero_points, a.output, a.M, w.N, w.K, w.group_size, w.bits)
        return lib.qk_last_status()


def _other_mode_kernel(mode):
    name = {lib.QK_MODE_A16: "a16", lib.QK_MODE_A8: "a8"}[mode]
    return next((k for k in AVAILABLE_KERNELS if k.mode != name), None)


def _matmul_c_cases():
    """(id, mutation, status, words the message must contain)."""
    S = lib
    cases = [
        ("weights NULL", lambda c: setattr(c, "wp", ffi.NULL), S.QK_ERR_NULL_POINTER, "weights"),
        ("weights->data NULL", lambda c: setattr(c.w, "data", ffi.NULL), S.QK_ERR_NULL_POINTER, "weights->data"),
        ("weights->scales NULL", lambda c: setattr(c.w, "scales", ffi.NULL), S.QK_ERR_NULL_POINTER, "scales"),
        ("args NULL", lambda c: setattr(c, "ap", ffi.NULL), S.QK_ERR_NULL_POINTER, "args"),
        ("input NULL", lambda c: setattr(c.a, "input", ffi.NULL), S.QK_ERR_NULL_POINTER, "input"),
        ("output NULL", lambda c: setattr(c.a, "output", ffi.NULL), S.QK_ERR_NULL_POINTER, "output"),
        ("M=0", lambda c: setattr(c.a, "M", 0), S.QK_ERR_INVALID_SIZE, "M"),
        ("M=-1", lambda c: setattr(c.a, "M", -1), S.QK_ERR_INVALID_SIZE, "M"),
        ("N=0", lambda c: setattr(c.w, "N", 0), S.QK_ERR_INVALID_SIZE, "N"),
        ("N=-5", lambda c: setattr(c.w, "N", -5), S.QK_ERR_INVALID_SIZE, "N"),
        ("K=0", lambda c: setattr(c.w, "K", 0), S.QK_ERR_INVALID_SIZE, "K"),
        ("K=-64", lambda c: setattr(c.w, "K", -64), S.QK_ERR_INVALID_SIZE, "K"),
        ("G=0", lambda c: setattr(c.w, "group_size", 0), S.QK_ERR_INVALID_GROUP, "group_size"),
        ("G=-32", lambda c: setattr(c.w, "group_size", -32), S.QK_ERR_INVALID_GROUP, "group_size"),
        ("odd K 4-bit", lambda c: (setattr(c.w, "K", 63), setattr(c.w, "group_size", 63)), S.QK_ERR_ODD_K, "K"),
        ("bits=0", lambda c: setattr(c.w, "bits", 0), S.QK_ERR_INVALID_BITS, "bits"),
        ("bits=3", lambda c: setattr(c.w, "bits", 3), S.QK_ERR_INVALID_BITS, "bits"),
        ("bits=16", lambda c: setattr(c.w, "bits", 16), S.QK_ERR_INVALID_BITS, "bits"),
        ("input_dtype=3", lambda c: setattr(c.a, "input_dtype", 3), S.QK_ERR_INVALID_DTYPE, "input_dtype"),
        ("input_dtype=77", lambda c: setattr(c.a, "input_dtype", 77), S.QK_ERR_INVALID_DTYPE, "input_dtype"),
        ("mode=2", lambda c: setattr(c.a, "mode", 2), S.QK_ERR_INVALID_ARGUMENT, "mode"),
        ("backend=COUNT", lambda c: setattr(c.a, "backend", (lib.qk_backend_count() + 1)), S.QK_ERR_INVALID_ARGUMENT, "backend"),
        ("backend=99", lambda c: setattr(c.a, "backend", 99), S.QK_ERR_INVALID_ARGUMENT, "backend"),
        ("kernel unknown", lambda c: c.set_kernel("no_such_kernel"), S.QK_ERR_INVALID_ARGUMENT, "kernel"),
        ("input misaligned", lambda c: c.misalign("input", 1), S.QK_ERR_MISALIGNED, "input"),
        ("bias misaligned", lambda c: c.misalign("bias", 2), S.QK_ERR_MISALIGNED, "bias"),
        ("scales misaligned", lambda c: c.misalign("scales", 2), S.QK_ERR_MISALIGNED, "scales"),
        ("4-bit zp=8", lambda c: c.set_zero_point(8), S.QK_ERR_INVALID_ARGUMENT, "zero_points"),
        ("4-bit zp=-9", lambda c: c.set_zero_point(-9), S.QK_ERR_INVALID_ARGUMENT, "zero_points"),
        ("4-bit zp=127", lambda c: c.set_zero_point(127), S.QK_ERR_INVALID_ARGUMENT, "zero_points"),
    ]
    for b in BACKENDS:
        if not b.available:
            cases.append((f"backend {b.name} unavailable", lambda c, b=b: setattr(c.a, "backend", b.code),
                          S.QK_ERR_BACKEND_UNAVAILABLE, b.name))
    k = _other_mode_kernel(lib.QK_MODE_A16)
    if k is not None:
        cases.append((f"kernel {k.name} in a16", lambda c, k=k: c.set_kernel(k.name), S.QK_ERR_UNSUPPORTED, k.name))
    for k in AVAILABLE_KERNELS:
        wrong = next((b for b in BACKENDS if b.name != k.backend), None)
        if wrong is None:
            continue
        cases.append((f"kernel {k.name} with backend {wrong.name}",
                      lambda c, k=k, wrong=wrong: (c.set_kernel(k.name), setattr(c.a, "backend", wrong.code)),
                      S.QK_ERR_INVALID_ARGUMENT, k.name))
    return cases


MATMUL_C_CASES = _matmul_c_cases()


def _check_failure(status, expected, words, *buffers):
    message = _last_error()
    assert status == expected, f"status {status} ({message!r}), expected {expected}"
    assert lib.qk_last_status() == expected
    assert words in message, f"message {message!r} does not name {words!r}"
    for buffer in buffers:
        assert buffer.untouched(), "a failing call wrote to its output"


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in MATMUL_C_CASES], ids=[c[0] for c in MATMUL_C_CASES])
def test_qk_matmul_fails_without_writing(mutate, status, words):
    call = MatmulCall()
    assert call.run() == lib.QK_OK, _last_error()  # the unbroken call works ...
    assert call.out.guards_intact() and not call.out.untouched()  # ... and writes only its output
    call = MatmulCall()
    mutate(call)
    _check_failure(call.run(), status, words, call.out)


@pytest.mark.parametrize("dtype, offset", [(lib.QK_DTYPE_F32, 2), (lib.QK_DTYPE_F32, 1), (lib.QK_DTYPE_F16, 1),
                                           (lib.QK_DTYPE_BF16, 1)])
def test_qk_matmul_misaligned_output(dtype, offset):
    call = MatmulCall(dtype=dtype, out_offset=offset)
    _check_failure(call.run(), lib.QK_ERR_MISALIGNED, "output", call.out)
    call = MatmulCall(dtype=dtype, out_offset=ELEMENT[dtype])  # aligned to its element: fine
    assert call.run() == lib.QK_OK and call.out.guards_intact()


@pytest.mark.parametrize("env, status, words", [("no_such_backend", lib.QK_ERR_INVALID_ARGUMENT, "QKERNELS_BACKEND")]
                         + [(b.name, lib.QK_ERR_BACKEND_UNAVAILABLE, b.name) for b in BACKENDS if not b.available])
def test_qk_matmul_environment_backend(env, status, words, monkeypatch):
    monkeypatch.setenv("QKERNELS_BACKEND", env)
    call = MatmulCall()
    _check_failure(call.run(), status, words, call.out)
    call = MatmulCall()
    _check_failure(call.run_entry_point(), status, words, call.out)
    # A forced backend in the arguments outranks the environment.
    call = MatmulCall()
    call.a.backend = dispatch.backend_code("ref")
    assert call.run() == lib.QK_OK, _last_error()


ENTRY_POINT_CASES = [c for c in MATMUL_C_CASES if not any(
    word in c[0] for word in ("args", "dtype", "mode", "backend", "kernel", "bias"))]
# quantizedMatMul's messages name its parameters, not the struct fields qk_matmul's name.
ENTRY_POINT_NAMES = {"args->input": "input", "args->output": "output", "weights->data": "weights",
                     "weights->scales": "scales", "weights->zero_points": "zeroPoints", "zero_points": "zeroPoints",
                     "group_size": "groupSize"}


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in ENTRY_POINT_CASES],
                         ids=[c[0] for c in ENTRY_POINT_CASES])
def test_quantizedMatMul_fails_without_writing(mutate, status, words):
    call = MatmulCall()
    assert call.run_entry_point() == lib.QK_OK and _last_error() == ""
    call = MatmulCall()
    mutate(call)
    if call.wp == ffi.NULL:  # the entry point takes the arrays, not a struct: NULL weights data instead
        call.w.data = ffi.NULL
    words = ENTRY_POINT_NAMES.get(words, words) if call.wp != ffi.NULL else "weights"
    _check_failure(call.run_entry_point(), status, words, call.out)
    assert "->" not in _last_error()


@pytest.mark.parametrize("G", [48, 128])
def test_quantizedMatMul_needs_groups_that_divide_K(G):
    """Format v2's shorter last group is for the qk_ API: the planned entry point keeps its contract."""
    call = MatmulCall()
    call.w.group_size = G
    _check_failure(call.run_entry_point(), lib.QK_ERR_INVALID_GROUP, "groupSize", call.out)
    assert lib.qk_matmul(call.w, call.a) == lib.QK_OK, _last_error()


def test_quantizedMatMul_misaligned_output():
    call = MatmulCall(out_offset=1)
    _check_failure(call.run_entry_point(), lib.QK_ERR_MISALIGNED, "output", call.out)


def _packed(call):
    handle = ffi.new("qk_packed_weights **")
    assert lib.qk_pack_weights(call.w, lib.QK_BACKEND_AUTO, handle) == lib.QK_OK, _last_error()
    return ffi.gc(handle[0], lib.qk_packed_weights_free)


PACKED_CASES = [c for c in MATMUL_C_CASES if c[0].startswith(("args", "input", "output", "M=", "input_dtype", "mode",
                                                              "backend=", "kernel unknown", "bias"))]


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in PACKED_CASES], ids=[c[0] for c in PACKED_CASES])
def test_qk_matmul_packed_fails_without_writing(mutate, status, words):
    call = MatmulCall()
    packed = _packed(call)
    assert lib.qk_matmul_packed(packed, call.a) == lib.QK_OK
    call = MatmulCall()
    packed = _packed(call)
    mutate(call)
    _check_failure(lib.qk_matmul_packed(packed, call.ap), status, words, call.out)


def test_qk_matmul_packed_more_failures(monkeypatch):
    call = MatmulCall()
    _check_failure(lib.qk_matmul_packed(ffi.NULL, call.a), lib.QK_ERR_NULL_POINTER, "packed", call.out)
    packed = _packed(call)
    fixed = lib.qk_packed_backend(packed)
    other = next((b for b in BACKENDS if b.code != fixed), None)
    if other is not None:
        call.a.backend = other.code  # the handle fixes the backend: another one is a contradiction
        _check_failure(lib.qk_matmul_packed(packed, call.a), lib.QK_ERR_INVALID_ARGUMENT, "backend", call.out)
    call = MatmulCall()
    call.misalign("bias", 2)
    _check_failure(lib.qk_matmul_packed(_packed(call), call.a), lib.QK_ERR_MISALIGNED, "bias", call.out)
    call = MatmulCall(out_offset=1)
    _check_failure(lib.qk_matmul_packed(_packed(call), call.a), lib.QK_ERR_MISALIGNED, "output", call.out)
    k = _other_mode_kernel(lib.QK_MODE_A16)
    if k is not None:
        call = MatmulCall()
        call.set_kernel(k.name)
        _check_failure(lib.qk_matmul_packed(_packed(call), call.a), lib.QK_ERR_UNSUPPORTED, k.name, call.out)
    # The environment does not move packed weights to another backend.
    if UNAVAILABLE:
        call = MatmulCall()
        packed = _packed(call)
        monkeypatch.setenv("QKERNELS_BACKEND", UNAVAILABLE[0])
        assert lib.qk_matmul_packed(packed, call.a) == lib.QK_OK, _last_error()


SENTINEL = 0xDEADBEE0


def _pack_cases():
    S = lib
    cases = [c for c in MATMUL_C_CASES if c[0].startswith(("weights", "N=", "K=", "G=", "odd K", "bits=", "scales",
                                                           "4-bit zp"))]
    cases = [(name, mutate, status, words, S.QK_BACKEND_AUTO) for name, mutate, status, words in cases]
    cases.append(("backend=99", lambda c: None, S.QK_ERR_INVALID_ARGUMENT, "backend", 99))
    cases.append(("backend=COUNT", lambda c: None, S.QK_ERR_INVALID_ARGUMENT, "backend", (lib.qk_backend_count() + 1)))
    for b in BACKENDS:
        if not b.available:
            cases.append((f"backend {b.name} unavailable", lambda c: None, S.QK_ERR_BACKEND_UNAVAILABLE, b.name, b.code))
    return cases


PACK_CASES = _pack_cases()


@pytest.mark.parametrize("mutate, status, words, backend", [c[1:] for c in PACK_CASES], ids=[c[0] for c in PACK_CASES])
def test_qk_pack_weights_fails_without_writing(mutate, status, words, backend):
    call = MatmulCall()
    mutate(call)
    out = ffi.new("qk_packed_weights **", ffi.cast("qk_packed_weights *", SENTINEL))
    _check_failure(lib.qk_pack_weights(call.wp, backend, out), status, words)
    assert int(ffi.cast("uintptr_t", out[0])) == SENTINEL, "a failing qk_pack_weights wrote its handle"


def test_qk_pack_weights_null_out_and_environment(monkeypatch):
    call = MatmulCall()
    _check_failure(lib.qk_pack_weights(call.w, lib.QK_BACKEND_AUTO, ffi.NULL), lib.QK_ERR_NULL_POINTER, "out")
    envs = [("no_such_backend", lib.QK_ERR_INVALID_ARGUMENT, "QKERNELS_BACKEND")]
    envs += [(b.name, lib.QK_ERR_BACKEND_UNAVAILABLE, b.name) for b in BACKENDS if not b.available]
    for env, status, words in envs:
        monkeypatch.setenv("QKERNELS_BACKEND", env)
        out = ffi.new("qk_packed_weights **", ffi.cast("qk_packed_weights *", SENTINEL))
        _check_failure(lib.qk_pack_weights(call.w, lib.QK_BACKEND_AUTO, out), status, words)
        assert int(ffi.cast("uintptr_t", out[0])) == SENTINEL


SELECT_CASES = [c for c in MATMUL_C_CASES if not c[0].startswith("4-bit zp")]  # selection does not scan zero points


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in SELECT_CASES], ids=[c[0] for c in SELECT_CASES])
def test_qk_select_kernel_fails_without_writing(mutate, status, words):
    call = MatmulCall()
    mutate(call)
    info = Guarded(ffi.sizeof("qk_kernel_info"))
    _check_failure(lib.qk_select_kernel(call.wp, call.ap, info.sized("qk_kernel_info")), status, words, info)
    assert call.out.untouched()


def test_qk_select_kernel_null_out():
    call = MatmulCall()
    _check_failure(lib.qk_select_kernel(call.w, call.a, ffi.NULL), lib.QK_ERR_NULL_POINTER, "out")


def test_enumeration_errors_write_nothing():
    info = Guarded(ffi.sizeof("qk_kernel_info"))
    for index in (-1, lib.qk_kernel_count(), 10**6):
        _check_failure(lib.qk_kernel_get(index, info.sized("qk_kernel_info")), lib.QK_ERR_INVALID_ARGUMENT, "index",
                       info)
    binfo = Guarded(ffi.sizeof("qk_backend_info"))
    for code in (lib.QK_BACKEND_AUTO, lib.qk_backend_count() + 1, 99):
        _check_failure(lib.qk_backend_get(code, binfo.sized("qk_backend_info")), lib.QK_ERR_INVALID_ARGUMENT,
                       "backend", binfo)
    _check_failure(lib.qk_kernel_get(0, ffi.NULL), lib.QK_ERR_NULL_POINTER, "out")
    _check_failure(lib.qk_backend_get(dispatch.backend_code("ref"), ffi.NULL), lib.QK_ERR_NULL_POINTER, "out")
    assert lib.qk_kernel_get(0, info.sized("qk_kernel_info")) == lib.QK_OK and _last_error() == ""


class QuantizeCall:
    """A valid qk_quantize call (asymmetric per-group by default) with guarded outputs."""

    def __init__(self, N=4, K=64, bits=4, granularity=lib.QK_PER_GROUP, G=32, symmetric=0,
                 dtype=lib.QK_DTYPE_F32):
        rng = np.random.default_rng(2)
        self.x = rng.standard_normal((N, K)).astype(np.float32 if dtype == lib.QK_DTYPE_F32 else np.float16)
        self.N, self.K, self.bits, self.gran, self.G, self.sym, self.dtype = N, K, bits, granularity, G, symmetric, dtype
        groups = N * (K // (G if granularity == lib.QK_PER_GROUP else K))
        self.q = Guarded(N * K * bits // 8)
        self.scales = Guarded(4 * groups)
        self.zp = Guarded(groups)
        self.input = ffi.cast("void *", self.x.ctypes.data)
        self.q_ptr, self.s_ptr = self.q.ptr("int8_t *"), self.scales.ptr("float *")
        self.zp_ptr = ffi.NULL if symmetric else self.zp.ptr("int8_t *")
        self.keep = []

    def set_input(self, values):
        self.x = np.ascontiguousarray(values)
        self.input = ffi.cast("void *", self.x.ctypes.data)

    def misalign_input(self, offset):
        owner, address = _misaligned_copy(self.x, offset)
        self.keep.append(owner)
        self.input = ffi.cast("void *", address)

    def run(self):
        return lib.qk_quantize(self.input, self.dtype, self.N, self.K, self.bits, self.gran, self.G, self.sym,
                               self.q_ptr, self.s_ptr, self.zp_ptr)

    def outputs(self):
        return self.q, self.scales, self.zp


def _with_element(c, index, value):
    x = c.x.copy()
    x.flat[index] = value
    c.set_input(x)


QUANTIZE_C_CASES = [
    ("input NULL", lambda c: setattr(c, "input", ffi.NULL), lib.QK_ERR_NULL_POINTER, "input"),
    ("q NULL", lambda c: setattr(c, "q_ptr", ffi.NULL), lib.QK_ERR_NULL_POINTER, "q"),
    ("scales NULL", lambda c: setattr(c, "s_ptr", ffi.NULL), lib.QK_ERR_NULL_POINTER, "scales"),
    ("asymmetric zero_points NULL", lambda c: setattr(c, "zp_ptr", ffi.NULL), lib.QK_ERR_NULL_POINTER, "zero_points"),
    ("symmetric with zero_points", lambda c: setattr(c, "sym", 1), lib.QK_ERR_INVALID_ARGUMENT, "zero_points"),
    ("input_dtype=3", lambda c: setattr(c, "dtype", 3), lib.QK_ERR_INVALID_DTYPE, "input_dtype"),
    ("granularity=3", lambda c: setattr(c, "gran", 3), lib.QK_ERR_INVALID_ARGUMENT, "granularity"),
    ("granularity=77", lambda c: setattr(c, "gran", 77), lib.QK_ERR_INVALID_ARGUMENT, "granularity"),
    ("N=0", lambda c: setattr(c, "N", 0), lib.QK_ERR_INVALID_SIZE, "N"),
    ("N=-1", lambda c: setattr(c, "N", -1), lib.QK_ERR_INVALID_SIZE, "N"),
    ("K=0", lambda c: setattr(c, "K", 0), lib.QK_ERR_INVALID_SIZE, "K"),
    ("G=0", lambda c: setattr(c, "G", 0), lib.QK_ERR_INVALID_GROUP, "group_size"),
    ("bits=3", lambda c: setattr(c, "bits", 3), lib.QK_ERR_INVALID_BITS, "bits"),
    ("bits=2", lambda c: setattr(c, "bits", 2), lib.QK_ERR_INVALID_BITS, "bits"),
    ("odd K 4-bit", lambda c: (setattr(c, "K", 63), setattr(c, "G", 63)), lib.QK_ERR_ODD_K, "K"),
    ("odd K 4-bit channel", lambda c: (setattr(c, "K", 63), setattr(c, "gran", lib.QK_PER_CHANNEL)), lib.QK_ERR_ODD_K,
     "K"),
    ("input misaligned", lambda c: c.misalign_input(2), lib.QK_ERR_MISALIGNED, "input"),
    ("input misaligned f16", lambda c: (setattr(c, "dtype", lib.QK_DTYPE_F16), c.set_input(c.x.astype(np.float16)),
                                        c.misalign_input(1)), lib.QK_ERR_MISALIGNED, "input"),
    ("scales misaligned", lambda c: setattr(c, "s_ptr", ffi.cast("float *", c.scales.address + 2)),
     lib.QK_ERR_MISALIGNED, "scales"),
    ("NaN last", lambda c: _with_element(c, -1, np.nan), lib.QK_ERR_NON_FINITE, "input"),
    ("+Inf first", lambda c: _with_element(c, 0, np.inf), lib.QK_ERR_NON_FINITE, "input"),
    ("-Inf middle", lambda c: _with_element(c, 100, -np.inf), lib.QK_ERR_NON_FINITE, "input"),
    ("range overflow", lambda c: (_with_element(c, 70, 3e38), _with_element(c, 71, -3e38)), lib.QK_ERR_NON_FINITE,
     "range"),
]


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in QUANTIZE_C_CASES],
                         ids=[c[0] for c in QUANTIZE_C_CASES])
def test_qk_quantize_fails_without_writing(mutate, status, words):
    call = QuantizeCall()
    assert call.run() == lib.QK_OK and all(b.guards_intact() for b in call.outputs())
    call = QuantizeCall()
    mutate(call)
    if call.sym and call.zp_ptr == ffi.NULL:  # keep "symmetric with zero_points" meaningful
        call.zp_ptr = call.zp.ptr("int8_t *")
    _check_failure(call.run(), status, words, *call.outputs())


@pytest.mark.parametrize("granularity", [lib.QK_PER_TENSOR, lib.QK_PER_CHANNEL, lib.QK_PER_GROUP])
@pytest.mark.parametrize("symmetric", [0, 1])
def test_qk_quantize_nonfinite_anywhere_writes_nothing(granularity, symmetric):
    """The NaN is found before any group is written, wherever it is."""
    for index in (0, 31, 32, 255):
        call = QuantizeCall(granularity=granularity, symmetric=symmetric)
        _with_element(call, index, np.nan)
        _check_failure(call.run(), lib.QK_ERR_NON_FINITE, "input", *call.outputs())


def _dequantize_cases():
    keep = ("weights", "N=", "K=", "G=", "odd K", "bits=", "scales misaligned", "4-bit zp")
    return [c for c in MATMUL_C_CASES if c[0].startswith(keep)]


DEQUANTIZE_C_CASES = _dequantize_cases()


@pytest.mark.parametrize("mutate, status, words", [c[1:] for c in DEQUANTIZE_C_CASES],
                         ids=[c[0] for c in DEQUANTIZE_C_CASES])
def test_qk_dequantize_fails_without_writing(mutate, status, words):
    call = MatmulCall()
    out = Guarded(call.N * call.K * 4)
    assert lib.qk_dequantize(call.w, lib.QK_DTYPE_F32, out.ptr()) == lib.QK_OK and out.guards_intact()
    out = Guarded(call.N * call.K * 4)
    mutate(call)
    _check_failure(lib.qk_dequantize(call.wp, lib.QK_DTYPE_F32, out.ptr()), status, words, out)


def test_qk_dequantize_output_errors():
    call = MatmulCall()
    _check_failure(lib.qk_dequantize(call.w, lib.QK_DTYPE_F32, ffi.NULL), lib.QK_ERR_NULL_POINTER, "output")
    for dtype in (3, 200):
        out = Guarded(call.N * call.K * 4)
        _check_failure(lib.qk_dequantize(call.w, dtype, out.ptr()), lib.QK_ERR_INVALID_DTYPE, "output_dtype", out)
    for dtype, offset in ((lib.QK_DTYPE_F32, 2), (lib.QK_DTYPE_F32, 1), (lib.QK_DTYPE_F16, 1), (lib.QK_DTYPE_BF16, 3)):
        out = Guarded(call.N * call.K * ELEMENT[dtype], offset)
        _check_failure(lib.qk_dequantize(call.w, dtype, out.ptr()), lib.QK_ERR_MISALIGNED, "output", out)


def test_last_error_is_cleared_by_success():
    call = MatmulCall()
    call.a.M = 0
    assert call.run() == lib.QK_ERR_INVALID_SIZE and _last_error()
    call = MatmulCall()
    assert call.run() == lib.QK_OK
    assert lib.qk_last_status() == lib.QK_OK and _last_error() == ""


def test_every_successful_call_clears_the_last_error():
    """qk_last_status / qk_last_error describe the last call on the thread: "" after a success."""
    call = MatmulCall()

    def fail():
        broken = MatmulCall()
        broken.a.M = 0
        assert broken.run() == lib.QK_ERR_INVALID_SIZE and lib.qk_last_status() == lib.QK_ERR_INVALID_SIZE
        assert _last_error()

    quantize = QuantizeCall()
    out = Guarded(call.N * call.K * 4)
    handle = ffi.new("qk_packed_weights **")
    info = new_struct("qk_kernel_info")
    binfo = new_struct("qk_backend_info")
    successes = {
        "qk_matmul": lambda: lib.qk_matmul(call.w, call.a),
        "quantizedMatMul": call.run_entry_point,
        "qk_quantize": quantize.run,
        "qk_dequantize": lambda: lib.qk_dequantize(call.w, lib.QK_DTYPE_F32, out.ptr()),
        "qk_pack_weights": lambda: lib.qk_pack_weights(call.w, lib.QK_BACKEND_AUTO, handle),
        "qk_matmul_packed": lambda: lib.qk_matmul_packed(handle[0], call.a),
        "qk_select_kernel": lambda: lib.qk_select_kernel(call.w, call.a, info),
        "qk_kernel_get": lambda: lib.qk_kernel_get(0, info),
        "qk_backend_get": lambda: lib.qk_backend_get(dispatch.backend_code("ref"), binfo),
    }
    try:
        for name, success in successes.items():
            fail()
            assert success() == lib.QK_OK, name
            assert lib.qk_last_status() == lib.QK_OK, f"{name} succeeded but qk_last_status() still reports the failure"
            assert _last_error() == "", f"{name} succeeded but qk_last_error() is {_last_error()!r}"
    finally:
        if handle[0] != ffi.NULL:
            lib.qk_packed_weights_free(handle[0])


def test_last_error_is_per_thread():
    import threading

    call = MatmulCall()
    call.a.M = 0
    assert call.run() == lib.QK_ERR_INVALID_SIZE
    seen = {}

    def other():
        seen["status"], seen["message"] = lib.qk_last_status(), _last_error()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"status": lib.QK_OK, "message": ""}
    assert lib.qk_last_status() == lib.QK_ERR_INVALID_SIZE



def test_cuda_stream_is_refused_by_the_cpu_library():
    """A stream means device pointers: the CPU library must refuse it, not read them."""
    qw = qkernels.quantize_weights(np.ones((4, 64), np.float32), bits=8, group_size=None)
    x = np.ones((1, 64), np.float32)
    guarded = np.full(4 + 32, 7.0, np.float32)
    args = new_struct("qk_matmul_args")
    args.input, args.output = ffi.cast("void *", x.ctypes.data), ffi.cast("void *", guarded[16:].ctypes.data)
    args.M, args.input_dtype, args.stream = 1, lib.QK_DTYPE_F32, ffi.cast("void *", 0x1000)
    assert lib.qk_matmul(qw.c_weights, args) == lib.QK_ERR_INVALID_ARGUMENT
    assert "stream" in _last_error()
    assert (guarded == 7.0).all()


def test_dequantize_takes_dtype_names_only():
    """A NumPy dtype raised a raw KeyError (it compares equal to its name but is no key of the
    name table); a torch dtype was refused as if it named another type."""
    qw = qkernels.quantize_weights(np.ones((4, 8), np.float32), bits=8)
    for dtype in (np.dtype("float16"), np.float16, "float64"):
        _raises(InvalidArgumentError, r"\bdtype\b", qkernels.dequantize, qw, dtype)
    assert qkernels.dequantize(qw, "float16").dtype == np.float16
