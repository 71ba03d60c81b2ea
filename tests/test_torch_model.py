"""quantize_model on a small torch model, and saving and loading quantized models."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from qk_support import raw_offsets
from qkernels import InvalidArgumentError, NonFiniteError, quant, reference

torch = pytest.importorskip("torch", reason="the PyTorch integration needs torch")
qt = pytest.importorskip("qkernels.torch")
HAVE_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


class Block(torch.nn.Module):
    """LayerNorm, then two linear layers, like a transformer MLP; a head that can be skipped."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64, bias=False)
        self.head = torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.head(self.down(torch.nn.functional.gelu(self.up(self.norm(x)))))


def _model():
    torch.manual_seed(0)
    return Block().eval()


def _data(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 64, generator=g) * 2 for _ in range(n)]


CASES = [
    dict(method="rtn", bits=8),
    dict(method="rtn", bits=4, group_size=32, symmetric=False),
    dict(method="gptq", bits=4, group_size=32),
    dict(method="w8a8", activation="tensor"),
    dict(method="w8a8", activation="token"),
    dict(method="smoothquant", activation="tensor"),
    dict(method="smoothquant", activation="token", per_tensor=False),
    dict(method="llm_int8", threshold=3.0),
    dict(method="zeroquant", bits=4, group_size=32),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_quantize_model_replaces_every_linear(options):
    model, x = _model(), _data()[0]
    quantized = qt.quantize_model(copy.deepcopy(model), calib_data=_data(), **options)
    layers = qt.quantized_layers(quantized)
    assert sorted(layers) == ["down", "head", "up"]
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    with torch.no_grad():
        expected, y = model(x), quantized(x)
    assert y.shape == expected.shape
    assert float((y - expected).norm() / expected.norm()) < 0.2  # quantized, not broken
    assert qt.quantized_nbytes(quantized) < qt.quantized_nbytes(model)


def test_zeroquant_zero_points_when_asked():
    quantized = qt.quantize_model(_model(), "zeroquant", symmetric=False, group_size=32)
    assert quantized.up.zero_points is not None


def test_rtn_layer_holds_exactly_quantize_weights():
    model = _model()
    quantized = qt.quantize_model(copy.deepcopy(model), "rtn", bits=4, group_size=16)
    up = quantized.up
    w = reference.dequantize(up.qdata.numpy(), up.scales.numpy(), None, 4, 16)
    q, scales, _ = reference.quantize(model.up.weight.detach().numpy(), 4, 16)
    np.testing.assert_array_equal(w, reference.dequantize(q, scales, None, 4, 16))


def test_top_level_name():
    import qkernels

    assert qkernels.quantize_model is qt.quantize_model


def test_skip_and_errors():
    quantized = qt.quantize_model(_model(), "rtn", skip=["head"])
    assert isinstance(quantized.head, torch.nn.Linear) and isinstance(quantized.up, qt.QuantLinear)
    with pytest.raises(InvalidArgumentError, match="calib_data"):
        qt.quantize_model(_model(), "gptq")
    with pytest.raises(InvalidArgumentError, match="method"):
        qt.quantize_model(_model(), "awq")
    with pytest.raises(InvalidArgumentError, match="group_size"):
        qt.quantize_model(_model(), "llm_int8", group_size=32)
    with pytest.raises(InvalidArgumentError, match="activation"):
        qt.quantize_model(_model(), "rtn", activation="token")
    for method, option in (("rtn", {"alpha": 0.7}), ("gptq", {"threshold": 4.0}), ("zeroquant", {"per_tensor": True}),
                           ("llm_int8", {"gptq_options": {"act_order": True}})):
        with pytest.raises(InvalidArgumentError, match=next(iter(option))):  # never silently ignored
            qt.quantize_model(_model(), method, calib_data=_data(), **option)
    with pytest.raises(InvalidArgumentError, match="empty"):
        qt.quantize_model(_model(), "smoothquant", calib_data=[])


def test_fold_norms_is_checked_before_calibration():
    def unread():  # calibration data that must not be reached
        raise AssertionError("calibration ran before fold_norms was checked")
        yield

    with pytest.raises(InvalidArgumentError, match="fold_norms"):
        qt.quantize_model(_model(), "gptq", calib_data=unread(), fold_norms={"norm": ["up"]})
    with pytest.raises(InvalidArgumentError, match="not linear layers"):
        qt.quantize_model(_model(), "smoothquant", calib_data=unread(), fold_norms={"norm": ["up", "norm"]})
    # The norms themselves: a module of the model, with a weight to fold s into. (A misspelt second
    # norm once raised AttributeError after calibration, the first norm already divided.)
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidArgumentError, match=r"fold_norms\['norm_typo'\]: not a module"):
        qt.quantize_model(model, "smoothquant", calib_data=unread(), fold_norms={"norm": ["up"], "norm_typo": ["head"]})
    model.norm = torch.nn.LayerNorm(64, elementwise_affine=False)
    with pytest.raises(InvalidArgumentError, match=r"fold_norms\['norm'\]: a LayerNorm without a weight"):
        qt.quantize_model(model, "smoothquant", calib_data=unread(), fold_norms={"norm": ["up"]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.up, torch.nn.Linear)


def test_a_failing_fold_leaves_the_model_as_it_was(monkeypatch):
    """Every norm's and layer's new values are computed before the first is written."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    calls = []

    def fold_twice_then_fail(gamma, beta, s):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the second fold fails")
        return real_fold(gamma, beta, s)

    import qkernels.torch.model as model_module

    real_fold = model_module.fold_into_norm
    monkeypatch.setattr(model_module, "fold_into_norm", fold_twice_then_fail)
    model.norm2 = torch.nn.LayerNorm(64)  # the head's input norm, unused by forward: its group is not calibrated
    with pytest.raises(RuntimeError, match="second fold"):
        qt.quantize_model(model, "smoothquant", calib_data=_data(), fold_norms={"norm": ["up"], "norm2": ["head"]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert isinstance(model.up, torch.nn.Linear) and isinstance(model.head, torch.nn.Linear)


def _saved_formats():
    return ["pt"] + (["safetensors"] if HAVE_SAFETENSORS else [])


@pytest.mark.parametrize("suffix", _saved_formats())
@pytest.mark.parametrize("options", CASES[1:4] + CASES[5:8], ids=lambda o: o["method"])
def test_save_and_load_without_requantizing(tmp_path, suffix, options):
    quantized = qt.quantize_model(_model(), calib_data=_data(), **options)
    path = tmp_path / f"model.{suffix}"
    qt.save_quantized(quantized, path)
    fresh = Block().eval()  # different random float weights: only the file can make them agree
    loaded = qt.load_quantized(fresh, path)
    x = _data()[0]
    assert torch.equal(loaded(x), quantized(x))
    for name, layer in qt.quantized_layers(quantized).items():
        twin = loaded.get_submodule(name)
        assert twin.get_extra_state() == layer.get_extra_state()
        assert all(torch.equal(a, b) for a, b in zip(layer.buffers(), twin.buffers()))


def test_load_state_dict_into_quantized_model_and_mismatch():
    a = qt.quantize_model(_model(), "rtn", bits=4, group_size=32)
    b = qt.quantize_model(Block().eval(), "rtn", bits=4, group_size=32)
    x = _data()[0]
    qt.load_quantized(b, a.state_dict())
    assert torch.equal(a(x), b(x))
    other = qt.quantize_model(_model(), "rtn", bits=8)
    with pytest.raises(InvalidArgumentError, match="structure"):
        other.load_state_dict(qt.quantize_model(_model(), "rtn", bits=4).state_dict())


def _smol():
    """Widths of a real model's whose K a group size of 128 does not divide: 576 (SmolLM's hidden
    size: groups of 128 and a last one of 64) and 64 (< 128: one shorter group per row)."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(576, 64), torch.nn.GELU(), torch.nn.Linear(64, 576, bias=False))


