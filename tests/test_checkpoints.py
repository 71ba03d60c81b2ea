"""GPTQ and AWQ checkpoints (qkernels.checkpoints): hand-worked examples written from each format's
description, bit by bit; an independent implementation of each (AutoGPTQ's pure-PyTorch QuantLinear,
AutoAWQ's unpacking, when installed: .ci/run installs them without dependencies); round trips; errors."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from qkernels import InvalidArgumentError, QuantizedWeight, dequantize
from qkernels.quant import rtn

torch = pytest.importorskip("torch", reason="checkpoints need torch")
pytest.importorskip("transformers", reason="checkpoints build transformers models")
pytest.importorskip("safetensors", reason="checkpoints are safetensors files")
qt = pytest.importorskip("qkernels.torch")
from qkernels.checkpoints import awq_format, gptq_format  # noqa: E402


def int32_words(*hex_words: int) -> torch.Tensor:
    return torch.from_numpy(np.array(hex_words, dtype=np.uint32).view(np.int32))


def weights_in_input_order(layer) -> torch.Tensor:
    """The layer's dequantized W [N, K] with column k multiplying input k (undoing act-order's permutation)."""
    w = dequantize(layer.qweight)
    if layer.input_permutation is None:
        return w
    original = torch.empty_like(w)
    original[:, layer.input_permutation] = w
    return original


# ---------------------------------------------------------------- hand-worked examples

# GPTQ, 4 bits, K = 8 inputs, N = 8 outputs, group_size 4 (2 groups). qweight [K/8, N] = [1, 8]: the
# word of output n holds q[n, k] in bits 4k..4k+3. Output 0: q = 1, 2, ..., 8 -> 0x87654321;
# output 1: q[1, 0] = 15 -> 0x0000000F; output 7: q[7, 7] = 1 -> 0x10000000; the rest 0.
GPTQ_QWEIGHT = int32_words(0x87654321, 0x0000000F, 0, 0, 0, 0, 0, 0x10000000).reshape(1, 8)
# qzeros [2 groups, N/8] = [2, 1]: output n's zero point in bits 4n..4n+3. Group 0: every z = 8;
# group 1: z = 1, 2, ..., 8 for outputs 0..7. v1 stores z - 1, v2 z itself.
GPTQ_QZEROS = {"gptq": int32_words(0x77777777, 0x76543210).reshape(2, 1),
               "gptq_v2": int32_words(0x88888888, 0x87654321).reshape(2, 1)}
GPTQ_SCALES = torch.tensor([[0.5] * 8, [0.25] * 8], dtype=torch.float16)  # [groups, N]
# w[n, k] = scale[g, n] * (q[n, k] - z[g, n]), g = k // 4
GPTQ_ROWS = {
    0: [0.5 * (1 - 8), 0.5 * (2 - 8), 0.5 * (3 - 8), 0.5 * (4 - 8), 0.25 * (5 - 1), 0.25 * (6 - 1), 0.25 * (7 - 1),
        0.25 * (8 - 1)],
    1: [0.5 * (15 - 8), -4.0, -4.0, -4.0, 0.25 * -2, 0.25 * -2, 0.25 * -2, 0.25 * -2],
    7: [-4.0, -4.0, -4.0, -4.0, 0.25 * -8, 0.25 * -8, 0.25 * -8, 0.25 * (1 - 8)],
}


@pytest.mark.parametrize("checkpoint_format", gptq_format.FORMATS)
def test_gptq_hand_worked(checkpoint_format):
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS[checkpoint_format], "scales": GPTQ_SCALES,
               "g_idx": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.int32)}
    layer = gptq_format.layer_from_gptq(tensors, bits=4, group_size=4, checkpoint_format=checkpoint_format)
    assert layer.input_permutation is None and layer.zero_points is not None
    w = weights_in_input_order(layer)
    for n, row in GPTQ_ROWS.items():
        assert w[n].tolist() == row
    back = gptq_format.layer_to_gptq(layer, checkpoint_format=checkpoint_format)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


def test_gptq_act_order_hand_worked():
    # The same integers, but act-order put inputs 1, 3, 4, 7 in group 0 and 0, 2, 5, 6 in group 1.
    g_idx = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.int32)
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS["gptq"], "scales": GPTQ_SCALES, "g_idx": g_idx}
    layer = gptq_format.layer_from_gptq(tensors, bits=4, group_size=4)
    assert layer.input_permutation.tolist() == [1, 3, 4, 7, 0, 2, 5, 6]  # group 0's inputs, then group 1's
    w = weights_in_input_order(layer)
    # output 0: q = 1..8; inputs in group 0 have z = 8, scale 0.5; in group 1 z = 1, scale 0.25
    assert w[0].tolist() == [0.25 * 0, 0.5 * -6, 0.25 * 2, 0.5 * -4, 0.5 * -3, 0.25 * 5, 0.25 * 6, 0.5 * 0]
    x = torch.randn(3, 8, dtype=torch.float64).float()
    assert torch.allclose(layer(x), x @ w.T, rtol=1e-5, atol=1e-6)
    back = gptq_format.layer_to_gptq(layer)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


def test_gptq_8_bit_hand_worked():
    # 8 bits: four fields a word. K = 4, N = 4, one group (group_size -1). qweight [1, 4]: output 0
    # holds q = 0x01, 0x80, 0xFF, 0x7F; zero points (v2) 128 for every output; scale 2^-4.
    tensors = {"qweight": int32_words(0x7FFF8001, 0x80808080, 0x80808080, 0x80808080).reshape(1, 4),
               "qzeros": int32_words(0x80808080).reshape(1, 1),
               "scales": torch.full((1, 4), 0.0625, dtype=torch.float16)}
    layer = gptq_format.layer_from_gptq(tensors, bits=8, group_size=-1, checkpoint_format="gptq_v2")
    assert layer.zero_points is None  # every zero point at 128: symmetric
    w = weights_in_input_order(layer)
    assert w[0].tolist() == [0.0625 * (1 - 128), 0.0, 0.0625 * (255 - 128), 0.0625 * (127 - 128)]
    assert w[1:].abs().max() == 0


# AWQ (GEMM), 4 bits, K = 4 inputs, N = 8 outputs, one group of 4. qweight [K, N/8] = [4, 1]: the
# word of input k holds output ORDER[i] = (0, 2, 4, 6, 1, 3, 5, 7)[i] in bits 4i..4i+3. Input 0:
# q[n, 0] = n -> nibbles 0, 2, 4, 6, 1, 3, 5, 7 -> 0x75316420. Input 1: q[1, 1] = 15, output 1 is
# nibble 4 -> 0x000F0000. Inputs 2, 3: every q = 8 -> 0x88888888. qzeros [1, 1]: z = 8 except
# z[6] = 3, output 6 is nibble 3 -> 0x88883888. Scales 0.5.
AWQ_TENSORS = {"qweight": int32_words(0x75316420, 0x000F0000, 0x88888888, 0x88888888).reshape(4, 1),
               "qzeros": int32_words(0x88883888).reshape(1, 1),
               "scales": torch.full((1, 8), 0.5, dtype=torch.float16)}


def test_awq_hand_worked():
    layer = awq_format.layer_from_awq(AWQ_TENSORS, group_size=4)
    w = weights_in_input_order(layer)
    z = [8, 8, 8, 8, 8, 8, 3, 8]
    assert w[:, 0].tolist() == [0.5 * (n - z[n]) for n in range(8)]
    assert w[:, 1].tolist() == [0.5 * ((15 if n == 1 else 0) - z[n]) for n in range(8)]
    assert w[:, 2].tolist() == w[:, 3].tolist() == [0.5 * (8 - z[n]) for n in range(8)]
    back = awq_format.layer_to_awq(layer)
    assert all(torch.equal(back[key], AWQ_TENSORS[key]) for key in AWQ_TENSORS)


# ---------------------------------------------------------------- independent implementations


def shipped_module(package: str, relative: str):
    """A module file of an installed package, run on its own (not through the package's __init__,
    which imports CUDA extensions and training dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (.ci/run installs it with --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / relative
    module_spec = importlib.util.spec_from_file_location(f"_oracle_{package}_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def autogptq_layer(rng, *, bits, K, N, group_size, act_order, bias=False):
    """A layer packed by AutoGPTQ's QuantLinear ("cuda", whose CPU path is plain PyTorch): random
    integers, zero points 1..2^b−1 (v1 has no 0), float16 scales. Returns (its module, W [N, K])."""
    qlinear = shipped_module("auto_gptq", "nn_modules/qlinear/qlinear_cuda.py")
    G = K if group_size == -1 else group_size
    groups = -(-K // G)
    g_idx = torch.arange(K) // G
    if act_order:
        g_idx = g_idx[torch.from_numpy(rng.permutation(K))]
    scales = torch.from_numpy(rng.uniform(1e-3, 0.1, (groups, N))).half().float()
    zeros = torch.from_numpy(rng.integers(1, 1 << bits, (groups, N)))
    q = torch.from_numpy(rng.integers(0, 1 << bits, (K, N)))
    w = (scales[g_idx] * (q - zeros[g_idx])).T.contiguous()  # exact in float32
    linear = torch.nn.Linear(K, N, bias=bias)
    linear.weight.data = w
    if bias:
        linear.bias.data = torch.from_numpy(rng.normal(size=N)).half().float()
    layer = qlinear.QuantLinear(bits, group_size, K, N, bias, weight_dtype=torch.float32)
    layer.pack(linear, scales.T, zeros.T, g_idx.int())
    return layer, w


def autogptq_tensors(layer, checkpoint_format):
    tensors = {"qweight": layer.qweight, "qzeros": layer.qzeros.clone(), "scales": layer.scales.half(),
               "g_idx": layer.g_idx}
    if layer.bias is not None:
        tensors["bias"] = layer.bias.half()
    if checkpoint_format == "gptq_v2":  # GPTQModel's conversion: add 1 to every zero-point field
        ones = 0x11111111 if layer.bits == 4 else 0x01010101
        tensors["qzeros"] = tensors["qzeros"] + ones
    return tensors


@pytest.mark.parametrize("checkpoint_format", gptq_format.FORMATS)
@pytest.mark.parametrize("bits, K, N, group_size, act_order", [
    (4, 64, 32, 16, False), (4, 64, 32, 16, True), (4, 96, 64, 64, True), (4, 32, 32, -1, False),
    (8, 64, 32, 32, True), (8, 96, 32, -1, False),
])
def test_gptq_matches_autogptq(checkpoint_format, bits, K, N, group_size, act_order):
    rng = np.random.default_rng(K * N + bits)
    oracle, w = autogptq_layer(rng, bits=bits, K=K, N=N, group_size=group_size, act_order=act_order, bias=True)
    tensors = autogptq_tensors(oracle, checkpoint_format)
    layer = gptq_format.layer_from_gptq(tensors, bits=bits, group_size=group_size,
                                        checkpoint_format=checkpoint_format)
    # AutoGPTQ's own dequantization (its CPU forward, without the bias, on the identity: Wᵀ), bit for bit
    bias, oracle.bias = oracle.bias, None
    with torch.no_grad():
        theirs = oracle(torch.eye(K))
    oracle.bias = bias
    assert torch.equal(weights_in_input_order(layer).T, theirs)
    assert torch.equal(weights_in_input_order(layer), w)
    x = torch.from_numpy(rng.normal(size=(5, K))).float()
    with torch.no_grad():
        assert torch.allclose(layer(x), oracle(x), rtol=1e-4, atol=1e-4)
    # and back to the very same tensors
    back = gptq_format.layer_to_gptq(layer, checkpoint_format=checkpoint_format, group_size=group_size)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


@pytest.mark.parametrize("K, N, group_size", [(64, 32, 16), (128, 64, 128), (32, 16, -1)])
def test_awq_matches_autoawq(K, N, group_size):
    awq = shipped_module("awq", "utils/packing_utils.py")
    rng = np.random.default_rng(K + N)
    G = K if group_size == -1 else group_size
    q = rng.integers(0, 16, (N, K))
    z = rng.integers(0, 16, (N, K // G))
    scales = torch.from_numpy(rng.uniform(1e-3, 0.1, (K // G, N))).half()
    from qkernels.checkpoints._packed import canonical_weight

    canonical = canonical_weight(q, scales.T, z, 4, G)  # the integers through qkernels' own writer
    tensors = awq_format.layer_to_awq(qt.QuantLinear(canonical))
    # AutoAWQ reads back the integers written...
    iweight, izeros = awq.reverse_awq_order(*awq.unpack_awq(tensors["qweight"], tensors["qzeros"], 4), 4)
    assert torch.equal((iweight & 15).long().T, torch.from_numpy(q))
    assert torch.equal((izeros & 15).long().T, torch.from_numpy(z))
    # ...and its dequantization (float32 scales: exact) is qkernels' import of the same tensors
    theirs = awq.dequantize_gemm(tensors["qweight"], tensors["qzeros"], tensors["scales"].float(), 4, G)
    layer = awq_format.layer_from_awq(tensors, group_size=group_size)
    assert torch.equal(dequantize(layer.qweight).T, theirs)


# ---------------------------------------------------------------- models


def tiny_llama(seed=0, intermediate_size=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


IDS = torch.tensor([[1, 5, 9, 33, 2, 70, 11, 4, 8, 90]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_autogptq_model_loads_with_act_order():
    """Every linear layer of a tiny LLaMA packed by AutoGPTQ (act-order, v1): the loaded model's
    logits are those of the float model holding AutoGPTQ's dequantized weights."""
    rng = np.random.default_rng(7)
    reference, state = tiny_llama(), {}
    for name, module in qt.linear_layers(reference).items():
        oracle, w = autogptq_layer(rng, bits=4, K=module.in_features, N=module.out_features, group_size=32,
                                   act_order=True)
        module.weight.data = w
        state |= {f"{name}.{key}": value for key, value in autogptq_tensors(oracle, "gptq").items()}
    state |= {key: value for key, value in reference.state_dict().items()
              if not key.endswith("proj.weight") and key != "lm_head.weight"}
    model = gptq_format.load_gptq_state(tiny_llama(seed=1), state, {"bits": 4, "group_size": 32, "desc_act": True})
    assert len(qt.quantized_layers(model)) == 15  # 7 per block, and the head
    assert torch.allclose(logits(model), logits(reference), rtol=1e-4, atol=1e-4)


def with_float16_scales(model):
    """The model with every QuantLinear's scales rounded to float16 (new layers, the rest shared)."""
    for name, layer in qt.quantized_layers(model).items():
        scales = layer.scales.numpy().astype(np.float16).astype(np.float32)
        zero_points = None if layer.zero_points is None else layer.zero_points.numpy()
        weight = QuantizedWeight(layer.qdata.numpy(), scales, zero_points, layer.bits, layer.group_size,
                                 (layer.out_features, layer.in_features))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qt.QuantLinear(weight, layer.bias))
    return model


SAVE = {"gptq": lambda model, path, **o: gptq_format.save_gptq(model, path, checkpoint_format="gptq", **o),
        "gptq_v2": lambda model, path, **o: gptq_format.save_gptq(model, path, checkpoint_format="gptq_v2", **o),
        "awq": awq_format.save_awq}
LOAD = {"gptq": gptq_format.load_gptq, "gptq_v2": gptq_format.load_gptq, "awq": awq_format.load_awq}


@pytest.mark.parametrize("fmt", SAVE)
def test_quantized_model_round_trip(tmp_path, fmt):
    """qkernels' RTN model, exported (scales rounded to float16) and loaded again: the same
    integers, the float16 scales, the same logits; exporting that again writes the same tensors."""
    from safetensors.torch import load_file

    model = qt.quantize_model(tiny_llama(), "rtn", bits=4, group_size=32, symmetric=False)
    with pytest.raises(InvalidArgumentError, match="round_float16"):  # float32 scales: not silently rounded
        SAVE[fmt](model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    first, second = tmp_path / "first", tmp_path / "second"
    SAVE[fmt](model, first, round_float16=True)
    loaded = LOAD[fmt](first)
    SAVE[fmt](loaded, second)  # float16 scales now: no rounding needed
    settings = json.loads((first / "config.json").read_text())["quantization_config"]
    assert settings["group_size"] == 32 and settings["bits"] == 4
    ours, theirs = qt.quantized_layers(model), qt.quantized_layers(loaded)
    assert ours.keys() == theirs.keys() and len(ours) == 15
    for name, layer in ours.items():
        assert torch.equal(theirs[name].qdata, layer.qdata), name
        assert torch.equal(theirs[name].scales, layer.scales.half().float()), name
        assert torch.equal(theirs[name].zero_points, layer.zero_points), name
    assert torch.equal(logits(loaded), logits(with_float16_scales(model)))
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert "lm_head.weight" not in a  # tied to the embedding: stored once


def test_symmetric_model_exports_symmetric(tmp_path):
    model = qt.quantize_model(tiny_llama(), "rtn", bits=4, group_size=32)
    tensors, settings = gptq_format.gptq_state(model, round_float16=True)
    assert settings["sym"] and not settings["desc_act"]
    loaded = gptq_format.load_gptq_state(tiny_llama(seed=3), tensors, settings)
    assert all(layer.zero_points is None for layer in qt.quantized_layers(loaded).values())


# ---------------------------------------------------------------- errors


def test_gptq_refusals():
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": int32_words(0x77777777, 0x7654321F).reshape(2, 1),
               "scales": GPTQ_SCALES}
    with pytest.raises(InvalidArgumentError, match="v1 zero-point field holds 15"):
        gptq_format.layer_from_gptq(tensors, bits=4, group_size=4)
    tensors["qzeros"] = GPTQ_QZEROS["gptq"]
    with pytest.raises(InvalidArgumentError, match="3-bit GPTQ"):
        gptq_format.layer_from_gptq(tensors, bits=3, group_size=4)
    with pytest.raises(InvalidArgumentError, match="each group 4 inputs"):  # 5 inputs in group 0
        gptq_format.layer_from_gptq(tensors | {"g_idx": torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])}, bits=4, group_size=4)
    with pytest.raises(InvalidArgumentError, match="need"):
        gptq_format.layer_from_gptq(tensors, bits=4, group_size=2)
    v2 = gptq_format.layer_from_gptq(tensors | {"qzeros": int32_words(0x88888888, 0x76543210).reshape(2, 1)},
                                     bits=4, group_size=4, checkpoint_format="gptq_v2")  # output 0: z = 0
    with pytest.raises(InvalidArgumentError, match="no v1 form"):
        gptq_format.layer_to_gptq(v2)


def test_awq_refusals():
    layer = gptq_format.layer_from_gptq({"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS["gptq"],
                                         "scales": GPTQ_SCALES, "g_idx": torch.tensor([1, 0, 1, 0, 0, 1, 1, 0])},
                                        bits=4, group_size=4)
    with pytest.raises(InvalidArgumentError, match="input permutation"):
        awq_format.layer_to_awq(layer)
    w8 = qt.QuantLinear(rtn(torch.randn(8, 8), bits=8))
    with pytest.raises(InvalidArgumentError, match="4-bit"):
        awq_format.layer_to_awq(w8)
    with pytest.raises(InvalidArgumentError, match="GEMM layout"):
        awq_format.quantization_config({"quantization_config": {"quant_method": "awq", "version": "gemv"}})
    with pytest.raises(InvalidArgumentError, match="not an AWQ checkpoint"):
        awq_format.quantization_config({"quantization_config": {"quant_method": "gptq"}})


def test_wrong_architecture_changes_nothing():
    model = qt.quantize_model(tiny_llama(), "rtn", bits=4, group_size=32)
    tensors, settings = gptq_format.gptq_state(model, round_float16=True)
    target = tiny_llama(seed=2, intermediate_size=96)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(InvalidArgumentError, match=r"down_proj: the checkpoint.s layer is \[out, in\] = \[64, 128\]"):
        gptq_format.load_gptq_state(target, tensors, settings)
    assert not qt.quantized_layers(target)
    assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items())



@pytest.mark.parametrize("key, bad, message", [
    ("1.weight", torch.ones(9), r"1\.weight: the checkpoint's tensor is \[9\]; the model's is \[8\]"),
    ("0.bias", torch.ones(3, dtype=torch.float16), r"0: .* bias \[3\]; the model's is \[8, 8\], bias \[8\]"),
])
def test_wrong_tensor_shapes_change_nothing(key, bad, message):
    """A float tensor, or a quantized layer's bias, of another shape than the model's: refused by
    name before the layer is replaced (the bias would otherwise fail only when run)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    before = copy.deepcopy(model.state_dict())
    state = {"0.qweight": GPTQ_QWEIGHT, "0.qzeros": GPTQ_QZEROS["gptq"], "0.scales": GPTQ_SCALES,
             "0.bias": torch.zeros(8, dtype=torch.float16), "1.weight": torch.ones(8), "1.bias": torch.zeros(8)}
    with pytest.raises(InvalidArgumentError, match=message):
        gptq_format.load_gptq_state(model, state | {key: bad}, {"bits": 4, "group_size": 4})
    assert isinstance(model[0], torch.nn.Linear)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_layer_to_gptq_needs_the_layers_groups():
    grouped = qt.QuantLinear(rtn(torch.randn(8, 128), bits=4, group_size=64))
    for group_size in (96, 32, -1):  # 96 gives the same number of groups (2), but not the same groups
        with pytest.raises(InvalidArgumentError, match=f"groups of 64; the checkpoint's are {group_size}"):
            gptq_format.layer_to_gptq(grouped, group_size=group_size, round_float16=True)
    assert gptq_format.layer_to_gptq(grouped, group_size=64, round_float16=True)["g_idx"].tolist() == \
        [k // 64 for k in range(128)]
    per_channel = qt.QuantLinear(rtn(torch.randn(8, 64), bits=4, group_size=128))
    for group_size in (-1, 64, 128):  # every G >= K is one group per row
        assert not gptq_format.layer_to_gptq(per_channel, group_size=group_size, round_float16=True)["g_idx"].any()


def test_group_size_zero_is_refused():
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS["gptq"], "scales": GPTQ_SCALES}
    with pytest.raises(InvalidArgumentError, match="group_size=0"):
        gptq_format.layer_from_gptq(tensors, bits=4, group_size=0)
    with pytest.raises(InvalidArgumentError, match="group_size=-2"):
        gptq_format.layer_to_gptq(gptq_format.layer_from_gptq(tensors, bits=4, group_size=4), group_size=-2)
    with pytest.raises(InvalidArgumentError, match="group_size=0"):
        awq_format.layer_from_awq(AWQ_TENSORS, group_size=0)


def test_float_g_idx_is_refused():
    """Not truncated to integers: 0.9 and 1.5 would read as groups 0 and 1."""
    g_idx = torch.tensor([0.9, 0.9, 0.9, 0.9, 1.5, 1.5, 1.5, 1.5])
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS["gptq"], "scales": GPTQ_SCALES, "g_idx": g_idx}
    with pytest.raises(InvalidArgumentError, match="g_idx is torch.float32"):
        gptq_format.layer_from_gptq(tensors, bits=4, group_size=4)


def test_awq_refuses_a_layer_its_group_size_does_not_divide(tmp_path):
    """Groups of 128 for down_proj (K = 256) leave the K = 64 layers per channel: AWQ's [K/G, N]
    scales cannot hold them, so nothing is written; GPTQ (NG = ceil(K/G)) stores and reads them."""
    model = qt.quantize_model(tiny_llama(intermediate_size=256), "rtn", bits=4, group_size=128)
    with pytest.raises(InvalidArgumentError, match="q_proj: K=64 is not a multiple of the checkpoint's group size 128"):
        awq_format.save_awq(model, tmp_path / "awq", round_float16=True)
    assert not (tmp_path / "awq").exists()
    gptq_format.save_gptq(model, tmp_path / "gptq", round_float16=True)
    assert torch.equal(logits(gptq_format.load_gptq(tmp_path / "gptq")), logits(with_float16_scales(model)))

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_act_order_layer_saves_in_qkernels_format(tmp_path, suffix):
    """QuantLinear.input_permutation travels with save_quantized / load_quantized."""
    tensors = {"qweight": GPTQ_QWEIGHT, "qzeros": GPTQ_QZEROS["gptq"], "scales": GPTQ_SCALES,
               "g_idx": torch.tensor([1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.int32)}
    model = torch.nn.Sequential(gptq_format.layer_from_gptq(tensors, bits=4, group_size=4))
    qt.save_quantized(model, tmp_path / f"model{suffix}")
    loaded = qt.load_quantized(torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False)), tmp_path / f"model{suffix}")
    assert torch.equal(loaded[0].input_permutation, model[0].input_permutation)
    x = torch.randn(2, 8)
    assert torch.equal(loaded(x), model(x))
    assert "inputs permuted" in repr(loaded)
    with pytest.raises(InvalidArgumentError, match="permutation of range"):
        qt.QuantLinear(model[0].qweight, input_permutation=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
