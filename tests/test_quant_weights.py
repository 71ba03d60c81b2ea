"""Weight quantization methods (qkernels.quant): RTN is the foundation's quantizer; GPTQ is exact
RTN when nothing couples the columns, never worse than RTN on a real layer, in the canonical format
with static groups under act_order; ZeroQuant's LKD never worse than its RTN; mixed precision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels
from qkernels import quant, reference
from qk_support import HAVE_TORCH, examples


def _layer(seed, N=24, K=64, M=256):
    """Weights and correlated layer inputs (what makes GPTQ's error feedback matter)."""
    rng = np.random.default_rng(seed)
    mixing = 0.4 * rng.standard_normal((K, K)) + np.eye(K)
    x = (rng.standard_normal((M, K)) @ mixing).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    return w, x


def _layer_error(qw, w, x):
    """‖X·Ŵᵀ − X·Wᵀ‖²_F with the exact dequantized weights."""
    diff = reference.dequantize(qw.data, qw.scales, qw.zero_points, qw.bits, qw.group_size, qw.offsets)
    diff -= w.astype(np.float64)
    return float(np.sum((x.astype(np.float64) @ diff.T) ** 2))


def _same(a, b):
    assert (a.bits, a.group_size, a.shape) == (b.bits, b.group_size, b.shape)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scales, b.scales)
    assert (a.zero_points is None) == (b.zero_points is None)
    if a.zero_points is not None:
        np.testing.assert_array_equal(a.zero_points, b.zero_points)


# ---------------------------------------------------------------- RTN


@settings(max_examples=examples(20))
@given(bits=st.sampled_from([4, 8]), symmetric=st.booleans(), granularity=st.sampled_from(["group", "channel", "tensor"]),
       seed=st.integers(0, 2**32 - 1))
def test_rtn_is_the_contract_quantizer(bits, symmetric, granularity, seed):
    w = np.random.default_rng(seed).standard_normal((6, 32)).astype(np.float32)
    group_size = 8 if granularity == "group" else None
    qw = quant.rtn(w, bits=bits, group_size=group_size, symmetric=symmetric, per_tensor=granularity == "tensor")
    data, scales, zero_points = reference.quantize(w, bits, group_size, symmetric, granularity)
    np.testing.assert_array_equal(qw.data, data)
    np.testing.assert_array_equal(qw.scales, scales)
    if symmetric:
        assert qw.zero_points is None
    else:
        np.testing.assert_array_equal(qw.zero_points, zero_points)
    with pytest.raises(qkernels.InvalidArgumentError, match="per_tensor"):
        quant.rtn(w, bits=bits, group_size=8, per_tensor=True)


# ---------------------------------------------------------------- GPTQ