@pytest.mark.parametrize("suffix", _saved_formats())
@pytest.mark.parametrize("method", ["rtn", "gptq", "zeroquant"])
def test_group_size_need_not_divide_k(tmp_path, suffix, method):
    model, x = _smol(), torch.randn(5, 576)
    calib = [torch.randn(8, 576) for _ in range(4)]
    quantized = qt.quantize_model(copy.deepcopy(model), method, bits=4, group_size=128, calib_data=calib)
    assert quantized[0].scales.shape == (64, 5) and quantized[2].scales.shape == (576, 1)
    with torch.no_grad():
        expected, y = model(x), quantized(x)
    assert float((y - expected).norm() / expected.norm()) < 0.2  # quantized, not broken
    path = tmp_path / f"model.{suffix}"
    qt.save_quantized(quantized, path)
    assert torch.equal(qt.load_quantized(_smol(), path)(x), y)


@pytest.mark.parametrize("suffix", _saved_formats())
def test_offsets_are_saved_loaded_and_checked(tmp_path, suffix):
    """Offsets (format v2) travel in the state and its format; a QuantLinear without them refuses
    a state with them, and a state saved before format v2 (no "offsets" in its format) loads."""
    qw = qt.quantize_model(_smol(), "rtn", bits=4, group_size=128)[0].qweight
    qw = replace(qw, offsets=raw_offsets(np.random.default_rng(4), qw.scales, 4))
    model = torch.nn.Sequential(qt.QuantLinear(qw, torch.randn(64)))
    path = tmp_path / f"model.{suffix}"
    qt.save_quantized(model, path)
    loaded = qt.load_quantized(torch.nn.Sequential(torch.nn.Linear(576, 64)), path)
    x = torch.randn(3, 576)
    assert loaded[0].get_extra_state()["offsets"] and torch.equal(loaded[0].offsets, model[0].offsets)
    assert torch.equal(loaded(x), model(x))
    without = qt.quantize_model(torch.nn.Sequential(torch.nn.Linear(576, 64)), "rtn", bits=4, group_size=128)
    with pytest.raises(InvalidArgumentError, match="structure"):
        without.load_state_dict(model.state_dict())
    old = without.state_dict()
    del old["0._extra_state"]["offsets"]
    qt.load_quantized(torch.nn.Sequential(torch.nn.Linear(576, 64)), old)
    without.load_state_dict(old)


