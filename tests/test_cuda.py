"""The CUDA backend from Python: device arrays in and out, and the errors of every mix of host and
device arrays.

Without a GPU (every CI run) the backend, where built, is registered but not detected: the tests
check what it reports (`qkernels info` included) and every refusal that happens before anything
reaches the device, with stand-in objects exporting __cuda_array_interface__ or DLPack (their data
pointers are never read). With a GPU (bench/device/cuda_check.sh) the tests marked `gpu` run the
kernels on torch CUDA tensors against qkernels.reference; elsewhere they skip with the reason.

QK_EXPECT_CUDA_BACKEND=1 (set by .ci/run where nvcc is installed) turns "the CUDA library is not
registered" from a skip into a failure, so that a build that silently lost it cannot pass.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

import qkernels
from qkernels import dispatch, reference
from qkernels.errors import BackendUnavailableError, DtypeError, InvalidArgumentError

try:
    import torch
except ImportError:  # the tests that need torch skip
    torch = None

CUDA = next((b for b in dispatch.backends() if b.name == "cuda"), None)


def _require_cuda_library():
    if CUDA is None:
        if os.environ.get("QK_EXPECT_CUDA_BACKEND") == "1":
            pytest.fail("QK_EXPECT_CUDA_BACKEND=1 but no backend 'cuda' is registered (libqkernels_cuda.so not loaded)")
        pytest.skip("built without nvcc: no CUDA backend library")


def _gpu():
    """Skips unless the CUDA backend can run here and torch can allocate on the GPU."""
    _require_cuda_library()
    if not CUDA.available:
        pytest.skip(f"the cuda backend is not detected: {CUDA.reason}")
    if torch is None or not torch.cuda.is_available():
        pytest.skip("torch with CUDA is needed to allocate device tensors")


class FakeDeviceArray:
    """An object exporting __cuda_array_interface__ (version 3) over memory that does not exist:
    only the checks before a launch may look at it."""

    def __init__(self, shape, typestr="<f2", strides=None, pointer=0xDEAD0000, stream=None, mask=None, readonly=False):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (pointer, readonly), "version": 3,
            "strides": strides, "stream": stream, "mask": mask,
        }


class FakeDLPackCUDA:
    """An object that says it is a DLPack tensor on CUDA device 0."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise BufferError("this stand-in has no memory to export")


@pytest.fixture(scope="module")
def qw():
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    return qkernels.quantize_weights(w, bits=4, group_size=32)


# ---- what the backend reports ----


def test_backend_is_a_device_backend_never_chosen_automatically(qw):
    _require_cuda_library()
    assert CUDA.device and CUDA.compiled and CUDA.own_layout and CUDA.library.endswith("libqkernels_cuda.so")
    assert CUDA.available == (CUDA.reason == "")
    assert [b.name for b in dispatch.device_backends()] == ["cuda"]
    assert all(not b.device for b in dispatch.backends() if b.name != "cuda")
    names = [k.name for k in dispatch.kernels() if k.backend == "cuda"]
    assert names and all(n.startswith("cuda_") for n in names)
    for mode in ("a16", "a8"):
        for M in (1, 16, 512):
            assert qkernels.select(np.zeros((M, 64), np.float16), qw, mode).backend != "cuda"


def test_info_lists_the_cuda_backend_compiled_and_not_detected(capsys):
    _require_cuda_library()
    if CUDA.available:
        pytest.skip("a GPU is detected here: the listing of an undetected backend is for machines without one")
    from qkernels.cli import main

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("cuda "))
    assert row.split()[1:6] == ["yes", "no", "device", "arrays", "only"] and row.endswith(CUDA.reason)
    assert CUDA.reason  # e.g. "libcuda.so.1 not found (no NVIDIA driver): ..."
    kernel_rows = [line for line in lines if line.startswith("cuda_")]
    assert len(kernel_rows) == sum(k.backend == "cuda" for k in dispatch.kernels())
    # The last two columns are "available" and the CPU features needed beyond the backend (none: "-").
    assert all(row.split()[1] == "cuda" and row.split()[-2:] == ["False", "-"] for row in kernel_rows)


