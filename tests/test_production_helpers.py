"""The production NumPy helpers that used to be borrowed from the oracle: qkernels.packing (the
4-bit nibble layout), qkernels.activations (the A8 activation quantizer) and qkernels.tensors
(argument checks for code built on the kernels). Each is checked against qkernels.reference, which
keeps its own implementation, and against the kernels where they define the same thing."""

from __future__ import annotations

import numpy as np
import pytest

import qkernels
from qkernels import DtypeError, InvalidArgumentError, activations, packing, tensors
from qkernels import reference as ref

RNG = np.random.default_rng(15)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int64, np.uint8])
def test_pack_int4_matches_the_reference(dtype):
    q = RNG.integers(0 if dtype == np.uint8 else -8, 8, (7, 30)).astype(dtype)
    data = packing.pack_int4(q)
    assert data.dtype == np.int8 and data.shape == (7, 15)
    np.testing.assert_array_equal(data, ref.pack_int4(q))
    np.testing.assert_array_equal(packing.unpack_int4(data, 30), q)


def test_unpack_matches_the_reference_on_every_byte():
    data = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    np.testing.assert_array_equal(packing.unpack_int4(data, 32), ref.unpack_int4(data, 32))
    np.testing.assert_array_equal(packing.unpack(data, 4, 32), ref.unpack(data, 4, 32))
    eight = packing.unpack(data, 8, 16)
    np.testing.assert_array_equal(eight, ref.unpack(data, 8, 16))
    assert not np.shares_memory(eight, data)
    # The layout by hand (numerics §1): element 2j in bits 0-3 of byte j, 2j+1 in bits 4-7.
    np.testing.assert_array_equal(packing.pack_int4(np.array([[1, -2, -8, 7]])).view(np.uint8), [[0xE1, 0x78]])


def test_unpack_reads_what_quantize_weights_writes():
    w = RNG.standard_normal((6, 64)).astype(np.float32)
    for bits in (4, 8):
        qw = qkernels.quantize_weights(w, bits=bits, group_size=32, symmetric=False)
        q = packing.unpack(qw.data, bits, qw.K).astype(np.float64)
        groups = np.repeat(np.arange(2), 32)
        dequantized = qw.scales[:, groups] * (q - qw.zero_points[:, groups])
        np.testing.assert_array_equal(dequantized.astype(np.float32), qkernels.dequantize(qw))


@pytest.mark.parametrize(
    "call, cls",
    [
        (lambda: packing.pack_int4(np.array([[8, 0]])), InvalidArgumentError),
        (lambda: packing.pack_int4(np.array([[-9, 0]])), InvalidArgumentError),
        (lambda: packing.pack_int4(np.array([[1, 2, 3]])), InvalidArgumentError),
        (lambda: packing.pack_int4(np.zeros(4, np.int8)), InvalidArgumentError),
        (lambda: packing.pack_int4(np.zeros((1, 2), np.float32)), DtypeError),
        (lambda: packing.unpack_int4(np.zeros((1, 2), np.uint8), 4), DtypeError),
        (lambda: packing.unpack_int4(np.zeros((1, 2), np.int8), 5), InvalidArgumentError),
        (lambda: packing.unpack(np.zeros((1, 2), np.int8), 3, 2), InvalidArgumentError),
        (lambda: packing.unpack(np.zeros((1, 2), np.int8), True, 2), InvalidArgumentError),
        (lambda: packing.unpack(np.zeros((1, 2), np.int8), 4.0, 4), InvalidArgumentError),
        (lambda: packing.unpack(np.zeros((1, 2), np.int8), 8, 4), InvalidArgumentError),
    ],
)
def test_packing_errors_are_typed(call, cls):
    with pytest.raises(cls):
        call()


# ---------------------------------------------------------------- the A8 activation quantizer


def _activation_rows():
    rows = (RNG.standard_normal((12, 40)) * 10.0 ** RNG.integers(-30, 30, (12, 1))).astype(np.float32)
    edge = np.zeros((6, 40), np.float32)
    edge[1, :3] = [1e-38, -2e-39, 0]  # 127 / amax overflows: reading 4
    edge[2, :2] = [3e38, -3e38]
    edge[3, 5] = np.nan
    edge[4, 7] = -np.inf
    edge[5] = np.float32(0.5) + np.arange(40, dtype=np.float32)  # many halfway products
    return np.concatenate([rows, edge])


def test_quantize_activations_matches_the_reference():
    x = _activation_rows()
    expected = ref.quantize_activations(x, "float32")
    got = activations.quantize_activations(x)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(g, e)
    assert not got[2][-3] and not got[2][-2] and got[2][:-3].all()


def test_quantize_activations_takes_every_float_dtype_and_kind():
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    for dtype in ("float16", "bfloat16"):
        if dtype == "bfloat16":
            ml_dtypes = pytest.importorskip("ml_dtypes")
            xd = x.astype(ml_dtypes.bfloat16)
            expected = ref.quantize_activations(xd.view(np.uint16), "bfloat16")
        else:
            xd = x.astype(np.float16)
            expected = ref.quantize_activations(xd, "float16")
        for e, g in zip(expected, activations.quantize_activations(xd)):
            np.testing.assert_array_equal(g, e)
    torch = pytest.importorskip("torch")
    for e, g in zip(ref.quantize_activations(x, "float32"), activations.quantize_activations(torch.from_numpy(x))):
        np.testing.assert_array_equal(g, e)
    qx, sx, finite = activations.quantize_activations(x.reshape(2, 2, 16))
    assert qx.shape == (2, 2, 16) and sx.shape == finite.shape == (2, 2)


def test_quantize_activations_refuses_what_matmul_refuses():
    with pytest.raises(DtypeError, match=r"\bx\b"):
        activations.quantize_activations(np.zeros((2, 4)))  # float64
    with pytest.raises(DtypeError, match=r"\bx\b"):
        activations.quantize_activations([[0.0] * 4])
    with pytest.raises(InvalidArgumentError, match=r"\bx\b"):
        activations.quantize_activations(np.zeros((2, 0), np.float32))


# ---------------------------------------------------------------- tensors


def test_float_format():
    x = RNG.standard_normal((3, 8)).astype(np.float16)[:, ::2]  # not contiguous: nothing is copied
    assert tensors.float_format(x, "x") == ("float16", "numpy", (3, 4))
    assert tensors.FLOAT_DTYPES == ("float32", "float16", "bfloat16")
    for bad in (np.zeros(3), np.zeros(3, np.int8), [1.0], 1.0):
        with pytest.raises(DtypeError, match=r"\bactivation\b"):
            tensors.float_format(bad, "activation")
    torch = pytest.importorskip("torch")
    t = torch.zeros(2, 5, dtype=torch.bfloat16)
    assert tensors.is_torch(t) and not tensors.is_torch(x)
    assert tensors.float_format(t, "x") == tensors.FloatFormat("bfloat16", "torch", (2, 5))
    with pytest.raises(DtypeError, match=r"\bx\b"):
        tensors.float_format(torch.zeros(2, dtype=torch.float64), "x")
    assert tensors.host_tensor(t.requires_grad_(False), "x").device.type == "cpu"
