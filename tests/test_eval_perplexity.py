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


def test_one_token_windows_are_refused(gpt2, ids):
    """max_length = 1 scores nothing (each window's first token has no context): refused by name
    (it used to end in ZeroDivisionError)."""
    with pytest.raises(InvalidArgumentError, match="max_length=1"):
        windows(45, 1, 1)
    with pytest.raises(InvalidArgumentError, match="max_length=1"):
        perplexity_of_ids(gpt2, ids, max_length=1, stride=1)


def test_a_cache_the_model_does_not_fill_is_refused(gpt2, ids):
    """A model that swallows cache= (transformers before 5.24 took past_key_values) would report the
    float cache's perplexity as the quantized cache's: refused instead."""
    import functools

    from qkernels.torch.kv_cache import QuantizedKVCache

    def ignores_cache(window, **kwargs):
        return gpt2(window)

    make_cache = functools.partial(QuantizedKVCache, gpt2.config, bits=8)
    with pytest.raises(InvalidArgumentError, match="cache"):
        perplexity_of_ids(ignores_cache, ids, max_length=CONTEXT, stride=CONTEXT, cache=make_cache)
    int8 = perplexity_of_ids(gpt2, ids, max_length=CONTEXT, stride=CONTEXT, cache=make_cache)
    assert int8.perplexity != perplexity_of_ids(gpt2, ids, max_length=CONTEXT, stride=CONTEXT).perplexity


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


TEXT = "the cat is in the house and it is a good cat for the day " * 4  # 60 tokens, one a word


@pytest.fixture(scope="module")
def checkpoint(gpt2, tmp_path_factory):
    """A checkpoint directory saved here (the tiny GPT-2 and a word-level tokenizer) and a text file."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the a of to and is in it that for on with as be this by".split()
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = tmp_path_factory.mktemp("perplexity")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(
        directory / "tiny-gpt2")
    gpt2.save_pretrained(directory / "tiny-gpt2")
    (directory / "text.txt").write_text(TEXT)
    return directory


def _eval_table(checkpoint, capsys, *options):
    """The rows of `qkernels eval --perplexity` on the tiny checkpoint, as {column: cell} dicts."""
    from qkernels import cli

    argv = ["eval", "--perplexity", str(checkpoint / "tiny-gpt2"), "--text", str(checkpoint / "text.txt"),
            "--max-length", "16", "--stride", "8", "--calibration", "2", *options]
    assert cli.main(argv) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def test_perplexity_command_on_a_local_checkpoint(checkpoint, capsys):
    """`qkernels eval --perplexity DIR`: a checkpoint directory saved here (model and tokenizer)."""
    rows = _eval_table(checkpoint, capsys, "--methods", "rtn-w8,smoothquant-token,kv-int8")
    values = [float(r["ppl text.txt"]) for r in rows]
    assert len(values) == 4 and all(math.isfinite(v) and v > 1 for v in values)
    assert values[1] == pytest.approx(values[0], rel=0.05)  # 8-bit weights: close to float


def test_perplexity_command_reports_scored_tokens_per_second(checkpoint, capsys, monkeypatch):
    """tok/s is what the caption says: scored tokens (59 of the 60 here) per second of perplexity
    (it used to count every token). The clock advances one second per reading."""
    import types

    from qkernels.evaluate import run

    clock = iter(range(1000))
    monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    (row,) = _eval_table(checkpoint, capsys, "--methods", "float32")
    assert float(row["tok/s"]) == sum(end - first for _begin, end, first in windows(60, 16, 8)) == 59


def test_perplexity_command_runs_without_the_kv_cache_module(checkpoint, capsys, monkeypatch):
    """Only the KV methods import QuantizedKVCache (it needs transformers >= 5.24): the others run
    where that import fails."""
    import sys

    monkeypatch.setitem(sys.modules, "qkernels.torch.kv_cache", None)  # importing it raises ImportError
    rows = _eval_table(checkpoint, capsys, "--methods", "rtn-w8")
    assert [r["method"] for r in rows] == ["float32 (PyTorch)", "RTN"]
    assert all(math.isfinite(float(r["ppl text.txt"])) for r in rows)


@pytest.mark.parametrize("kind", ["--perplexity", "--gguf"])
def test_eval_command_refuses_one_token_windows(kind, checkpoint):
    """--max-length 1: a clean message before anything loads (--perplexity used to end in
    ZeroDivisionError; --gguf would fail on the directory given as its file)."""
    from qkernels import cli

    with pytest.raises(SystemExit, match="--max-length 1 must be at least 2"):
        cli.main(["eval", kind, str(checkpoint / "tiny-gpt2"), "--text", str(checkpoint / "text.txt"),
                  "--max-length", "1", "--calibration", "2"])


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