def test_undetected_backend_refuses_device_arrays_with_its_reason(qw):
    _require_cuda_library()
    if CUDA.available:
        pytest.skip("a GPU is detected here")
    x = FakeDeviceArray((2, 64))
    for call in (lambda: qkernels.matmul(x, qw), lambda: qkernels.matmul(x, qw, backend="cuda"),
                 lambda: qkernels.select(x, qw, "a8")):
        with pytest.raises(BackendUnavailableError, match="backend 'cuda' is not available") as error:
            call()
        assert CUDA.reason in str(error.value)
    assert not qw._packs.get((CUDA.code, None))


def test_without_a_device_backend_device_arrays_are_refused(qw, monkeypatch):
    from qkernels import ops

    monkeypatch.setattr(ops, "_device_backends", dict)  # a build without the CUDA library
    with pytest.raises(BackendUnavailableError, match="no device backend"):
        qkernels.matmul(FakeDeviceArray((1, 64)), qw)


# ---- host and device never mix ----


def test_host_arrays_never_reach_a_device_backend(qw, monkeypatch):
    """Naming the device backend for host arrays: refused before anything is packed. Where it is not
    detected, that is the error (its reason); where it is (here made to look so), the mix is."""
    _require_cuda_library()
    x = np.ones((2, 64), np.float16)
    if not CUDA.available:
        with pytest.raises(BackendUnavailableError, match="'cuda' is not available"):
            qkernels.matmul(x, qw, backend="cuda")
        from qkernels import ops

        detected = dataclasses.replace(CUDA, available=True, detected=True, reason="")
        monkeypatch.setattr(ops, "_device_backends", lambda: {"cuda": detected})
    with pytest.raises(InvalidArgumentError, match="x is in host memory, but backend 'cuda' runs on a device"):
        qkernels.matmul(x, qw, backend="cuda")
    with qkernels.use_backend("cuda"), pytest.raises(InvalidArgumentError, match="host memory"):
        qkernels.matmul(x, qw)
    a_kernel = next(k.name for k in dispatch.kernels() if k.backend == "cuda" and k.mode == "a16")
    with pytest.raises(InvalidArgumentError, match="host memory"):
        qkernels.matmul(x, qw, kernel=a_kernel)
    monkeypatch.setenv("QKERNELS_BACKEND", "cuda")
    with pytest.raises(InvalidArgumentError, match="host memory"):
        qkernels.matmul(x, qw)
    if torch is not None:
        with pytest.raises(InvalidArgumentError, match="host memory"):
            qkernels.matmul(torch.ones(2, 64, dtype=torch.float16), qw, backend="cuda")
    assert all(key != CUDA.code and not (isinstance(key, tuple) and key[0] == CUDA.code) for key in qw._packs)


def test_device_arrays_never_reach_a_cpu_backend(qw):
    _require_cuda_library()
    with pytest.raises(InvalidArgumentError, match="backend 'ref' runs on the CPU"):
        qkernels.matmul(FakeDeviceArray((2, 64)), qw, backend="ref")
    with qkernels.use_backend("x86_avx2" if "x86_avx2" in dispatch._codes() else "ref"):
        with pytest.raises(InvalidArgumentError, match="runs on the CPU"):
            qkernels.matmul(FakeDeviceArray((2, 64)), qw)