def _two_layers():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))


OTHER_ARCHITECTURES = {
    "one layer fewer": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32)),
    "first layer only": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64)),
    "one layer more": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32),
                                                  torch.nn.Linear(32, 8), torch.nn.Linear(8, 4)),
    "other width": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 16),
                                               torch.nn.Linear(16, 8)),
    "other float layer": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32),
                                                     torch.nn.Linear(32, 4)),
    "not linear": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(), torch.nn.Linear(32, 8)),
    "no bias": lambda: torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32, bias=False),
                                           torch.nn.Linear(32, 8)),
    "quantized, one layer fewer": lambda: qt.quantize_model(
        torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.Linear(64, 32)), "rtn", bits=8),
}


@pytest.mark.parametrize("source", ["dict"] + _saved_formats())
@pytest.mark.parametrize("target", list(OTHER_ARCHITECTURES))
def test_load_quantized_refuses_another_architecture(tmp_path, source, target):
    """A state saved from another model used to turn the target into the saved model (the layers
    it named were created); now it is an InvalidArgumentError and the target is left as it was."""
    saved = qt.quantize_model(_two_layers(), "rtn", bits=4, group_size=None, skip=["2"])  # layer 2 stays float
    if source == "dict":
        path = saved.state_dict()
    else:
        path = tmp_path / f"two.{source}"
        qt.save_quantized(saved, path)
    model = OTHER_ARCHITECTURES[target]()
    structure, state = repr(model), copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidArgumentError, match="model"):
        qt.load_quantized(model, path)
    assert repr(model) == structure
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(not isinstance(v, torch.Tensor) or torch.equal(after[k], v) for k, v in state.items())
    # The same architecture loads.
    loaded = qt.load_quantized(_two_layers(), path)
    x = torch.randn(3, 100)
    assert torch.equal(loaded(x), saved(x))


class TiedLM(torch.nn.Module):
    """An embedding and an output layer tied to it (SmolLM2's tie_word_embeddings)."""

    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def _quantized_lm(tied: bool):
    """TiedLM with a quantized head (with zero points) and a QuantEmbedding: on the head's buffers
    when tied, as a GGUF model's, else on a table of its own in the same format."""
    from qkernels.torch.embedding import QuantEmbedding

    torch.manual_seed(5)
    model = qt.quantize_model(TiedLM().eval(), "rtn", bits=4, group_size=16, symmetric=False)
    table = model.head if tied else qt.QuantLinear(quant.rtn(torch.randn(64, 32), bits=4, group_size=16,
                                                             symmetric=False))
    model.embed = QuantEmbedding(table)
    return model


