"""Activation-side methods (qkernels.quant): observers on known data, SmoothQuant's invariance and
balance, LLM.int8()'s exact outlier path."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels
from qkernels import quant, reference
from qk_support import HAVE_TORCH, examples, raw_offsets

# ---------------------------------------------------------------- observers


@settings(max_examples=examples(20))
@given(seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 4), K=st.integers(1, 9))
def test_observers_on_known_data(seed, batches, K):
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal((2, int(rng.integers(1, 20)), K)).astype(np.float32) * 3 for _ in range(batches)]
    rows = np.abs(np.concatenate([d.reshape(-1, K) for d in data]))
    absmax, percentile, mse = quant.AbsMaxObserver(), quant.PercentileObserver(90), quant.MSEObserver(bits=4, grid=20)
    for observer in (absmax, percentile, mse):
        for d in data:
            observer.update(d)
    np.testing.assert_array_equal(absmax.channel_absmax(), rows.max(axis=0))
    assert absmax.tensor_absmax() == rows.max()
    np.testing.assert_allclose(percentile.channel_absmax(), np.percentile(rows, 90, axis=0), rtol=1e-6)
    assert percentile.tensor_absmax() == pytest.approx(np.percentile(rows, 90), rel=1e-6)
    # MSE-optimal clips come from the grid below the max, and beat the plain max clip.
    clip = mse.channel_absmax()
    assert clip.dtype == np.float32 and clip.shape == (K,)
    assert (clip <= rows.max(axis=0) * (1 + 1e-6)).all() and (clip > 0).all()

    def error(c):
        s = c / 7
        return ((rows - np.minimum(np.rint(rows / s), 7) * s) ** 2).sum(axis=0)

    assert (error(clip.astype(np.float64)) <= error(rows.max(axis=0).astype(np.float64)) * (1 + 1e-9)).all()


def test_mse_observer_clips_a_lone_outlier():
    x = np.concatenate([np.linspace(-1, 1, 9999), [8.0]]).astype(np.float32)[:, None]
    observer = quant.MSEObserver(bits=4)
    observer.update(x)
    # A clip of 8 leaves a step of 8/7 for 9999 values in [-1, 1]; clipping the one outlier costs less.
    assert 0.5 < observer.tensor_absmax() < 2
    with pytest.raises(qkernels.InvalidArgumentError, match="no data"):
        quant.AbsMaxObserver().channel_absmax()
    with pytest.raises(qkernels.InvalidArgumentError, match="last dimension"):
        observer.update(np.zeros((3, 2), np.float32))
    with pytest.raises(qkernels.NonFiniteError):
        observer.update(np.full((3, 1), np.nan, np.float32))


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_observers_take_torch_tensors():
    import torch

    x = torch.randn(3, 5, 8)
    observer = quant.AbsMaxObserver()
    observer.update(x.to(torch.bfloat16))
    np.testing.assert_array_equal(observer.channel_absmax(), x.to(torch.bfloat16).float().abs().amax(dim=(0, 1)).numpy())


# ---------------------------------------------------------------- SmoothQuant


@settings(max_examples=examples(25))
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(0, 1), outlier=st.floats(1, 1e3))
def test_smoothing_leaves_the_float_product_unchanged(seed, alpha, outlier):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 24)).astype(np.float32)
    x[:, rng.integers(24)] *= outlier
    w = rng.standard_normal((8, 24)).astype(np.float32)
    observer = quant.AbsMaxObserver()
    observer.update(x)
    s = quant.smoothquant_scales(observer.channel_absmax(), w, alpha)
    x_s, w_s = quant.smooth_activations(x, s), quant.smooth_weight(w, s)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    smoothed = x_s.astype(np.float64) @ w_s.T.astype(np.float64)
    # Only the float32 roundings of X/s and W·s differ: 2^-23 relative to Σ|x·w|, per element.
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64))
    assert (np.abs(smoothed - exact) <= 2.0**-22 * magnitude).all()
    # α = 1/2 balances the channel maxima of the smoothed activations and weights: both √(max|X|·max|W|).
    if alpha == 0.5:
        np.testing.assert_allclose(np.abs(x_s).max(axis=0), np.abs(w_s).max(axis=0), rtol=1e-5)


def test_smoothquant_shared_input_norm_folding_and_w8a8():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x[:, 3] *= 40  # an outlier channel: what SmoothQuant is for
    q_proj, k_proj = (rng.standard_normal((16, 32)).astype(np.float32) * 0.1 for _ in range(2))
    act = np.abs(x).max(axis=0)
    s = quant.smoothquant_scales(act, [q_proj, k_proj], 0.5)
    w_absmax = np.maximum(np.abs(q_proj).max(axis=0), np.abs(k_proj).max(axis=0))
    np.testing.assert_allclose(s, np.sqrt(act / w_absmax), rtol=1e-6)
    gamma, beta = rng.random(32).astype(np.float32) + 0.5, rng.standard_normal(32).astype(np.float32)
    folded_gamma, folded_beta = quant.fold_into_norm(gamma, beta, s)
    np.testing.assert_allclose(folded_gamma, gamma / s, rtol=1e-6)
    np.testing.assert_allclose(folded_beta, beta / s, rtol=1e-6)
    # W8A8 with smoothing beats plain W8A8 on outlier activations.
    exact = x.astype(np.float64) @ q_proj.T.astype(np.float64)
    qw, s_q = quant.smoothquant(q_proj, act)
    smoothed = qkernels.matmul(quant.smooth_activations(x, s_q), qw, mode="a8")
    plain = qkernels.matmul(x, quant.rtn(q_proj, bits=8), mode="a8")
    assert np.linalg.norm(smoothed - exact) < 0.5 * np.linalg.norm(plain - exact)
    per_tensor, _ = quant.smoothquant(q_proj, act, per_tensor=True)
    assert (per_tensor.scales == per_tensor.scales[0, 0]).all()
    assert quant.smoothquant_scales(np.zeros(32), q_proj)[0] == 1  # nothing to balance
    with pytest.raises(qkernels.InvalidArgumentError, match="alpha"):
        quant.smoothquant_scales(act, q_proj, 1.5)


def _deployed_error(x, weights, s, per_tensor, symmetric=True):
    """Output error of the layers as deployed: smoothed input through the A8 kernel, W·diag(s) by RTN."""
    return sum(np.sum((qkernels.matmul(quant.smooth_activations(x, s),
                                       quant.rtn(quant.smooth_weight(w, s), bits=8, per_tensor=per_tensor,
                                                 symmetric=symmetric),
                                       mode="a8").astype(np.float64) - x.astype(np.float64) @ w.T) ** 2)
               for w in weights)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_smoothing_search_picks_the_least_deployed_error(per_tensor):
    """search_smoothing scores each candidate as the kernels run it: its choice has the least error
    of all candidates (no smoothing included), measured here through qkernels.matmul."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 32)).astype(np.float32)
    x[:, [3, 17]] *= 50  # outlier channels
    weights = [rng.standard_normal((n, 32)).astype(np.float32) * 0.1 for n in (16, 8)]
    observer = quant.AbsMaxSampleObserver(every=2, max_rows=40)
    for batch in np.split(x, 3):
        observer.update(batch)
    np.testing.assert_array_equal(observer.rows(), x[::2][:40])  # every 2nd row overall, capped
    alphas = (0.25, 0.5, 0.75)
    s, alpha = quant.search_smoothing(observer.rows(), observer.channel_absmax(), weights, alphas,
                                      per_tensor=per_tensor)
    candidates = {None: np.ones(32, np.float32)} | {
        a: quant.smoothquant_scales(observer.channel_absmax(), weights, a) for a in alphas}
    np.testing.assert_array_equal(s, candidates[alpha])
    rows = observer.rows()
    errors = {a: _deployed_error(rows, weights, c, per_tensor) for a, c in candidates.items()}
    assert alpha is not None and errors[alpha] == pytest.approx(min(errors.values()), rel=1e-3)
    # without outliers smoothing has nothing to gain; a search of one harmful α keeps s = 1
    plain = rng.standard_normal((64, 32)).astype(np.float32)
    s, alpha = quant.search_smoothing(plain, np.abs(plain).max(axis=0), weights, (1.0,), per_tensor=True)
    assert alpha is None and (s == 1).all()
    with pytest.raises(qkernels.InvalidArgumentError, match="alphas"):
        quant.search_smoothing(plain, np.abs(plain).max(axis=0), weights, ())