def test_mixed_bias_and_output_are_refused(qw):
    """Checked before the backend is looked at: the same errors with or without a GPU."""
    x = FakeDeviceArray((2, 64))
    with pytest.raises(InvalidArgumentError, match="bias is in host memory, but x is in device memory"):
        qkernels.matmul(x, qw, bias=np.zeros(32, np.float32))
    with pytest.raises(InvalidArgumentError, match="out is in host memory"):
        qkernels.matmul(x, qw, out=np.zeros((2, 32), np.float16))
    with pytest.raises(InvalidArgumentError, match="out= is only for calls on device arrays"):
        qkernels.matmul(np.zeros((2, 64), np.float16), qw, out=FakeDeviceArray((2, 32)))
    with pytest.raises(InvalidArgumentError, match="out has shape"):
        qkernels.matmul(x, qw, out=FakeDeviceArray((2, 31)))
    with pytest.raises(DtypeError, match="typestr '<f4'"):
        qkernels.matmul(x, qw, out=FakeDeviceArray((2, 32), "<f4"))  # out must have x's dtype
    with pytest.raises(InvalidArgumentError, match="out is read-only"):
        qkernels.matmul(x, qw, out=FakeDeviceArray((2, 32), readonly=True))
    with pytest.raises(InvalidArgumentError, match="out has shape"):  # a read-only x is taken
        qkernels.matmul(FakeDeviceArray((2, 64), readonly=True), qw, out=FakeDeviceArray((2, 31)))
    with pytest.raises(InvalidArgumentError, match="bias has shape"):
        qkernels.matmul(x, qw, bias=FakeDeviceArray((31,), "<f4"))


def test_cuda_array_interface_is_checked(qw):
    with pytest.raises(DtypeError, match="typestr '<i4'"):
        qkernels.matmul(FakeDeviceArray((2, 64), "<i4"), qw)
    with pytest.raises(InvalidArgumentError, match="not C-contiguous"):
        qkernels.matmul(FakeDeviceArray((2, 64), strides=(2, 128)), qw)
    with pytest.raises(InvalidArgumentError, match="masked"):
        qkernels.matmul(FakeDeviceArray((2, 64), mask=FakeDeviceArray((2, 64), "|b1")), qw)
    with pytest.raises(InvalidArgumentError, match="stream 0"):
        qkernels.matmul(FakeDeviceArray((2, 64), stream=0), qw)
    with pytest.raises(InvalidArgumentError, match="does not match K=64"):
        qkernels.matmul(FakeDeviceArray((2, 63)), qw)
    with pytest.raises(InvalidArgumentError, match="M=0 rows"):
        qkernels.matmul(FakeDeviceArray((0, 64)), qw)
    with pytest.raises(InvalidArgumentError, match="lacks shape"):
        qkernels.matmul(type("Broken", (), {"__cuda_array_interface__": {"shape": (1, 64)}})(), qw)


def test_interface_arrays_are_parsed():
    from qkernels import _device

    a = _device.device_array(FakeDeviceArray((3, 4), "<f4", strides=(16, 4), pointer=4096, stream=7), "x")
    assert (a.pointer, a.dtype, a.shape, a.stream, a.device) == (4096, "float32", (3, 4), 7, None)
    assert _device.device_array(FakeDeviceArray((1, 4), strides=(99, 2), stream=1), "x").stream == 0  # one row
    assert _device.device_array(FakeDeviceArray((2, 4), stream=2), "x").stream == 2  # per-thread default stream


def test_interface_arrays_take_torchs_current_device(monkeypatch):
    """The interface names no device; the pack is cached per device index, so the index comes from
    torch where torch has CUDA (here a stand-in saying device 1), else it is None."""
    from qkernels import _device

    class Cuda:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def current_device():
            return 1

    monkeypatch.setitem(sys.modules, "torch", type("FakeTorch", (), {"cuda": Cuda, "Tensor": type(None)}))
    assert _device.device_array(FakeDeviceArray((2, 4)), "x").device == 1
    monkeypatch.delitem(sys.modules, "torch")
    assert _device.device_array(FakeDeviceArray((2, 4)), "x").device is None


def test_dlpack_cuda_objects_are_device_arrays(qw):
    from qkernels import _device

    assert _device.is_device_array(FakeDLPackCUDA()) and not _device.is_device_array(np.zeros(3))
    if torch is None or not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="through torch"):
            qkernels.matmul(FakeDLPackCUDA(), qw)
    else:
        with pytest.raises(BufferError):  # torch asked the stand-in for its capsule: read through torch
            qkernels.matmul(FakeDLPackCUDA(), qw)


# ---- on a GPU ----