@pytest.mark.parametrize("source", ["dict"] + _saved_formats())
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_quant_embedding_is_saved_and_loaded(tmp_path, source, tied):
    """A QuantEmbedding (a GGUF model's) did not load into a float model ("missing from the state:
    embed.weight"); its format travels as a QuantLinear's does, and a tied head shares its buffers again."""
    saved = _quantized_lm(tied)
    if source == "dict":
        path = saved.state_dict()
    else:
        path = tmp_path / f"lm.{source}"
        qt.save_quantized(saved, path)
    loaded = qt.load_quantized(TiedLM().eval(), path)
    assert loaded.embed.get_extra_state() == saved.embed.get_extra_state()
    assert (loaded.embed.qdata.data_ptr() == loaded.head.qdata.data_ptr()) == tied  # one copy, as saved
    ids = torch.tensor([[3, 0, 63, 7], [1, 1, 2, 62]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), saved(ids))


def test_load_quantized_refuses_an_embedding_of_another_architecture():
    """Each an InvalidArgumentError before the model changes."""
    state = _quantized_lm(tied=True).state_dict()
    malformed = copy.deepcopy(state)
    malformed["embed._extra_state"]["dtype"] = "int"  # torch.int32 under another name: loading it would fail
    not_embedding = TiedLM()
    not_embedding.embed = torch.nn.Linear(64, 32)
    for model, source, message in (
        (TiedLM(vocab=60), state, r"quantized embedding 'embed' is \[num_embeddings, embedding_dim\] = \[64, 32\]; "
                                  r"the model's is \[60, 32\]"),
        (not_embedding, state, r"quantized embedding 'embed'; the model has a Linear there"),
        (TiedLM(), malformed, r"quantized embedding 'embed' has a malformed format .*'dtype': 'int32'"),
    ):
        structure = repr(model)
        with pytest.raises(InvalidArgumentError, match=message):
            qt.load_quantized(model, source)
        assert repr(model) == structure
    quantized = _quantized_lm(tied=False)
    before = copy.deepcopy(quantized.state_dict())
    other = copy.deepcopy(state)
    other["embed._extra_state"]["group_size"] *= 2  # another structure, refused before torch compares shapes
    with pytest.raises(InvalidArgumentError, match="structure"):  # a QuantEmbedding checks what it loads, first
        quantized.load_state_dict(other)
    assert all(torch.equal(t, before[key]) for key, t in quantized.state_dict().items() if isinstance(t, torch.Tensor))


def test_compiled_quantized_model_has_no_graph_break():
    quantized = qt.quantize_model(_model(), "smoothquant", calib_data=_data())
    x = _data()[0]
    with torch.no_grad():
        compiled = torch.compile(quantized, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), quantized(x))


def test_deepcopy_and_pickle_a_quantized_model(tmp_path):
    quantized = qt.quantize_model(_model(), "llm_int8")
    x = _data()[0]
    with torch.no_grad():
        y = quantized(x)  # the layers now hold their QuantizedWeight
        copied = copy.deepcopy(quantized)
        torch.save(quantized, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        assert torch.equal(copied(x), y) and torch.equal(loaded(x), y)
    assert copied.up.qdata.data_ptr() != quantized.up.qdata.data_ptr()
    assert qt.ops._handles[copied.up.qdata.data_ptr()] is copied.up._handle  # registered: packs are reused


class _Counting(torch.nn.Module):
    """Block's layers, the head's input counted; `up` optionally called twice (shared across depth)."""

    def __init__(self, up_twice: bool):
        super().__init__()
        self.block, self.up_twice, self.head_calls = _model(), up_twice, 0
        self.block.head.register_forward_pre_hook(lambda *_: setattr(self, "head_calls", self.head_calls + 1))

    def forward(self, x):
        b = self.block
        h = b.up(b.norm(x))
        if self.up_twice:
            h = b.up(b.norm(b.down(torch.nn.functional.gelu(h))))
        return b.head(b.down(torch.nn.functional.gelu(h)))


class _Rows:
    """A collector that keeps the rows it is fed."""

    def __init__(self, K):
        self.rows = []

    def update(self, x):
        self.rows.append(x.clone())


def test_calibration_stops_a_pass_once_every_layer_has_read_its_input():
    model, data = _Counting(up_twice=False), _data(3)
    collectors = qt.calibrate(model, {"block.up": model.block.up, "block.down": model.block.down}, data, _Rows)
    # the first pass runs whole (it learns that each layer is called once), the others stop at `down`
    assert model.head_calls == 1
    assert [len(c.rows) for c in collectors.values()] == [3, 3]


def test_calibration_runs_every_pass_whole_when_a_layer_is_called_twice():
    model, data = _Counting(up_twice=True), _data(3)
    collectors = qt.calibrate(model, {"block.up": model.block.up, "block.down": model.block.down}, data, _Rows)
    assert model.head_calls == 3
    assert [len(c.rows) for c in collectors.values()] == [6, 6]


# ---------------------------------------------------------------- layers calibration never reaches


class _Routed(torch.nn.Module):
    """Top-1 routing to two experts (a pre-norm and a linear layer each). The router's bias sends
    every token to expert 0: calibration never reaches expert 1, as an MoE expert no calibration
    token is routed to."""

    def __init__(self):
        super().__init__()
        self.router = torch.nn.Linear(64, 2)
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 64)) for _ in range(2))
        with torch.no_grad():
            self.router.bias.copy_(torch.tensor([100.0, -100.0]))

    def forward(self, x):
        choice, out = self.router(x).argmax(-1), torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            chosen = choice == index
            if chosen.any():
                out[chosen] = expert(x[chosen])
        return x + out