def test_hessian_accumulator_is_two_over_n_xtx():
    _, x = _layer(1)
    h = quant.HessianAccumulator(x.shape[1])
    for batch in np.array_split(x.reshape(4, -1, x.shape[1]), 2):  # [..., K] batches of unequal use
        h.update(batch)
    expected = 2.0 / x.shape[0] * x.astype(np.float64).T @ x.astype(np.float64)
    # Summed in float32: within a few float32 roundings of the sum's terms' magnitude.
    np.testing.assert_allclose(h.hessian(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert h.count == x.shape[0]


@pytest.mark.parametrize("bits,group_size,symmetric", list(itertools.product([4, 8], [None, 16, 24], [True, False])))
def test_gptq_without_column_coupling_is_rtn(bits, group_size, symmetric):
    # A diagonal Hessian has no off-diagonal terms to carry errors: GPTQ must round exactly like RTN.
    # K = 64, G = 24: the last group holds 16 columns and takes its scale from them, as RTN's does.
    w, _ = _layer(2)
    hessian = np.diag(np.linspace(0.5, 2.0, w.shape[1]))
    for act_order in (False, True):
        got = quant.gptq(w, hessian, bits=bits, group_size=group_size, symmetric=symmetric, act_order=act_order)
        _same(got, quant.rtn(w, bits=bits, group_size=group_size, symmetric=symmetric))


def _obq_oracle(w, hessian, bits, group_size, symmetric, act_order, damp=0.01):
    """GPTQ written the plain way (Frantar et al. §3, before the Cholesky and lazy-batch
    reformulations): after each column, the inverse Hessian of the remaining columns is downdated
    explicitly. Returns the integers q [N, K] (unpacked), in the original column order."""
    N, K = w.shape
    qmax = (1 << (bits - 1)) - 1
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(K)
    original = w.astype(np.float64)
    w = original[:, order]
    h_inv = np.linalg.inv(hessian[np.ix_(order, order)] + damp * np.mean(np.diag(hessian)) * np.eye(K))
    static = act_order or group_size >= K
    params = {}
    q = np.empty((N, K), np.int64)
    for j in range(K):
        g = order[j] // group_size
        if g not in params:  # static: RTN's, from the original weights; dynamic: at the group's first column
            source = original[:, g * group_size:(g + 1) * group_size] if static else w[:, j:j + group_size]
            _, s, zp = reference.quantize(source.astype(np.float32), bits, None, symmetric, "channel")
            params[g] = (s[:, 0], 0 if zp is None else zp[:, 0].astype(np.int64))
        s, zp = params[g]
        r = np.rint(w[:, j].astype(np.float32) / s).astype(np.int64)
        q[:, j] = np.clip(r, -qmax, qmax) if symmetric else np.clip(r + zp, -qmax - 1, qmax)
        error = (w[:, j] - s.astype(np.float64) * (q[:, j] - zp)) / h_inv[j, j]
        w[:, j:] -= np.outer(error, h_inv[j, j:])
        h_inv -= np.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]
    result = np.empty_like(q)
    result[:, order] = q
    return result


@pytest.mark.parametrize("bits,group_size,symmetric,act_order",
                         list(itertools.product([4, 8], [None, 8, 12], [True, False], [False, True])))
def test_gptq_matches_the_plain_algorithm(bits, group_size, symmetric, act_order):
    # The Cholesky form and the lazy blocks are exact rewritings: same integers as the plain form
    # (up to a rounding tie that float64 noise could flip: none occurs on these data). G = 12 of
    # K = 32: a shorter last group of 8 columns (format v2), which is the last lazy block.
    w, x = _layer(10, N=12, K=32, M=96)
    h = quant.HessianAccumulator(32)
    h.update(x)
    qw = quant.gptq(w, h.hessian(), bits=bits, group_size=group_size, symmetric=symmetric, act_order=act_order,
                    block_size=8)
    expected = _obq_oracle(w, h.hessian(), bits, group_size or 32, symmetric, act_order)
    np.testing.assert_array_equal(reference.unpack(qw.data, bits, 32), expected)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_odd_groups_of_4_bit_weights(symmetric):
    # Groups of 3 columns: the dynamic group scales come from odd-width slices of the weights.
    w, _ = _layer(9, N=5, K=6)
    _same(quant.gptq(w, np.eye(6), bits=4, group_size=3, symmetric=symmetric),
          quant.rtn(w, bits=4, group_size=3, symmetric=symmetric))
    with pytest.raises(qkernels.InvalidArgumentError, match="even"):
        quant.gptq(w[:, :5], np.eye(5), bits=4, group_size=5)


@pytest.mark.parametrize("bits,group_size,symmetric,act_order",
                         list(itertools.product([4, 8], [None, 16], [True, False], [False, True])))
def test_gptq_layer_error_no_worse_than_rtn(bits, group_size, symmetric, act_order):
    for seed in range(3):
        w, x = _layer(seed)
        h = quant.HessianAccumulator(w.shape[1])
        h.update(x)
        got = quant.gptq(w, h.hessian(), bits=bits, group_size=group_size, symmetric=symmetric, act_order=act_order)
        rtn = quant.rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
        assert _layer_error(got, w, x) <= _layer_error(rtn, w, x)


def test_gptq_act_order_uses_static_groups_and_runs_on_every_backend():
    w, x = _layer(3)
    h = quant.HessianAccumulator(w.shape[1])
    h.update(x)
    qw = quant.gptq(w, h.hessian(), bits=4, group_size=16, act_order=True, symmetric=False)
    rtn = quant.rtn(w, bits=4, group_size=16, symmetric=False)
    # Static groups: the scales and zero points are RTN's, from the original weights in column order.
    np.testing.assert_array_equal(qw.scales, rtn.scales)
    np.testing.assert_array_equal(qw.zero_points, rtn.zero_points)
    for mode in ("a16", "a8"):
        reference.assert_matmul_close(qkernels.matmul(x, qw, mode=mode), x, "float32", qw.data, qw.scales,
                                      qw.zero_points, qw.bits, qw.group_size, mode)
    with pytest.raises(qkernels.InvalidArgumentError, match="g_idx"):
        quant.gptq(w, h.hessian(), bits=4, group_size=16, act_order=True, static_groups=False)


def test_gptq_lazy_blocks_do_not_change_the_result():
    w, x = _layer(4)
    h = quant.HessianAccumulator(w.shape[1])
    h.update(x)
    errors = [_layer_error(quant.gptq(w, h.hessian(), bits=4, group_size=16, block_size=b), w, x) for b in (1, 16, 128)]
    np.testing.assert_allclose(errors, errors[0], rtol=1e-6)


def test_gptq_dead_inputs_and_bad_arguments():
    w, x = _layer(5)
    x[:, 3] = 0  # an input that is always zero: its Hessian row is zero, its weights become zero
    h = quant.HessianAccumulator(w.shape[1])
    h.update(x)
    qw = quant.gptq(w, h.hessian(), bits=8)
    assert (reference.unpack(qw.data, 8, qw.K)[:, 3] == 0).all()
    with pytest.raises(qkernels.InvalidArgumentError, match="hessian"):
        quant.gptq(w, np.eye(3), bits=8)
    with pytest.raises(qkernels.InvalidArgumentError, match="group_size"):
        quant.gptq(w, h.hessian(), bits=8, group_size=0)
    with pytest.raises(qkernels.InvalidArgumentError, match="bits"):
        quant.gptq(w, h.hessian(), bits=3)
    with pytest.raises(qkernels.InvalidArgumentError, match="positive definite"):
        quant.gptq(w, -np.eye(w.shape[1]), bits=8)
    with pytest.raises(qkernels.InvalidArgumentError, match="no data"):
        quant.HessianAccumulator(4).hessian()


# ---------------------------------------------------------------- ZeroQuant


def test_zeroquant_is_group_wise_rtn():
    w, _ = _layer(6)
    _same(quant.zeroquant(w, bits=4, group_size=16), quant.rtn(w, bits=4, group_size=16))


@pytest.mark.skipif(not HAVE_TORCH, reason="zeroquant_lkd needs torch")
@pytest.mark.parametrize("quantize_activations", [True, False])
def test_zeroquant_lkd_improves_on_rtn(quantize_activations):
    w, x = _layer(7, N=8, K=32, M=64)
    mode = "a8" if quantize_activations else "a16"
    exact = x.astype(np.float64) @ w.T.astype(np.float64)

    def deployed_error(qw):
        return float(np.sum((qkernels.matmul(x, qw, mode=mode) - exact) ** 2))

    lkd = quant.zeroquant_lkd(w, x, bits=4, group_size=16, steps=40, quantize_activations=quantize_activations)
    assert deployed_error(lkd) < deployed_error(quant.zeroquant(w, bits=4, group_size=16))
    assert lkd.bits == 4 and lkd.group_size == 16


@pytest.mark.skipif(not HAVE_TORCH, reason="zeroquant_lkd needs torch")
def test_zeroquant_lkd_keeps_the_weights_format():
    """Its result records the dtype and container of the weights, as zeroquant's does (it recorded
    float32 NumPy: dequantize then gave NumPy for a torch bfloat16 weight)."""
    import torch

    w, x = _layer(8, N=4, K=16, M=8)
    for weight in (torch.from_numpy(w).to(torch.bfloat16), w.astype(np.float16)):
        lkd = quant.zeroquant_lkd(weight, x, bits=4, group_size=8, steps=3)
        rtn = quant.zeroquant(weight, bits=4, group_size=8)
        assert (lkd.dtype, lkd.kind) == (rtn.dtype, rtn.kind)
        assert type(qkernels.dequantize(lkd)) is type(weight) and qkernels.dequantize(lkd).dtype == weight.dtype


@pytest.mark.skipif(not HAVE_TORCH, reason="zeroquant_lkd needs torch")
def test_zeroquant_lkd_refuses_empty_inputs():
    """No rows: the loss would be a mean over nothing (it trained on NaN, then failed elsewhere)."""
    w, _ = _layer(8, N=4, K=16)
    with pytest.raises(qkernels.InvalidArgumentError, match="inputs"):
        quant.zeroquant_lkd(w, np.zeros((0, 16), np.float32), bits=4, group_size=8)


# ---------------------------------------------------------------- mixed precision


def test_layer_sensitivity_measures_the_kernel_output_error():
    w, x = _layer(8)
    result = quant.layer_sensitivity(w, x, bits_options=(4, 8), group_size=16)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    for bits, (size, error) in result.items():
        qw = quant.rtn(w, bits=bits, group_size=16)
        assert size == qw.nbytes
        expected = np.sum((qkernels.matmul(x, qw).astype(np.float64) - exact) ** 2) / np.sum(exact**2)
        assert error == pytest.approx(expected)
    assert result[8][1] < result[4][1] and result[8][0] > result[4][0]


def _brute_force(layers, budget):
    best = None
    for bits in itertools.product(*(list(o) for o in layers.values())):
        size = sum(layers[n][b][0] for n, b in zip(layers, bits))
        error = sum(layers[n][b][1] for n, b in zip(layers, bits))
        if size <= budget and (best is None or error < best[0]):
            best = (error, dict(zip(layers, bits)))
    return best


@settings(max_examples=examples(30))
@given(errors=st.lists(st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 0.009)), min_size=1, max_size=6),
       upgrades=st.integers(0, 6))
