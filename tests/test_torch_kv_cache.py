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
    return [t.clone() for t in (layer.key_blocks.q, layer.key_blocks.scales, layer.value_tokens.q,
                                layer.value_tokens.scales, layer.key_residual)]


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