class _MoE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Routed() for _ in range(2))  # the blocks, for GPTQ

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def _moe():
    torch.manual_seed(5)
    return _MoE().eval()


UNREACHED = ["layers.0.experts.1.1", "layers.1.experts.1.1"]
FOLDED = {f"layers.{b}.experts.{e}.0": [f"layers.{b}.experts.{e}.1"] for b in range(2) for e in range(2)}


@pytest.mark.parametrize("options", [
    dict(method="gptq", bits=4, group_size=32),
    dict(method="w8a8"),
    dict(method="smoothquant"),
    dict(method="smoothquant", activation="token", alpha=(0.3, 0.6), fold_norms=FOLDED),
], ids=["gptq", "w8a8", "smoothquant", "smoothquant-search-folded"])
def test_layers_calibration_never_reaches_fall_back_with_a_warning(options):
    """They used to raise a KeyError with the model half quantized. GPTQ: an identity Hessian (RTN's
    integers); SmoothQuant: s = 1 (their norms unchanged); static activations: per token."""
    model = _moe()
    with pytest.warns(UserWarning, match=r"2 layer\(s\), layers\.0\.experts\.1\.1, layers\.1\.experts\.1\.1"):
        quantized = qt.quantize_model(copy.deepcopy(model), calib_data=_data(2), **options)
    assert sorted(qt.quantized_layers(quantized)) == sorted(qt.linear_layers(model))
    for name in UNREACHED:
        layer = quantized.get_submodule(name)
        if options["method"] == "gptq":
            expected = quant.rtn(model.get_submodule(name).weight.detach(), bits=4, group_size=32)
            assert np.array_equal(layer.qdata.numpy(), expected.data)
            assert np.array_equal(layer.scales.numpy(), expected.scales)
        else:
            assert layer.activation == "token" and layer.input_scale is None
        norm = name.removesuffix(".1") + ".0"
        assert torch.equal(quantized.get_submodule(norm).weight, model.get_submodule(norm).weight)
    if options["method"] != "gptq" and "fold_norms" not in options:  # the calibrated ones: static ranges
        assert quantized.get_submodule("layers.0.experts.0.1").activation == options.get("activation", "tensor")
    x = _data(1)[0]
    with torch.no_grad():
        for name in UNREACHED:  # quantized, not broken
            expected, y = model.get_submodule(name)(x), quantized.get_submodule(name)(x)
            assert float((y - expected).norm() / expected.norm()) < 0.1