def test_choose_bits_is_optimal_for_equal_sized_layers(errors, upgrades):
    # Equal sizes, two options each: the greedy rule (largest error drop first) is exactly optimal.
    layers = {f"layer{i}": {4: (100, e4), 8: (200, e8)} for i, (e4, e8) in enumerate(errors)}
    budget = 100 * len(layers) + 100 * upgrades
    choice = quant.choose_bits(layers, budget)
    assert sum(layers[n][b][0] for n, b in choice.items()) <= budget
    assert sum(layers[n][b][1] for n, b in choice.items()) == pytest.approx(_brute_force(layers, budget)[0])


def test_choose_bits_is_a_heuristic_even_on_convex_curves():
    """Every layer convex (error drop per extra byte decreasing), the budget used up exactly, and
    still not optimal: l2's last upgrade (4 bytes) no longer fits, so l1's nearly useless one (3
    bytes) is taken. The docs used to promise optimality here."""
    layers = {"l0": {2: (2, 20.0), 4: (3, 17.3468), 8: (5, 12.6955)},
              "l1": {2: (4, 20.0), 4: (6, 17.6298), 8: (9, 17.6045)},
              "l2": {2: (4, 20.0), 4: (6, 14.8222), 8: (10, 11.9031)}}
    choice = quant.choose_bits(layers, 20)
    assert choice == {"l0": 8, "l1": 8, "l2": 4}
    assert sum(layers[n][b][0] for n, b in choice.items()) == 20
    error = sum(layers[n][b][1] for n, b in choice.items())
    optimum, best = _brute_force(layers, 20)
    assert best == {"l0": 8, "l1": 2, "l2": 8}
    assert (round(error, 2), round(optimum, 2)) == (45.12, 44.60)


def test_choose_bits_respects_the_budget_and_refuses_an_impossible_one():
    layers = {"a": {4: (10, 1.0), 8: (20, 0.1)}, "b": {4: (30, 0.5), 8: (60, 0.4)}, "c": {4: (5, 2.0), 8: (10, 0.0)}}
    assert quant.choose_bits(layers, 45) == {"a": 4, "b": 4, "c": 4}
    assert quant.choose_bits(layers, 60) == {"a": 8, "b": 4, "c": 8}
    assert quant.choose_bits(layers, 1000) == {"a": 8, "b": 8, "c": 8}
    with pytest.raises(qkernels.InvalidArgumentError, match="budget"):
        quant.choose_bits(layers, 44)


@pytest.mark.parametrize("shape", [(0, 16), (4, 0)])
def test_rtn_of_an_empty_matrix_names_its_shape(shape):
    with pytest.raises(qkernels.InvalidArgumentError, match="N and K must be positive"):  # was "input is NULL"
        quant.rtn(np.zeros(shape, np.float32), bits=4)
