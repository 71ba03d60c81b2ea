"""QuantizedKVCache: the integers it stores against qkernels.quant.quantize_kv, independent of how
tokens arrive, and a generation loop on a tiny random LLaMA."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch")
transformers = pytest.importorskip("transformers", reason="needs the eval extra: pip install '.[eval]'")
import qkernels  # noqa: E402
from qkernels import quant  # noqa: E402
from qkernels.errors import InvalidArgumentError  # noqa: E402
from qkernels.torch.kv_cache import QuantizedKVCache, QuantizedKVLayer  # noqa: E402

BLOCK = 4


def _states(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(2, 3, T, 8, generator=g)
    keys[..., 5] *= 20  # a key outlier channel
    return keys, torch.randn(2, 3, T, 8, generator=g)


@pytest.mark.parametrize("bits", [8, 4])
def test_appended_tokens_are_stored_as_quantize_kv_quantizes_them(bits):
    """Whatever the chunking, each full key block is quantize_kv's keys of that block and every
    value token quantize_kv's value; the unfinished block is returned in float."""
    keys, values = _states(11)
    for chunks in ([11], [1] * 11, [3, 5, 3]):
        layer, start = QuantizedKVLayer(bits, BLOCK), 0
        for size in chunks:
            k, v = layer.update(keys[..., start:start + size, :], values[..., start:start + size, :])
            start += size
        assert layer.get_seq_length() == 11 and k.shape == keys.shape
        for b in range(2):  # blocks [0, 4) and [4, 8); tokens 8..10 wait in float
            block = slice(b * BLOCK, (b + 1) * BLOCK)
            expected = quant.quantize_kv(keys[..., block, :], values[..., block, :], bits=bits)
            np.testing.assert_array_equal(layer.key_blocks.q[..., block, :].numpy(), expected.keys)
            np.testing.assert_array_equal(k[..., block, :].numpy(), quant.dequantize_keys(expected))
        np.testing.assert_array_equal(k[..., 8:, :].numpy(), keys[..., 8:, :].numpy())
        expected = quant.quantize_kv(keys, values, bits=bits)
        np.testing.assert_array_equal(layer.value_tokens.q.numpy(), expected.values)
        np.testing.assert_array_equal(v.numpy(), quant.dequantize_values(expected))


def _contents(layer):
    return [None if t is None else t.clone() for t in (layer.key_blocks.q, layer.key_blocks.scales,
                                                       layer.value_tokens.q, layer.value_tokens.scales,
                                                       layer.key_residual)]


def test_a_failed_append_leaves_the_cache_as_it_was():
    """NaN keys that complete a block are refused before anything is stored: the length, values
    and keys stay consistent (they used to count and store the values of the refused tokens)."""
    keys, values = _states(7)
    layer = QuantizedKVLayer(8, BLOCK)
    layer.update(keys[..., :5, :], values[..., :5, :])
    before = _contents(layer)
    bad = keys[..., 5:7, :].clone()
    bad[..., 0, 0] = float("nan")
    with pytest.raises(qkernels.NonFiniteError):
        layer.update(torch.cat([bad, bad], dim=-2), values[..., 3:7, :])  # 4 tokens: the block [4, 8) fills
    assert layer.get_seq_length() == 5
    assert all(torch.equal(a, b) for a, b in zip(_contents(layer), before))
    k2, v2 = layer.update(keys[..., 5:, :], values[..., 5:, :])
    assert layer.get_seq_length() == 7 and k2.shape[-2] == v2.shape[-2] == 7


@pytest.mark.parametrize("which", ["key_states", "value_states"])
def test_non_finite_states_for_the_unfinished_block_are_refused(which):
    """A NaN key that would wait in the float residual (no block completes) is refused too, and
    named; the cache keeps growing afterwards (it used to accept the NaN, return it to attention,
    and fail every later append that completed its block)."""
    keys, values = _states(9)
    layer = QuantizedKVLayer(8, BLOCK)
    bad = {"key_states": keys[..., :2, :].clone(), "value_states": values[..., :2, :].clone()}
    bad[which][..., 0, 0] = float("nan")
    with pytest.raises(qkernels.NonFiniteError, match=which):  # on an empty cache: stays empty
        layer.update(bad["key_states"], bad["value_states"])
    assert layer.get_seq_length() == 0 and layer.nbytes == 0
    layer.update(keys[..., :5, :], values[..., :5, :])
    before = _contents(layer)
    bad = {"key_states": keys[..., 5:7, :].clone(), "value_states": values[..., 5:7, :].clone()}
    bad[which][..., 0, 0] = float("inf")
    with pytest.raises(qkernels.NonFiniteError, match=which):  # tokens 5, 6: the block [4, 8) stays open
        layer.update(bad["key_states"], bad["value_states"])
    assert layer.get_seq_length() == 5
    assert all(torch.equal(a, b) for a, b in zip(_contents(layer), before))
    k, v = layer.update(keys[..., 5:, :], values[..., 5:, :])  # completes the block [4, 8)
    assert layer.get_seq_length() == 9 and k.shape[-2] == v.shape[-2] == 9 and torch.isfinite(k).all()


def test_appending_no_tokens_changes_nothing():
    """t = 0 returns the cache as it is (the quantizer used to refuse "N=0")."""
    keys, values = _states(6)
    layer = QuantizedKVLayer(4, BLOCK)
    k, v = layer.update(keys[..., :0, :], values[..., :0, :])  # on an empty cache: empty states
    assert k.shape == v.shape == (2, 3, 0, 8) and layer.get_seq_length() == 0
    k, v = layer.update(keys, values)
    before = _contents(layer)
    k0, v0 = layer.update(keys[..., :0, :], values[..., :0, :])
    assert torch.equal(k0, k) and torch.equal(v0, v) and layer.get_seq_length() == 6
    assert all(torch.equal(a, b) for a, b in zip(_contents(layer), before))


