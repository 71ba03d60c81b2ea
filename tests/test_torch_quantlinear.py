"""QuantLinear and the torch.library custom ops: outputs against the NumPy reference, opcheck,
torch.compile without graph breaks, devices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qk_support as qs
from qkernels import InvalidArgumentError, quantize_weights, reference

torch = pytest.importorskip("torch", reason="the PyTorch integration needs torch")
qt = pytest.importorskip("qkernels.torch")
QuantLinear = qt.QuantLinear


def _weights(rng, N, K, bits, group_size, symmetric, offsets=False):
    """Quantized random weights; offsets: with per-group offsets (format v2)."""
    w = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    qw = quantize_weights(w, bits=bits, group_size=group_size, symmetric=symmetric)
    return replace(qw, offsets=qs.raw_offsets(rng, qw.scales, bits)) if offsets else qw


def _check(y, x, qw, mode, bias, dtype):
    """y against reference.matmul on the rows of x (docs/numerics.md tolerances)."""
    rows = qs.to_rep(x, dtype).reshape(-1, qw.K)
    reference.assert_matmul_close(
        qs.to_rep(y, dtype).reshape(-1, qw.N), rows, dtype, qw.data, qw.scales, qw.zero_points, qw.bits,
        qw.group_size, mode, None if bias is None else bias.numpy(), qw.offsets,
    )


@settings(max_examples=qs.examples(30))
@given(
    seed=st.integers(0, 2**32 - 1), N=st.integers(1, 40), groups=st.integers(1, 3), bits=st.sampled_from([4, 8]),
    group_size=st.sampled_from([2, 8, 32]), symmetric=st.booleans(), activation=st.sampled_from(["float", "token"]),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]), leading=st.sampled_from([(1,), (3,), (2, 5)]),
    with_bias=st.booleans(), short=st.integers(0, 31), offsets=st.booleans(),
)
def test_quantlinear_matches_reference(seed, N, groups, bits, group_size, symmetric, activation, dtype, leading,
                                       with_bias, short, offsets):
    """Format v2 too: offsets, and a last group shorter by `short` columns."""
    rng = np.random.default_rng(seed)
    K = qs.even_for_4_bit(groups * group_size + short % group_size, group_size, bits)
    qw = _weights(rng, N, K, bits, group_size, symmetric, offsets)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)) if with_bias else None
    layer = QuantLinear(qw, bias, activation=activation)
    x = qs.to_kind(qs.encode(rng.standard_normal(leading + (K,)) * 3, dtype), dtype, "torch")
    y = layer(x)
    assert y.shape == leading + (N,) and y.dtype == x.dtype
    _check(y, x, qw, "a16" if activation == "float" else "a8", bias, dtype)


def test_smoothing_and_static_tensor_activations():
    """input_scale multiplies x; "tensor" rounds it to the int8 grid of act_clip / 127, clamped."""
    rng = np.random.default_rng(1)
    qw = _weights(rng, 16, 64, 8, 64, True)
    scale = torch.from_numpy(rng.uniform(0.5, 2.0, 64).astype(np.float32))
    layer = QuantLinear(qw, activation="tensor", input_scale=scale, act_clip=2.5)
    x = torch.from_numpy(rng.standard_normal((7, 64)).astype(np.float32) * 2)
    step = np.float32(2.5) / np.float32(127)
    smoothed = x.numpy() * scale.numpy()
    rounded = (np.clip(np.rint(smoothed / step), -127, 127) * step).astype(np.float32)
    assert np.abs(smoothed).max() > 2.5  # the clip is exercised
    _check(layer(x), torch.from_numpy(rounded), qw, "a16", None, "float32")


def test_static_activations_with_a_zero_clip_have_step_one():
    """act_clip 0 (calibration inputs all zero) is a zero range: step 1 (docs/numerics.md §2), not NaN."""
    rng = np.random.default_rng(1)
    qw = _weights(rng, 16, 64, 8, 64, True)
    layer = QuantLinear(qw, activation="tensor", act_clip=0.0)
    x = torch.from_numpy(rng.standard_normal((7, 64)).astype(np.float32) * 200)
    rounded = np.clip(np.rint(x.numpy()), -127, 127).astype(np.float32)
    _check(layer(x), torch.from_numpy(rounded), qw, "a16", None, "float32")


def test_outlier_op_is_llm_int8():
    from qkernels.quant import llm_int8_matmul

    rng = np.random.default_rng(2)
    qw = _weights(rng, 24, 64, 8, 64, True)
    x = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    x[2, [3, 40]] = torch.tensor([9.0, -12.0])
    bias = torch.from_numpy(rng.standard_normal(24).astype(np.float32))
    layer = QuantLinear(qw, bias, activation="token", outlier_threshold=6.0)
    assert torch.equal(layer(x), llm_int8_matmul(x, qw, threshold=6.0, bias=bias))
    assert "outliers |x| >= 6.0" in repr(layer)  # the rule: |x| ≥ threshold is an outlier


def _op_samples():
    """(x, data, scales, zero_points, bias, bits, group_size) and the offsets (None, or a tensor) of
    some weights; the last has offsets and a shorter last group (format v2)."""
    rng = np.random.default_rng(3)
    out = []
    for K, bits, group_size, symmetric, with_bias, offsets in [
        (32, 4, 16, True, False, False), (32, 8, 32, False, True, False), (32, 4, 32, False, True, False),
        (40, 4, 16, False, True, True),
    ]:
        qw = _weights(rng, 12, K, bits, group_size, symmetric, offsets)
        zp = None if qw.zero_points is None else torch.from_numpy(qw.zero_points)
        bias = torch.randn(12) if with_bias else None
        x = torch.randn(2, 3, K)
        out.append(((x, torch.from_numpy(qw.data), torch.from_numpy(qw.scales), zp, bias, bits, group_size),
                    None if qw.offsets is None else torch.from_numpy(qw.offsets)))
    return out


@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_opcheck_matmul(mode):
    for sample, offsets in _op_samples():
        torch.library.opcheck(torch.ops.qkernels.matmul.default, sample + (mode, offsets))
        if offsets is None:  # calls made before format v2 take no offsets
            torch.library.opcheck(torch.ops.qkernels.matmul.default, sample + (mode,))


def test_opcheck_matmul_outliers():
    for sample, offsets in _op_samples():
        x = sample[0].clone()
        x[0, 1, 5] = 10.0
        torch.library.opcheck(torch.ops.qkernels.matmul_outliers.default, (x,) + sample[1:] + (6.0, offsets))


def test_opcheck_dequantize():
    for sample, offsets in _op_samples():
        torch.library.opcheck(torch.ops.qkernels.dequantize.default, sample[1:4] + sample[5:] + (offsets,))


def _mixed_model():
    """Four QuantLinears, one of each kind of forward."""
    rng = np.random.default_rng(4)
    w = lambda N, K, G, sym=True, offsets=False: _weights(rng, N, K, 4 if G < K else 8, G, sym, offsets)  # noqa: E731
    return torch.nn.Sequential(
        QuantLinear(w(48, 32, 12, False, True), torch.randn(48)),  # format v2: offsets, groups of 12, 12 and 8
        torch.nn.GELU(),
        QuantLinear(w(40, 48, 48), activation="token"),
        torch.nn.LayerNorm(40),
        QuantLinear(w(40, 40, 40), activation="tensor", input_scale=torch.rand(40) + 0.5, act_clip=3.0),
        QuantLinear(w(8, 40, 40), torch.randn(8), activation="token", outlier_threshold=1.5),
    )


def test_compile_without_graph_breaks():
    model = _mixed_model()
    x = torch.randn(3, 5, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a break raises
    assert torch.equal(compiled(x), eager)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_input_on_another_device_than_the_weights_is_refused():
    """A CPU model never takes a device input (the meta device stands for any other), nor moves it."""
    model = _mixed_model()
    with pytest.raises(ValueError, match="never moves activations between host and device"):
        model(torch.randn(2, 32, device="meta"))


def test_weight_changed_in_place_is_seen():
    """The ops cache a QuantizedWeight per layer; an in-place change of the buffers replaces it."""
    rng = np.random.default_rng(5)
    a = QuantLinear(_weights(rng, 8, 32, 4, 16, True))
    b = QuantLinear(_weights(rng, 8, 32, 4, 16, True))
    x = torch.randn(2, 32)
    before = a(x)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), before)


def test_loading_a_state_leaves_the_quantized_weight_it_was_built_from_alone():
    """The buffers were views of the QuantizedWeight's arrays: loading a state changed the caller's
    weights, whose cached pack then disagreed with their own arrays."""
    rng = np.random.default_rng(6)
    qw = _weights(rng, 8, 32, 4, 16, False)
    arrays = [a.copy() for a in (qw.data, qw.scales, qw.zero_points)]
    layer = QuantLinear(qw)
    layer.load_state_dict(QuantLinear(_weights(rng, 8, 32, 4, 16, False)).state_dict())
    assert all(np.array_equal(a, b) for a, b in zip(arrays, (qw.data, qw.scales, qw.zero_points)))


def test_a_refused_state_changes_no_buffer():
    """A state of another structure (here another activation) was refused after torch had copied
    its buffers into the layer."""
    rng = np.random.default_rng(7)
    layer = QuantLinear(_weights(rng, 8, 32, 4, 16, True))
    other = QuantLinear(_weights(rng, 8, 32, 4, 16, True), activation="token")
    before = {k: v.clone() for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(InvalidArgumentError, match="structure"):
        layer.load_state_dict(other.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor))


def test_weights_at_a_reused_address_are_not_taken_for_the_old_ones(monkeypatch):
    """The ops recognised a layer's weights by address, shape and version counter: new tensors at a
    freed address (a device allocator's, after model.cpu() then .cuda()) holding other values were
    taken for the old ones. Here the new tensor is a second view of a host buffer rewritten through
    NumPy (version 0, as a new tensor's), and the QuantizedWeight holds copies, as it holds host
    copies of device tensors."""
    from qkernels.torch import ops as qops

    canonical = qops._canonical
    monkeypatch.setattr(qops, "_canonical", lambda data, *rest: canonical(data.clone(), *rest))
    q = np.random.default_rng(8).integers(-127, 128, (8, 32), dtype=np.int8)
    scales, x = torch.ones(8, 1), torch.randn(2, 32)
    handle = qops.WeightHandle()
    buffer = q.copy()
    old = torch.from_numpy(buffer)
    qops.register_weight(old, handle)
    torch.ops.qkernels.matmul(x, old, scales, None, None, 8, 32, "a16")
    buffer[:] = -q
    new = torch.from_numpy(buffer)
    assert (new.data_ptr(), new._version) == (old.data_ptr(), old._version)
    qops.register_weight(new, handle)  # as a module's .cuda() does
    y = torch.ops.qkernels.matmul(x, new, scales, None, None, 8, 32, "a16")
    assert torch.equal(y, torch.ops.qkernels.matmul(x, new.clone(), scales, None, None, 8, 32, "a16"))


@pytest.mark.parametrize("activation,threshold", [("token", None), ("token", 1.0), ("tensor", None)])
def test_input_gradient_is_through_the_dequantized_weights(activation, threshold):
    """Straight through every rounding: the int8 activations as well as the weights."""
    rng = np.random.default_rng(6)
    qw = _weights(rng, 12, 36, 4, 16, False, offsets=True)  # format v2: offsets, groups of 16, 16 and 4
    layer = QuantLinear(qw, torch.randn(12), activation=activation, outlier_threshold=threshold,
                        act_clip=2.0 if activation == "tensor" else None)
    x = torch.randn(3, 36, requires_grad=True)
    grad_y = torch.randn(3, 12)
    layer(x).backward(grad_y)
    w = reference.dequantize(qw.data, qw.scales, qw.zero_points, qw.bits, qw.group_size, qw.offsets)
    np.testing.assert_allclose(x.grad.numpy(), grad_y.numpy() @ w, rtol=1e-5, atol=1e-5)
    for sample, offsets in _op_samples()[::3]:
        args = (sample[0].requires_grad_(),) + sample[1:] + ("a16", offsets)
        torch.library.opcheck(torch.ops.qkernels.matmul.default, args)


@pytest.mark.parametrize("activation,threshold", [("float", None), ("token", None), ("token", 1.0), ("tensor", None)])
def test_eager_inference_calls_the_implementation_with_the_ops_result(activation, threshold, monkeypatch):
    """Without autograd or compilation QuantLinear skips the dispatcher, and gets what the op gives."""
    rng = np.random.default_rng(9)
    qw = _weights(rng, 12, 32, 4, 16, False)
    layer = QuantLinear(qw, torch.randn(12), activation=activation, outlier_threshold=threshold,
                        act_clip=2.0 if activation == "tensor" else None)
    x = torch.randn(3, 32)
    assert qt.ops.use_impl(x, None) and not qt.ops.use_impl(x, torch.zeros(12, requires_grad=True))
    with torch.no_grad():
        assert qt.ops.use_impl(x.clone().requires_grad_())  # no_grad: nothing to record
        direct = layer(x)
        monkeypatch.setattr(qt.ops, "use_impl", lambda *tensors: False)
        assert torch.equal(layer(x), direct)


def test_a_buffer_made_a_parameter_is_read():
    """forward reads the buffers from their dict; one replaced by a Parameter lives elsewhere."""
    rng = np.random.default_rng(10)
    layer = QuantLinear(_weights(rng, 12, 32, 4, 16, False), torch.randn(12), input_scale=torch.rand(32) + 0.5)
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = layer(x)
        layer.bias = torch.nn.Parameter(layer.bias + 1)
        layer.input_scale = torch.nn.Parameter(layer.input_scale.clone())
        assert "bias" not in layer._buffers and "input_scale" not in layer._buffers
        torch.testing.assert_close(layer(x), before + 1)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_the_ops_run_whenever_something_watches_the_call():
    """A default-device mode, vmap and torch.jit.trace see the call only through the op."""
    x = torch.randn(2, 4)
    with torch.device("meta"):
        assert not qt.ops.use_impl(x)
    seen = []
    torch.func.vmap(lambda row: (seen.append(qt.ops.use_impl(row)), row)[1])(x)
    torch.jit.trace(lambda t: (seen.append(qt.ops.use_impl(t)), t * 2)[1], (x,), check_trace=False)
    assert seen == [False, False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_keeps_the_quantized_format(dtype):
    """model.half() / .to(bfloat16) casts activations' dtypes, not the float32 scales and bias."""
    rng = np.random.default_rng(8)
    qw = _weights(rng, 12, 32, 4, 16, True)
    layer = QuantLinear(qw, torch.randn(12), input_scale=torch.ones(32)).to(dtype)
    assert layer.scales.dtype == torch.float32 and layer.bias.dtype == torch.float32
    x = torch.randn(3, 32).to(dtype)
    assert torch.equal(layer(x), QuantLinear(qw, layer.bias, input_scale=torch.ones(32))(x))


def test_empty_batch_and_wrong_width():
    """No rows gives no rows, as nn.Linear does; a wrong K fails already when traced (fake tensors)."""
    rng = np.random.default_rng(9)
    layer = QuantLinear(_weights(rng, 12, 32, 8, 32, True))
    assert layer(torch.randn(0, 32)).shape == (0, 12)
    with pytest.raises(InvalidArgumentError, match="K=32"):  # no rows, but the wrong K: as with rows
        layer(torch.randn(0, 31))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(RuntimeError, match="input features"):
            layer(torch.randn(2, 31))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quant_embedding_rounds_once_to_its_dtype(dtype):
    """Rows in bfloat16 / float16 are qkernels.dequantize's, rounded once: float32 first, then the
    dtype, rounds some values twice (here 11 of 2M in bfloat16, 118 in float16)."""
    import qkernels
    from qkernels.torch.embedding import QuantEmbedding

    w = torch.from_numpy(np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32))
    qw = quantize_weights(w, bits=8, group_size=32, symmetric=False)
    rows = QuantEmbedding(qt.QuantLinear(qw), dtype=dtype)(torch.arange(2048))
    once = qkernels.dequantize(qw, str(dtype).removeprefix("torch."))
    assert rows.dtype == once.dtype == dtype and torch.equal(rows.view(torch.int16), once.view(torch.int16))
    twice = qkernels.dequantize(qw, "float32").to(dtype)
    assert not torch.equal(rows, twice)  # the double rounding avoided


def test_quant_embedding_ids_out_of_range_are_errors_as_in_nn_embedding():
    """A negative id raised nothing: indexing took it from the end of the table."""
    from qkernels.torch.embedding import QuantEmbedding

    qw = quantize_weights(torch.randn(6, 32), bits=4, group_size=16, symmetric=False)
    table = QuantEmbedding(qt.QuantLinear(qw))
    rows = table(torch.tensor([[5, 0], [2, 2]]))
    assert rows.shape == (2, 2, 32) and torch.equal(rows[0, 0], table(torch.tensor([5]))[0])
    for ids in (torch.tensor([-1]), torch.tensor([6])):
        with pytest.raises(IndexError):
            table(ids)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quant_embedding_follows_a_half_precision_model(dtype):
    """model.half() cast the embedding's float32 scales too, and every lookup failed."""
    from qkernels.torch.embedding import QuantEmbedding

    import qkernels

    qw = quantize_weights(torch.randn(16, 32), bits=4, group_size=16, symmetric=False)
    table = QuantEmbedding(qt.QuantLinear(qw))
    ids = torch.tensor([[3, 0], [15, 7]])
    expected = qkernels.dequantize(qw, str(dtype).removeprefix("torch."))[ids]  # rounded once
    table.to(dtype)
    assert table.scales.dtype == torch.float32 and torch.equal(table(ids), expected)
    assert table(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2, 32)  # as nn.Embedding: empty


def test_quant_embedding_loads_a_state_of_another_lookup_dtype_or_without_extra_state():
    """The lookups' dtype is not structure (a .half() model's state loads into a float one, as with
    nn.Embedding), and a state saved before QuantEmbedding had extra state still loads."""
    from qkernels.torch.embedding import QuantEmbedding

    qw = quantize_weights(torch.randn(16, 32), bits=4, group_size=16, symmetric=False)
    half = torch.nn.Sequential(QuantEmbedding(qt.QuantLinear(qw))).half()
    target = torch.nn.Sequential(QuantEmbedding(qt.QuantLinear(quantize_weights(torch.randn(16, 32), bits=4,
                                                                                  group_size=16, symmetric=False))))
    target.load_state_dict(half.state_dict())
    assert target[0].dtype == torch.float32 and target(torch.tensor([1, 5])).dtype == torch.float32
    assert all(torch.equal(getattr(target[0], name), getattr(half[0], name)) for name in ("qdata", "scales"))
    old = {key: value for key, value in half.state_dict().items() if not key.endswith("_extra_state")}
    target.load_state_dict(old)
