"""AWQ (qkernels.quant.awq_scales, quantize_model(method="awq")): the statistics, the searched
error against the error computed from stored activations, never worse than RTN, and the folds
leaving the float model's function unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import qkernels
from qkernels import InvalidArgumentError, dequantize, quant
from qkernels.quant._common import dequantize_exact
from qkernels.quant.awq import ActivationStatistics, _round_trip, alphas, awq_scales


def outlier_inputs(rng, M=256, K=64):
    """Inputs with a few channels 30 times larger than the rest (what AWQ protects)."""
    x = rng.normal(size=(M, K))
    x[:, :4] *= 30
    return x


def output_error(x, w, w_hat):
    return float(np.sum((x @ (w_hat - w).T) ** 2))


def test_statistics_are_mean_abs_and_second_moment():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    stats = ActivationStatistics(16)
    stats.update(x[:20])
    stats.update(x[20:].reshape(3, 10, 16))
    # read as float32, summed in float64
    np.testing.assert_allclose(stats.mean_abs(), np.abs(x.astype(np.float32)).mean(axis=0, dtype=np.float64),
                               rtol=1e-12)
    h = 2 / 50 * x.T @ x
    # summed in float32 (HessianAccumulator): within float32 rounding of the largest entries
    np.testing.assert_allclose(stats.hessian(), h, rtol=0, atol=1e-5 * np.abs(h).max())
    with pytest.raises(InvalidArgumentError, match="no data"):
        ActivationStatistics(4).mean_abs()


@pytest.mark.parametrize("group_size, symmetric", [(32, False), (16, True), (None, False)])
def test_search_error_is_the_output_error_and_beats_rtn(group_size, symmetric):
    rng = np.random.default_rng(1)
    x = outlier_inputs(rng)
    # two layers reading x (q and k, say)
    weights = [rng.normal(size=(48, 64)).astype(np.float32), rng.normal(size=(24, 64)).astype(np.float32)]
    stats = ActivationStatistics(64)
    stats.update(x)
    result = awq_scales(weights, stats.mean_abs(), stats.hessian(), bits=4, group_size=group_size,
                        symmetric=symmetric, grid=10)
    for alpha, loss in zip(alphas(10), result.losses):
        s = np.maximum(np.abs(x).mean(axis=0), 1e-4) ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        direct = 0.0
        for w in weights:
            qw = quant.rtn(quant.smooth_weight(w, s), bits=4, group_size=group_size, symmetric=symmetric)
            direct += output_error(x, w, dequantize(qw).astype(np.float64) / s)
        assert loss == pytest.approx(2 / len(x) * direct, rel=1e-4)  # H = 2/n·XᵀX
    rtn_error = sum(output_error(x, w, dequantize(quant.rtn(w, bits=4, group_size=group_size, symmetric=symmetric))
                                 .astype(np.float64)) for w in weights)
    assert result.losses[0] == pytest.approx(2 / len(x) * rtn_error, rel=1e-4)  # α = 0 is RTN
    assert result.alpha > 0 and result.losses.min() < 0.9 * result.losses[0]  # outliers: AWQ wins clearly
    assert result.scales.dtype == np.float32 and result.scales.shape == (64,)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16, 24, 200])  # 24 leaves a shorter last group; 200 > K
def test_search_round_trip_is_the_quantizer(bits, symmetric, group_size):
    """The search's NumPy quantizer (on Wᵀ) gives exactly what rtn's integers and scales dequantize to."""
    rng = np.random.default_rng(2)
    w = (rng.standard_t(3, size=(6, 64)) * 0.05).astype(np.float32)
    w[0] = 0  # a zero range
    w[1, :32] = np.abs(w[1, :32])  # all positive: the asymmetric range widened to hold zero
    expected = dequantize_exact(quant.rtn(w, bits=bits, group_size=group_size, symmetric=symmetric),
                                      np.arange(64))
    got = _round_trip(np.ascontiguousarray(w.T), bits, group_size, symmetric)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got.T, expected)


def test_search_arguments_are_checked():
    w, h = np.ones((4, 8)), np.eye(8)
    for grid in (0, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="grid"):
            awq_scales([w], np.ones(8), h, grid=grid)
    with pytest.raises(InvalidArgumentError, match="weights is empty"):
        awq_scales([], np.ones(8), h)
    with pytest.raises(InvalidArgumentError, match="mean_abs"):
        awq_scales([w], np.ones(7), h)
    with pytest.raises(InvalidArgumentError, match="bits"):
        awq_scales([w], np.ones(8), h, bits=3)
    for group_size in (0, -8, 2.5, True):  # as rtn refuses them (0 was a ZeroDivisionError)
        with pytest.raises(InvalidArgumentError, match="group_size"):
            awq_scales([w], np.ones(8), h, group_size=group_size)


# ---------------------------------------------------------------- on a model

def _tiny_llama(seed=0):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_folded_scales_keep_the_float_model():
    """The scaled weights, with s divided out of the norms, up_proj and v_proj, compute the same
    function as the original float model (before any rounding)."""
    import torch

    from qkernels.torch import linear_layers
    from qkernels.torch.awq import awq_groups, awq_weights
    from qkernels.torch.model import divide_output

    model = _tiny_llama()
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids).logits
    layers = linear_layers(model, skip=["lm_head"])
    producers = [producer for producer, _ in awq_groups(model, layers)]
    assert "model.layers.0.self_attn.v_proj" in producers  # no grouped-query attention here: v → o folds
    assert "model.layers.1.mlp.up_proj" in producers and "model.layers.1.input_layernorm" in producers
    scaled, outside = awq_weights(model, layers, [ids], bits=4, group_size=32, symmetric=False, grid=5)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)  # changed only below
        for name, (weight, _) in scaled.items():
            layers[name].weight.copy_(weight)
        for producer, s in outside:
            divide_output(model, producer, s)
        assert not torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(64))  # folded
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_quantize_model_awq():
    torch = pytest.importorskip("torch")

    import qkernels.torch as qt

    model = _tiny_llama()
    calib = [torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    quantized = qt.quantize_model(copy.deepcopy(model), "awq", group_size=32, calib_data=calib,
                                  awq_options={"grid": 4})
    layers = qt.quantized_layers(quantized)
    assert len(layers) == 15 and {layer.bits for layer in layers.values()} == {4}
    assert all(layer.input_scale is None for layer in layers.values())  # every scale folded
    with pytest.raises(InvalidArgumentError, match="needs calib_data"):
        qt.quantize_model(copy.deepcopy(model), "awq")
    with pytest.raises(InvalidArgumentError, match="awq_options"):
        qt.quantize_model(copy.deepcopy(model), "rtn", awq_options={"grid": 4})



def test_a_failed_quantize_model_awq_leaves_the_model_as_it_was():
    """The output head cannot be quantized (a NaN) and comes last: the norms and layers AWQ divides
    its scales out of used to stay divided."""
    torch = pytest.importorskip("torch")

    import qkernels.torch as qt

    model = _tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    state = copy.deepcopy(model.state_dict())
    calib = [torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(0))]
    with pytest.raises(qkernels.NonFiniteError):
        qt.quantize_model(model, "awq", group_size=32, calib_data=calib, awq_options={"grid": 4})
    assert not qt.quantized_layers(model)
    assert all(torch.equal(model.state_dict()[key].nan_to_num(), value.nan_to_num()) for key, value in state.items())


def test_quantize_model_awq_leaves_a_group_calibration_never_reaches_unscaled():
    """A norm group whose layers no calibration input reaches (it raised a KeyError) keeps s = 1:
    its layers are plain RTN, its norm unchanged, with a warning naming them."""
    torch = pytest.importorskip("torch")

    import qkernels.torch as qt

    class GPT2Block(torch.nn.Module):  # GPT-2's class and names: ln_1 → attn.c_attn, ln_2 → mlp.c_fc (pre_norm_groups)
        def __init__(self, mlp: bool):
            super().__init__()
            self.ln_1, self.ln_2 = torch.nn.LayerNorm(32), torch.nn.LayerNorm(32)
            self.attn, self.mlp = torch.nn.Module(), torch.nn.Module()
            self.attn.c_attn, self.mlp.c_fc = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
            self.use_mlp = mlp

        def forward(self, x):
            x = x + self.attn.c_attn(self.ln_1(x))
            return x + self.mlp.c_fc(self.ln_2(x)) if self.use_mlp else x

    torch.manual_seed(0)
    model = torch.nn.Sequential(GPT2Block(mlp=True), GPT2Block(mlp=False)).eval()
    calib = [torch.randn(16, 32, generator=torch.Generator().manual_seed(i)) * 3 for i in range(2)]
    with pytest.warns(UserWarning, match=r"1 layer\(s\), 1\.mlp\.c_fc: AWQ leaves them unscaled"):
        quantized = qt.quantize_model(copy.deepcopy(model), "awq", group_size=16, calib_data=calib,
                                      awq_options={"grid": 4})
    assert len(qt.quantized_layers(quantized)) == 4
    assert torch.equal(quantized[1].ln_2.weight, model[1].ln_2.weight)
    expected = quant.rtn(model[1].mlp.c_fc.weight.detach(), bits=4, group_size=16)
    assert np.array_equal(quantized[1].mlp.c_fc.qdata.numpy(), expected.data)
    assert np.array_equal(quantized[1].mlp.c_fc.scales.numpy(), expected.scales)