def test_smoothing_search_scores_zero_point_weights_when_asked():
    """symmetric=False scores the candidates with zero-point weights, as they are then deployed: on
    skewed weights its choice has the least error with them, and differs from the symmetric one."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[:, 3] *= 30  # an outlier channel
    weights = [(rng.standard_normal((8, 16)) + 0.8).astype(np.float32)]  # skewed rows: zero points matter
    act, alphas = np.abs(x).max(axis=0), (0.2, 0.5, 0.8)
    candidates = {None: np.ones(16, np.float32)} | {a: quant.smoothquant_scales(act, weights, a) for a in alphas}
    chosen = {}
    for symmetric in (True, False):
        _, chosen[symmetric] = quant.search_smoothing(x, act, weights, alphas, per_tensor=True, symmetric=symmetric)
        errors = {a: _deployed_error(x, weights, c, True, symmetric) for a, c in candidates.items()}
        assert errors[chosen[symmetric]] == pytest.approx(min(errors.values()), rel=1e-3)
    assert chosen[True] != chosen[False]


def test_smoothing_search_on_all_zero_inputs():
    """Static activations of all-zero calibration inputs have a zero range: step 1, as deployed
    (it was 0, and every candidate's error NaN from 0 / 0)."""
    weights = [np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, alpha = quant.search_smoothing(np.zeros((4, 16), np.float32), np.zeros(16), weights, (0.5,),
                                          activation="tensor")
    assert alpha is None and (s == 1).all()


# ---------------------------------------------------------------- LLM.int8()


def _exact_weights(qw):
    return reference.dequantize(qw.data, qw.scales, qw.zero_points, qw.bits, qw.group_size, qw.offsets)


@settings(max_examples=examples(25))
@given(seed=st.integers(0, 2**32 - 1), n_outliers=st.integers(0, 4), threshold=st.sampled_from([3.0, 6.0]),
       format_v2=st.booleans())
def test_llm_int8_is_int8_on_regular_columns_plus_exact_outliers(seed, n_outliers, threshold, format_v2):
    rng = np.random.default_rng(seed)
    M, K = 5, 32
    x = np.clip(rng.standard_normal((2, M, K)), -2.9, 2.9).astype(np.float32)
    columns = rng.choice(K, n_outliers, replace=False)
    x[1, rng.integers(M), columns] = threshold * (1 + rng.random(n_outliers)) * rng.choice([-1, 1], n_outliers)
    qw = quant.rtn(rng.standard_normal((7, K)).astype(np.float32), bits=8)
    if format_v2:  # the outlier columns' weights with offsets, in groups of 12, 12 and 8
        qw = quant.rtn(rng.standard_normal((7, K)).astype(np.float32), bits=4, group_size=12)
        qw = replace(qw, offsets=raw_offsets(rng, qw.scales, 4))
    bias = rng.standard_normal(7).astype(np.float32)
    np.testing.assert_array_equal(quant.outlier_columns(x, threshold), np.sort(columns))
    y = quant.llm_int8_matmul(x, qw, threshold=threshold, bias=bias)
    regular = x.copy()
    regular[..., columns] = 0
    w = _exact_weights(qw)
    rows = x.reshape(-1, K).astype(np.float64)
    expected = (qkernels.matmul(regular, qw, mode="a8", bias=bias).astype(np.float64).reshape(-1, 7)
                + rows[:, columns] @ w[:, columns].T)
    assert y.shape == (2, M, 7) and y.dtype == np.float32
    np.testing.assert_array_equal(y.reshape(-1, 7), expected.astype(np.float32))


def test_llm_int8_is_exact_when_every_value_is_an_outlier_column():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 16)) * 50).astype(np.float32)
    x[0] = 7.0  # every column reaches the threshold in row 0
    qw = quant.rtn(rng.standard_normal((5, 16)).astype(np.float32), bits=8)
    exact = x.astype(np.float64) @ _exact_weights(qw).T
    np.testing.assert_array_equal(quant.llm_int8_matmul(x, qw), exact.astype(np.float32))
    assert not np.array_equal(qkernels.matmul(x, qw, mode="a8"), exact.astype(np.float32))


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_llm_int8_keeps_torch_in_torch_out():
    import torch

    x = torch.randn(3, 16)
    x[1, 2] = 9.0
    qw = quant.rtn(torch.randn(4, 16), bits=8)
    y = quant.llm_int8_matmul(x, qw)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (3, 4)
    np.testing.assert_array_equal(y.numpy(), quant.llm_int8_matmul(x.numpy(), qw))
    for dtype in (torch.float16, torch.bfloat16):
        x_low = x.to(dtype)
        y_low = quant.llm_int8_matmul(x_low, qw)
        assert y_low.dtype == dtype and y_low.shape == (3, 4)
        # Against the same input values in float32: only the output's rounding to dtype differs (half
        # an ulp, 2^-8 relative for bfloat16). Against x itself the rounding of the input can move a
        # quantized activation by a step, more than any fixed tolerance allows on random data.
        y_same = quant.llm_int8_matmul(x_low.float(), qw)
        np.testing.assert_allclose(y_low.float().numpy(), y_same.numpy(), rtol=2**-7)


def test_llm_int8_takes_what_matmul_takes():
    qw = quant.rtn(np.ones((2, 4), np.float32), bits=8)
    with pytest.raises(qkernels.DtypeError):
        quant.llm_int8_matmul(np.full((1, 4), 9.0), qw)  # float64, like matmul
    with pytest.raises(qkernels.InvalidArgumentError, match="last dimension"):
        quant.llm_int8_matmul(np.full((1, 3), 9.0, np.float32), qw)


@pytest.mark.parametrize("make, option", [(lambda v: quant.MSEObserver(grid=v), "grid"),
                                          (lambda v: quant.AbsMaxSampleObserver(every=v), "every"),
                                          (lambda v: quant.AbsMaxSampleObserver(max_rows=v), "max_rows")])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_observer_options_are_positive_integers(make, option, value):
    with pytest.raises(qkernels.InvalidArgumentError, match=option):  # a float once failed later, in update()
        make(value)
