"""The Triton kernels against the pure-torch reference, on a CUDA GPU (skipped with a reason elsewhere)."""

import pytest
import torch

from kernels import quant_ref
from kernels.paged import token_slots
from kernels.quant import has_triton

if not has_triton():
    pytest.skip("needs a CUDA GPU and triton", allow_module_level=True)

from kernels import quant_triton  # noqa: E402

CASES = [
    (bits, group_size, axis, num_tokens)
    for bits in (4, 8)
    for group_size in (32, 64, 128)
    for axis in ("token", "channel")
    for num_tokens in (1, 37, 256)
]


def sample(num_tokens: int, dtype=torch.float16) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(num_tokens)
    x = torch.randn(4, 3, num_tokens, 64, generator=gen, device="cuda") * 2
    x[..., 7] += 15  # an outlier channel
    return x.to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(("bits", "group_size", "axis", "num_tokens"), CASES)
def test_triton_quantize_matches_the_reference(bits, group_size, axis, num_tokens):
    x = sample(num_tokens)
    ref = quant_ref.quantize(x, bits, group_size, axis)
    got = quant_triton.quantize(x, bits, group_size, axis)
    assert got.data.shape == ref.data.shape and got.scale.shape == ref.scale.shape
    assert torch.equal(got.minimum, ref.minimum)
    # fp32 division may round differently on the GPU: scales agree to one fp16 ulp, codes almost always
    torch.testing.assert_close(got.scale.float(), ref.scale.float(), rtol=2**-10, atol=0)
    ref_codes, got_codes = quant_ref.unpack_codes(ref), quant_ref.unpack_codes(got)
    assert float((ref_codes.int() - got_codes.int()).abs().max()) <= 1
    assert float((ref_codes != got_codes).float().mean()) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize(("bits", "group_size", "axis", "num_tokens"), CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_dequantize_matches_the_reference(bits, group_size, axis, num_tokens, dtype):
    q = quant_ref.quantize(sample(num_tokens), bits, group_size, axis)
    ref = quant_ref.dequantize(q, dtype)
    got = quant_triton.dequantize(q, dtype)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [4, 8])
def test_triton_dequantize_into_paged_matches_the_reference(axis, bits):
    x = sample(37)[0]  # (kv_heads, num_tokens, head_dim)
    q = quant_ref.quantize(x, bits, 32, axis)
    cache = torch.full((12, 16, 3, 64), -7.0, dtype=torch.float16, device="cuda")
    block_ids = [9, 2, 5]
    slots = token_slots(block_ids, 37, cache)
    quant_triton.dequantize_paged(q, cache, slots)
    dense = quant_ref.dequantize(q, torch.float16)  # (kv_heads, num_tokens, head_dim)
    for token in range(37):
        block, offset = block_ids[token // 16], token % 16
        torch.testing.assert_close(cache[block, offset], dense[:, token], rtol=1e-3, atol=1e-3)
    assert bool((cache[5, 5:] == -7.0).all()) and bool((cache[0] == -7.0).all())
