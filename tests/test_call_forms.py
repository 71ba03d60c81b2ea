"""qkernels.matmul remembers the form of a checked call (weights, arguments, QKERNELS_BACKEND,
use_backend, the input's type, dtype and shape) and runs a later call of that form as one
qk_plan_run. A call of another form, or whatever the form does not fix, must never reuse it
wrongly: each case below runs after its form was remembered and is compared with a first call on
fresh weights (which checks everything), or must raise as a first call would."""

from __future__ import annotations

import numpy as np
import pytest

import qkernels
from qkernels import ops
from qkernels.errors import DtypeError, InvalidArgumentError

from qk_support import HAVE_TORCH

K, N = 256, 24


@pytest.fixture(autouse=True)
def _no_backend_from_environment(monkeypatch):
    monkeypatch.delenv("QKERNELS_BACKEND", raising=False)


@pytest.fixture(scope="module")
def w():
    return np.random.default_rng(3).standard_normal((N, K)).astype(np.float32)


def _weights(w):
    return qkernels.quantize_weights(w, bits=4, group_size=64)


def _x(rows=(1,), dtype="float32", seed=4):
    return np.random.default_rng(seed).standard_normal(rows + (K,)).astype(dtype)


def _first_call(w, x, **kwargs):
    """The result of a call on weights that have remembered nothing."""
    return qkernels.matmul(x, _weights(w), **kwargs)


def _floats(y) -> np.ndarray:
    return y.float().numpy() if not isinstance(y, np.ndarray) else y.astype(np.float32)


def _same(y, expected):
    assert type(y) is type(expected) and y.dtype == expected.dtype and tuple(y.shape) == tuple(expected.shape)
    np.testing.assert_array_equal(_floats(y), _floats(expected))


class _Subclass(np.ndarray):
    pass


def test_every_form_of_numpy_input_runs_as_its_first_call(w):
    qw = _weights(w)
    base = _x((4,), "float32", seed=5)
    inputs = {
        "one row": _x(),
        "one row, float16": _x(dtype="float16"),
        "three rows": _x((3,)),
        "2 x 3 rows": _x((2, 3)),
        "strided rows": base[::2],
        "strided columns": np.repeat(base, 2, axis=1)[:, ::2],
        "reversed rows": base[::-1],
        "big-endian float32": base.astype(">f4"),
        "big-endian float16": base.astype(">f2"),
        "little-endian again": base.copy(),
        "a subclass of ndarray": base.view(_Subclass),
    }
    for _ in range(2):  # the second round finds every form remembered
        for mode in ("a16", "a8"):
            for name, x in inputs.items():
                before = x.copy()
                y = qkernels.matmul(x, qw, mode)
                expected = _first_call(w, x, mode=mode)
                assert y.dtype == x.dtype.newbyteorder("="), name
                _same(y, expected)
                np.testing.assert_array_equal(x, before)  # the input is never written


def test_each_call_returns_a_new_output(w):
    qw = _weights(w)
    x1, x2 = _x(seed=6), _x(seed=7)
    y1 = qkernels.matmul(x1, qw)
    kept = y1.copy()
    y2 = qkernels.matmul(x2, qw)
    y3 = qkernels.matmul(x1, qw)
    assert y2 is not y1 and y3 is not y1 and not np.shares_memory(y1, y3)
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(y3, kept)


def test_the_checks_the_form_does_not_fix_still_run(w):
    qw = _weights(w)
    x = _x()
    qkernels.matmul(x, qw)  # remembered: later calls of this form take the short path
    bias = np.linspace(-1, 1, N, dtype=np.float32)
    _same(qkernels.matmul(x, qw, bias=bias), _first_call(w, x, bias=bias))
    _same(qkernels.matmul(x, qw, bias=bias[::-1]), _first_call(w, x, bias=bias[::-1]))
    with pytest.raises(InvalidArgumentError, match="bias"):
        qkernels.matmul(x, qw, bias=bias[:-1])
    with pytest.raises(DtypeError, match="bias"):
        qkernels.matmul(x, qw, bias=np.arange(N))
    with pytest.raises(DtypeError, match="qw"):
        qkernels.matmul(x, "not weights")
    with pytest.raises(InvalidArgumentError, match="mode"):
        qkernels.matmul(x, qw, "a9")
    with pytest.raises(InvalidArgumentError, match="backend"):
        qkernels.matmul(x, qw, backend="")
    with pytest.raises(InvalidArgumentError, match="backend"):
        qkernels.matmul(x, qw, backend=["ref"])  # unhashable: no form at all
    with pytest.raises(InvalidArgumentError, match="x"):
        qkernels.matmul(x[:, :-2], qw)
    with pytest.raises(DtypeError, match="x"):
        qkernels.matmul(x.astype(np.float64), qw)
    with pytest.raises(DtypeError, match="x"):
        qkernels.matmul(x.tolist(), qw)
    with pytest.raises(DtypeError, match="x"):
        qkernels.matmul(_ArrayLike(x), qw)  # the dtype and shape of the form, but not an array


