"""Paged-cache scatter/gather and dequantising a KV blob straight into cache blocks."""

import pytest
import torch

from kernels import (
    KvConfigError,
    KvExpectation,
    KvFormat,
    decode_kv_blob,
    decode_kv_blob_into_paged,
    dequantize,
    dequantize_into_paged,
    encode_kv_blob,
    gather_paged,
    quantize,
    write_paged,
)

NUM_LAYERS, KV_HEADS, HEAD_DIM, NUM_BLOCKS, BLOCK_SIZE = 2, 3, 16, 10, 4


def caches(dtype=torch.float32, fill=-7.0):
    return [
        torch.full((NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM), fill, dtype=dtype) for _ in range(NUM_LAYERS)
    ]


def dense(num_tokens: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_LAYERS, KV_HEADS, num_tokens, HEAD_DIM, generator=gen)


@pytest.mark.parametrize("num_tokens", [1, 4, 9])
def test_write_then_gather_gives_the_sequence_back(num_tokens):
    x = dense(num_tokens)
    cache = caches()
    block_ids = [7, 2, 5]
    write_paged(x, cache, block_ids)
    assert torch.equal(gather_paged(cache, block_ids, num_tokens), x)


def test_token_lands_in_its_block_and_slot_and_nothing_else_moves():
    x = dense(6)
    cache = caches()
    write_paged(x, cache, [8, 1])
    assert torch.equal(cache[1][8, 3], x[1, :, 3])  # token 3: block 8, slot 3; (kv_heads, head_dim)
    assert torch.equal(cache[0][1, 1], x[0, :, 5])  # token 5: block 1, slot 1
    untouched = [b for b in range(NUM_BLOCKS) if b not in (8, 1)]
    assert bool((cache[0][untouched] == -7.0).all()) and bool((cache[0][1, 2:] == -7.0).all())


@pytest.mark.parametrize(
    "fmt", [KvFormat(bits=4), KvFormat(bits=8, key_axis="token"), KvFormat(bits=16)], ids=str
)
def test_blob_into_paged_equals_decode_then_write(fmt):
    keys, values = dense(11, seed=1), dense(11, seed=2)
    blob = encode_kv_blob(list(keys), list(values), fmt, model_fingerprint="m", first_layer=0)
    expected = KvExpectation("m", 0, NUM_LAYERS, KV_HEADS, HEAD_DIM)
    key_cache, value_cache = caches(torch.float16), caches(torch.float16)
    assert decode_kv_blob_into_paged(blob, expected, key_cache, value_cache, [3, 0, 9]) == 11
    new_keys, new_values = decode_kv_blob(blob, expected, dtype=torch.float16)
    assert torch.equal(gather_paged(key_cache, [3, 0, 9], 11), torch.stack(new_keys))
    assert torch.equal(gather_paged(value_cache, [3, 0, 9], 11), torch.stack(new_values))


def test_dequantize_into_paged_matches_dequantize():
    x = dense(13, seed=3)
    q = quantize(x, 4, 32, "channel")
    cache = caches(torch.bfloat16)
    dequantize_into_paged(q, cache, [4, 5, 6, 7])
    assert torch.equal(gather_paged(cache, [4, 5, 6, 7], 13), dequantize(q, torch.bfloat16))


def test_paged_helpers_refuse_too_few_or_bad_block_ids():
    with pytest.raises(KvConfigError, match="9 tokens need 3 blocks of 4, got 2 block ids"):
        write_paged(dense(9), caches(), [0, 1])
    with pytest.raises(KvConfigError, match=r"block ids must be in \[0, 10\)"):
        write_paged(dense(5), caches(), [0, 10])


def test_paged_helpers_refuse_caches_of_the_wrong_shape():
    with pytest.raises(KvConfigError, match="got 1 cache tensors for 2 layers"):
        write_paged(dense(5), caches()[:1], [0, 1])
    bad = [torch.zeros(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, 8)] * NUM_LAYERS
    with pytest.raises(KvConfigError, match=r"expected \(num_blocks, block_size, 3, 16\)"):
        write_paged(dense(5), bad, [0, 1])