@pytest.mark.parametrize("method", ["w8a8", "smoothquant"])
def test_static_activations_of_a_layer_whose_calibration_inputs_were_all_zero(method):
    """A dead ReLU gives `down` a clip of 0: its step is 1 (a zero range, docs/numerics.md §2), not
    a NaN from 0 / 0."""
    model = _model()
    with torch.no_grad():
        model.up.bias.fill_(-100.0)  # gelu(up(x)) is 0 on calibration data
    quantized = qt.quantize_model(copy.deepcopy(model), method, calib_data=_data())
    assert float(quantized.down.act_clip) == 0
    x = _data(1)[0]
    with torch.no_grad():
        expected, y = model(x), quantized(x)
    assert torch.isfinite(y).all()
    assert float((y - expected).norm() / expected.norm()) < 0.2


def test_options_are_checked_before_calibration():
    def unread():  # calibration data that must not be reached
        raise AssertionError("calibration ran before the options were checked")
        yield

    for option, options in (("bits", dict(method="smoothquant", bits=5, fold_norms={"norm": ["up"]})),
                            ("bits", dict(method="gptq", bits=0)),
                            ("group_size", dict(method="gptq", group_size=0)),
                            ("group_size", dict(method="awq", group_size=-32)),
                            ("alpha", dict(method="smoothquant", alpha=1.5)),
                            ("alpha", dict(method="smoothquant", alpha=(0.5, -0.1))),
                            ("alpha", dict(method="smoothquant", alpha=())),
                            ("gptq_options", dict(method="gptq", gptq_options={"dampening": 0.1})),
                            ("awq_options", dict(method="awq", awq_options={"bits": 8}))):
        with pytest.raises(InvalidArgumentError, match=option):
            qt.quantize_model(_model(), calib_data=unread(), **options)
    for option, options in (("group_size", dict(method="zeroquant", group_size=0)),  # was taken for 64
                            ("threshold", dict(method="llm_int8", threshold=0.0))):
        model = _model()
        with pytest.raises(InvalidArgumentError, match=option):
            qt.quantize_model(model, **options)
        assert not qt.quantized_layers(model)


@pytest.mark.parametrize("options", [
    dict(method="smoothquant", fold_norms={"norm": ["up"]}),
    dict(method="smoothquant", fold_norms={"norm": ["up"]}, alpha=(0.4, 0.8)),
    dict(method="gptq"),
    dict(method="w8a8"),
    dict(method="rtn"),
], ids=["smoothquant-folded", "smoothquant-search", "gptq", "w8a8", "rtn"])
def test_a_failed_quantize_model_leaves_the_model_as_it_was(options):
    """The head's weights cannot be quantized (a NaN), and the head comes last: the norm divided by
    SmoothQuant's s and the layers already quantized used to stay so."""
    model = _model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteError):
        qt.quantize_model(model, calib_data=_data(), **options)
    assert not qt.quantized_layers(model)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[key].nan_to_num(), value.nan_to_num()) for key, value in state.items())


def test_smoothing_search_scores_the_weights_quantize_model_deploys():
    """symmetric=False: the α search scores zero-point weights, as the layers get them. Here that
    chooses another α than symmetric weights would (it used to score symmetric ones)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[:, 3] *= 30  # an outlier channel
    w = (rng.standard_normal((8, 16)) + 0.8).astype(np.float32)  # skewed rows: zero points matter
    model = torch.nn.Sequential(torch.nn.Linear(16, 8, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w))
    alphas = (0.2, 0.5, 0.8)
    # every 4th row is sampled for the search: each row four times makes the sample x itself
    calib = [torch.from_numpy(np.repeat(x, 4, axis=0))]
    chosen = {}
    for symmetric in (True, False):
        s, chosen[symmetric] = quant.search_smoothing(x, np.abs(x).max(axis=0), w, alphas, activation="token",
                                                      per_tensor=True, symmetric=symmetric)
        quantized = qt.quantize_model(copy.deepcopy(model), "smoothquant", calib_data=calib, activation="token",
                                      alpha=alphas, symmetric=symmetric)
        assert torch.equal(quantized[0].input_scale, torch.from_numpy(1 / s))
    assert chosen[True] != chosen[False]


@pytest.mark.parametrize("method", ["smoothquant", "w8a8"])  # AWQ's statistics come through the same hook
def test_non_finite_calibration_input_names_the_layer(method):
    model = _model()
    with torch.no_grad():
        model.up.weight[0, 0] = float("inf")  # down's inputs hold Inf (and NaN): not the caller's data
    with pytest.raises(NonFiniteError, match=r"calibration input of layer 'down'"):
        qt.quantize_model(model, method, calib_data=_data(), skip=["up"])