def _problem(rng, M, N, K, bits, group, symmetric, dtype):
    w = rng.standard_normal((N, K)).astype(np.float32)
    q = qkernels.quantize_weights(w, bits=bits, group_size=group, symmetric=symmetric)
    x = rng.standard_normal((M, K)).astype(np.float32)
    return q, torch.from_numpy(x).to(getattr(torch, dtype))


@pytest.mark.parametrize("mode", ["a16", "a8"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("M", [1, 5, 16, 70])
def test_gpu_matmul_matches_the_cpu(mode, dtype, M):
    """On the GPU, on torch's current stream: A8 equals the CPU's bit for bit (exact integer sums,
    one rounding), A16 lands within the contract's tolerance of the reference."""
    _gpu()
    rng = np.random.default_rng(M)
    for bits, group, symmetric in ((4, 128, True), (4, 32, False), (8, 64, True), (4, 256, True)):
        q, x = _problem(rng, M, 256, 256, bits, group, symmetric, dtype)
        bias = torch.randn(256)
        y = qkernels.matmul(x.cuda(), q, mode, bias=bias.cuda())
        assert y.is_cuda and y.dtype == x.dtype and y.shape == (M, 256)
        expected = qkernels.matmul(x, q, mode, bias=bias, backend="ref")
        if mode == "a8":
            assert torch.equal(y.cpu(), expected)
        else:
            # x's values are exact in float32, so the reference reads them so; the tolerance is dtype's.
            ref, err = reference.matmul(x.float().numpy(), "float32", q.data, q.scales, q.zero_points, bits, group,
                                        "a16", bias=bias.numpy())
            assert np.all(np.abs(y.cpu().double().numpy() - ref) <= reference.tolerance(ref, err, dtype, "a16"))


def test_gpu_out_stream_and_pack_once():
    _gpu()
    rng = np.random.default_rng(1)
    q, x = _problem(rng, 8, 128, 256, 4, 128, True, "float16")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xd = x.cuda()
        out = torch.empty(8, 128, dtype=torch.float16, device="cuda")
        assert qkernels.matmul(xd, q, out=out) is out
    stream.synchronize()
    assert torch.equal(out.cpu(), qkernels.matmul(xd, q).cpu())
    assert [k for k in q._packs if isinstance(k, tuple)] == [(CUDA.code, torch.cuda.current_device())]
    assert qkernels.select(xd, q).backend == "cuda"


def test_gpu_quantlinear_runs_the_cuda_backend():
    _gpu()
    from qkernels.torch import QuantLinear

    rng = np.random.default_rng(2)
    layer = QuantLinear(qkernels.quantize_weights(rng.standard_normal((64, 128)).astype(np.float32), bits=4,
                                                  group_size=32), torch.randn(64))
    x = torch.randn(3, 128, dtype=torch.float16)
    on_cpu = layer.half()(x)
    on_gpu = layer.cuda()(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=2e-2, atol=2e-2)
    with pytest.raises(InvalidArgumentError, match="never moves activations"):
        layer(x)


def test_gpu_quantlinear_refuses_an_input_on_another_gpu():
    _gpu()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from qkernels.torch import QuantLinear

    rng = np.random.default_rng(3)
    layer = QuantLinear(qkernels.quantize_weights(rng.standard_normal((64, 128)).astype(np.float32), bits=4,
                                                  group_size=32)).half().to("cuda:0")
    with pytest.raises(InvalidArgumentError, match="x is on cuda:1 but the weights are on cuda:0"):
        layer(torch.randn(3, 128, dtype=torch.float16, device="cuda:1"))


def test_a_device_tensor_never_takes_a_host_calls_form(qw):
    """The fast path of a repeated call is keyed by the form of x, its place included: a tensor
    off the CPU after a CPU call of the same shape and dtype is checked anew, never run on the CPU
    plan (the meta device stands for a GPU here)."""
    if torch is None:
        pytest.skip("needs torch")
    qkernels.matmul(torch.ones(2, 64, dtype=torch.float16), qw)  # the form is remembered
    with pytest.raises(InvalidArgumentError, match="x is on meta"):
        qkernels.matmul(torch.ones(2, 64, dtype=torch.float16, device="meta"), qw)
