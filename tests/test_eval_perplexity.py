"""The sliding-window perplexity harness, on a tiny randomly initialised GPT-2 (no download)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the perplexity harness needs torch")
transformers = pytest.importorskip("transformers", reason="needs the eval extra: pip install '.[eval]'")
from qkernels.evaluate import perplexity_of_ids, windows  # noqa: E402
from qkernels.errors import InvalidArgumentError  # noqa: E402

CONTEXT = 16


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (45,), generator=torch.Generator().manual_seed(1))


def _nll(model, context, target):
    """−log p(target | context) from one forward pass over exactly that context."""
    with torch.no_grad():
        logits = model(context.unsqueeze(0)).logits[0, -1].double()
    return -float(torch.log_softmax(logits, dim=-1)[target])


def test_windows_score_each_token_once():
    """Overlapping windows score every token after the first; non-overlapping ones (stride =
    max_length) all but each window's first token, which has no context in its window."""
    for length, max_length, stride in [(45, 16, 16), (45, 16, 5), (10, 16, 8), (17, 16, 1), (32, 16, 15)]:
        plan = windows(length, max_length, stride)
        scored = [t for _begin, end, first in plan for t in range(first, end)]
        unscored = set(range(0, length, max_length)) if stride == max_length else {0}
        assert scored == sorted(set(range(length)) - unscored)
        assert all(end - begin <= max_length and begin < first for begin, end, first in plan)
    with pytest.raises(InvalidArgumentError):
        windows(45, 16, 17)
    with pytest.raises(InvalidArgumentError):
        windows(1, 16, 8)


def test_non_overlapping_windows_are_the_mean_of_hugging_face_losses(gpt2, ids):
    """stride = max_length: each chunk scored alone, as model(chunk, labels=chunk).loss does."""
    result = perplexity_of_ids(gpt2, ids, max_length=CONTEXT, stride=CONTEXT)
    nll = tokens = 0
    with torch.no_grad():
        for begin in range(0, len(ids), CONTEXT):
            chunk = ids[begin : begin + CONTEXT].unsqueeze(0)
            if chunk.shape[1] > 1:
                nll += float(gpt2(chunk, labels=chunk).loss) * (chunk.shape[1] - 1)
                tokens += chunk.shape[1] - 1
    assert result.tokens == tokens == len(ids) - math.ceil(len(ids) / CONTEXT)  # each chunk's first: no context
    assert result.windows == math.ceil(len(ids) / CONTEXT)
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_sliding_window_equals_token_by_token_nll(gpt2, ids):
    """stride < max_length: every token after the first, each with the context its window gives."""
    result = perplexity_of_ids(gpt2, ids, max_length=CONTEXT, stride=5)
    expected = sum(_nll(gpt2, ids[begin:t], ids[t]) for begin, end, first in windows(len(ids), CONTEXT, 5)
                   for t in range(first, end))
    assert result.tokens == len(ids) - 1
    assert math.isfinite(result.perplexity) and result.perplexity > 1
    assert result.nll == pytest.approx(expected, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected / (len(ids) - 1)), rel=1e-6)


def test_quantized_gpt2_perplexity(gpt2, ids):
    """GPT-2's Conv1D layers are quantized too; 8-bit weights barely move the perplexity."""
    import copy

    from qkernels.torch import QuantLinear, quantize_model

    quantized = quantize_model(copy.deepcopy(gpt2), "rtn", bits=8, skip=["lm_head"])
    assert sum(isinstance(m, QuantLinear) for m in quantized.modules()) == 8  # 4 per block
    float_result = perplexity_of_ids(gpt2, ids, max_length=CONTEXT, stride=8)
    result = perplexity_of_ids(quantized, ids, max_length=CONTEXT, stride=8)
    assert result.perplexity == pytest.approx(float_result.perplexity, rel=0.02)


def test_perplexity_command_on_a_local_checkpoint(gpt2, tmp_path, capsys):
    """`qkernels eval --perplexity DIR`: a checkpoint directory saved here (model and tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from qkernels import cli

    words = "the a of to and is in it that for on with as be this by".split()
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    checkpoint = tmp_path / "tiny-gpt2"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(checkpoint)
    gpt2.save_pretrained(checkpoint)
    text = tmp_path / "text.txt"
    text.write_text("the cat is in the house and it is a good cat for the day " * 4)
    argv = ["eval", "--perplexity", str(checkpoint), "--text", str(text), "--max-length", "16", "--stride", "8",
            "--calibration", "2", "--methods", "rtn-w8,smoothquant-token,kv-int8"]
    assert cli.main(argv) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0]]
    values = [float(r[header.index("ppl text.txt")]) for r in rows[1:]]
    assert len(values) == 4 and all(math.isfinite(v) and v > 1 for v in values)
    assert values[1] == pytest.approx(values[0], rel=0.05)  # 8-bit weights: close to float


def test_smoothquant_folded_into_gpt2_pre_norms(gpt2, ids):
    """Folding s into ln_1 / ln_2 computes what dividing the inputs at run time does."""
    import copy

    from qkernels.torch import pre_norm_groups, quantize_model

    groups = pre_norm_groups(gpt2)
    assert groups == {f"transformer.h.{i}.{norm}": [f"transformer.h.{i}.{layer}"]
                      for i in range(2) for norm, layer in (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc"))}
    options = dict(activation="token", per_tensor=False, calib_data=[ids[None, :16], ids[None, 16:32]], skip=["lm_head"])
    runtime = quantize_model(copy.deepcopy(gpt2), "smoothquant", **options)
    folded = quantize_model(copy.deepcopy(gpt2), "smoothquant", fold_norms=groups, **options)
    block = folded.transformer.h[0]
    assert block.attn.c_attn.input_scale is None and block.mlp.c_fc.input_scale is None
    assert block.attn.c_proj.input_scale is not None  # reads the attention output: no norm to fold into
    assert not torch.equal(block.ln_1.weight, gpt2.transformer.h[0].ln_1.weight)
    with torch.no_grad():
        a, b = runtime(ids[None, 29:]).logits, folded(ids[None, 29:]).logits
    assert float((a - b).norm() / a.norm()) < 1e-3
    with pytest.raises(InvalidArgumentError, match="fold_norms"):
        quantize_model(copy.deepcopy(gpt2), "rtn", fold_norms=groups)