def _appended(keys, values, chunks, bits=8):
    layer, start = QuantizedKVLayer(bits, BLOCK), 0
    for size in chunks:
        layer.update(keys[..., start:start + size, :], values[..., start:start + size, :])
        start += size
    return layer


def _same_state(a, b):
    contents = (lambda layer: _contents(layer) + [layer.key_blocks.zero_points, layer.value_tokens.zero_points])
    same = (lambda x, y: x is y is None or (x is not None and y is not None and torch.equal(x, y)))
    if not (a.is_initialized and b.is_initialized):  # empty: as new
        return a.is_initialized == b.is_initialized and a.get_seq_length() == b.get_seq_length() == 0
    return a.get_seq_length() == b.get_seq_length() and all(same(x, y) for x, y in zip(contents(a), contents(b)))


@pytest.mark.parametrize("before, last", [([5], 6), ([3, 4], 9), ([8], 1), ([1, 1, 1], 4), ([], 10)])
def test_crop_takes_back_the_last_update_exactly(before, last):
    """After taking back r of the last update's tokens, the cache is the cache of the tokens kept:
    the same integers, scales, zero points and float residual, and the same answer to the next
    update (blocks the update completed are reopened from their float keys)."""
    keys, values = _states(sum(before) + last + 3)
    T = sum(before) + last
    for r in range(last + 1):
        layer = _appended(keys, values, before + [last])
        layer.crop(-r)
        kept = _appended(keys, values, before + ([last - r] if last > r else []))
        assert _same_state(layer, kept), r
        more = slice(T - r, T - r + 3)
        for a, b in zip(layer.update(keys[..., more, :], values[..., more, :]),
                        kept.update(keys[..., more, :], values[..., more, :])):
            assert torch.equal(a, b)


def test_crop_past_the_last_update_is_refused():
    """Tokens of a key block quantized before the last update cannot be taken back exactly: refused,
    the cache unchanged; within the last update, and past a block boundary the residual alone
    covers, it is taken back; positive counts (the legacy "keep this many") are refused."""
    keys, values = _states(12)
    layer = _appended(keys, values, [9, 1])  # blocks 0, 1 quantized by the first update; 8, 9 in float
    before = _contents(layer)
    for r in (3, 10):  # token 7 lies in block 1
        with pytest.raises(InvalidArgumentError, match="before the last update"):
            layer.crop(-r)
        assert layer.get_seq_length() == 10 and all(torch.equal(a, b) for a, b in zip(_contents(layer), before))
    layer.crop(-2)  # tokens 8, 9: the residual
    assert _same_state(layer, _appended(keys, values, [8]))
    with pytest.raises(InvalidArgumentError, match="minus the number"):
        layer.crop(4)
    with pytest.raises(InvalidArgumentError, match="holds 8 tokens"):
        layer.crop(-9)


def test_reorder_and_select_batch_rows():
    """Beam search's reorder_cache, and the batch repetition and selection of other decoding modes:
    the cache of the rows so arranged, down to the float keys crop would restore."""
    keys, values = _states(10)
    for arrange, index in ((lambda c: c.reorder_cache(torch.tensor([1, 1])), [1, 1]),
                           (lambda c: c.batch_select_indices(torch.tensor([1])), [1]),
                           (lambda c: c.batch_repeat_interleave(2), [0, 0, 1, 1])):
        layer = _appended(keys, values, [5, 3])
        arrange(layer)
        rows = _appended(keys[index], values[index], [5, 3])
        assert _same_state(layer, rows) and torch.equal(layer.recent_keys, rows.recent_keys)
        layer.crop(-3)  # the crop that assisted decoding would make, on the arranged rows
        rows.crop(-3)
        assert _same_state(layer, rows)


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidArgumentError):
        QuantizedKVLayer(bits=3)
    with pytest.raises(InvalidArgumentError):
        QuantizedKVLayer(block_size=0)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def test_generation_with_a_quantized_cache(llama):
    """generate() runs on the cache; int8 logits stay close to the float cache's, int4 further."""
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = llama(ids).logits
        errors = {bits: float((llama(ids, cache=QuantizedKVCache(llama.config, bits=bits)).logits - exact).abs().max())
                  for bits in (8, 4)}
        cache = QuantizedKVCache(llama.config, bits=4)
        out = llama.generate(ids[:, :8], cache=cache, max_new_tokens=6, do_sample=False)
    assert 0 < errors[8] < errors[4] and errors[8] < 0.05 * float(exact.abs().max())
    assert out.shape == (1, 14) and cache.get_seq_length() == 13  # the last token is not fed back
    assert cache.nbytes > 0


def test_beam_search_and_prompt_lookup_decoding_run_on_the_cache(llama):
    """generate() with beams (reorder_cache) and with prompt lookup (assisted decoding: crop)."""
    ids = torch.randint(0, 8, (1, 24), generator=torch.Generator().manual_seed(2))  # repeats: lookups hit
    with torch.no_grad():
        cache = QuantizedKVCache(llama.config, bits=8)
        beams = llama.generate(ids, cache=cache, max_new_tokens=6, num_beams=3, do_sample=False)
        assert beams.shape == (1, 30) and cache.get_seq_length() == 29
        cache = QuantizedKVCache(llama.config, bits=8, block_size=4)  # small blocks: crops reopen some
        looked_up = llama.generate(ids, cache=cache, max_new_tokens=9, prompt_lookup_num_tokens=3, do_sample=False)
        assert looked_up.shape == (1, 33) and cache.get_seq_length() == 32