class _ArrayLike:
    """Looks like x to NumPy, which would convert it; qkernels takes arrays and tensors only."""

    def __init__(self, x):
        self.x, self.dtype, self.shape = x, x.dtype, x.shape

    def __array__(self, dtype=None, copy=None):
        return self.x


def _distinguishable(w, x):
    """ref's result for x and the automatic choice's, if they differ in some bit (else skips)."""
    y_ref, y_auto = _first_call(w, x, backend="ref"), _first_call(w, x)
    if np.array_equal(y_ref, y_auto):
        pytest.skip("the reference backend and the automatic choice give the same bits here")
    return y_ref, y_auto


def test_a_changed_environment_variable_takes_effect_on_the_next_call(w, monkeypatch):
    qw, x = _weights(w), _x((3,), seed=8)
    y_ref, y_auto = _distinguishable(w, x)
    for _ in range(2):
        _same(qkernels.matmul(x, qw), y_auto)
        monkeypatch.setenv("QKERNELS_BACKEND", "ref")
        _same(qkernels.matmul(x, qw), y_ref)
        monkeypatch.setenv("QKERNELS_BACKEND", "no_such_backend")
        with pytest.raises(InvalidArgumentError, match="QKERNELS_BACKEND"):
            qkernels.matmul(x, qw)
        monkeypatch.delenv("QKERNELS_BACKEND")


def test_use_backend_takes_effect_on_the_next_call(w):
    qw, x = _weights(w), _x((3,), seed=8)
    y_ref, y_auto = _distinguishable(w, x)
    for _ in range(2):
        _same(qkernels.matmul(x, qw), y_auto)
        with qkernels.use_backend("ref"):
            _same(qkernels.matmul(x, qw), y_ref)
            _same(qkernels.matmul(x, qw, backend="auto"), y_auto)  # the argument outranks the block


def test_the_forms_remembered_are_bounded(w):
    qw = _weights(w)
    for rows in range(1, 2 * ops._FORMS_KEPT + 2):  # prefill: a new length on every call
        x = _x((rows,), seed=rows)
        _same(qkernels.matmul(x, qw), _first_call(w, x))
        assert len(qw._forms) <= ops._FORMS_KEPT


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_every_form_of_torch_input_runs_as_its_first_call(w):
    import torch

    qw = _weights(w)
    base = torch.from_numpy(_x((4,), seed=9))
    inputs = {
        "one row": base[:1].clone(),
        "the same as NumPy": base[:1].numpy(),  # same dtype and shape, another type: a NumPy result
        "bfloat16": base[:1].to(torch.bfloat16),
        "float16": base[:1].half(),
        "strided rows": base[::2],
        "transposed twice": base.T.contiguous().T,
        "requires grad": base.clone().requires_grad_(),
        "parameter": torch.nn.Parameter(base.clone()),
        # Memory holding -x: a pointer to it would read x (after a plain call of the same form too).
        "negated view": torch._neg_view(base[:1].clone()),
        "imaginary part of a conjugate": torch.complex(base[:1], -base[:1]).conj().imag,
    }
    for _ in range(2):
        for name, x in inputs.items():
            y = qkernels.matmul(x, qw)
            _same(y, _first_call(w, x))
            assert not isinstance(y, torch.Tensor) or not y.requires_grad, name
    qkernels.matmul(base, qw)
    with pytest.raises(InvalidArgumentError, match="x is on meta"):
        qkernels.matmul(torch.empty(base.shape, device="meta"), qw)
    bias = torch.linspace(-1, 1, N)
    _same(qkernels.matmul(base, qw, bias=bias), _first_call(w, base, bias=bias))
    with pytest.raises(InvalidArgumentError, match="bias is on meta"):
        qkernels.matmul(base, qw, bias=torch.empty(N, device="meta"))
    _same(qkernels.matmul(base, qw, bias=torch._neg_view(bias)), _first_call(w, base, bias=-bias))
    for _ in range(2):  # the second after a dense call of the same form
        with pytest.raises(InvalidArgumentError, match="x is a torch.sparse_coo tensor"):
            qkernels.matmul(base[:1].to_sparse(), qw)
        qkernels.matmul(base[:1], qw)
    with pytest.raises(InvalidArgumentError, match="bias is a torch.sparse_coo tensor"):
        qkernels.matmul(base, qw, bias=bias.to_sparse())
