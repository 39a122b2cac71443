"""The fast CPU kernels (kernels.quant_cpu) against the pure-torch reference: bit-exact codes, scales and values."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import dequantize, quant_cpu, quant_ref, quantize


def assert_same(got, ref) -> None:
    assert got.shape == ref.shape and (got.bits, got.group_size, got.axis) == (
        ref.bits,
        ref.group_size,
        ref.axis,
    )
    assert got.data.shape == ref.data.shape and torch.equal(got.data, ref.data)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.minimum, ref.minimum)


@settings(max_examples=80, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    num_tokens=st.integers(1, 140),
    head_dim=st.sampled_from([1, 3, 8, 24, 64]),
    bits=st.sampled_from([4, 8]),
    group_size=st.sampled_from([8, 16, 32, 64, 128]),
    axis=st.sampled_from(["token", "channel"]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    seed=st.integers(0, 2**16),
)
def test_fast_quantize_and_dequantize_are_bit_exact(
    lead, num_tokens, head_dim, bits, group_size, axis, dtype, seed
):
    x = torch.randn(*lead, num_tokens, head_dim, generator=torch.Generator().manual_seed(seed)) * 3
    x[..., 0] += 20  # an outlier channel
    x = x.to(dtype)
    ref = quant_ref.quantize(x, bits, group_size, axis)
    assert_same(quant_cpu.quantize(x, bits, group_size, axis), ref)
    for out_dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert torch.equal(quant_cpu.dequantize(ref, out_dtype), quant_ref.dequantize(ref, out_dtype))


@pytest.mark.parametrize("block_elements", [64, 1000, 1 << 18])  # runs of groups, several leads, one block
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [4, 8])
def test_block_size_changes_nothing(monkeypatch, block_elements, axis, bits):
    x = torch.randn(2, 3, 77, 16, generator=torch.Generator().manual_seed(1)).half()
    ref = quant_ref.quantize(x, bits, 16, axis)
    monkeypatch.setattr(quant_cpu, "BLOCK_ELEMENTS", block_elements)
    assert_same(quant_cpu.quantize(x, bits, 16, axis), ref)
    assert torch.equal(quant_cpu.dequantize(ref), quant_ref.dequantize(ref))


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_a_strided_slice_is_read_in_place_and_quantised_like_a_copy(axis):
    x = torch.randn(3, 2, 65, 64, generator=torch.Generator().manual_seed(2)).half()
    body = x[:, :, 1:]  # the blob's tokens after the sink: not contiguous
    before = x.clone()
    assert_same(quant_cpu.quantize(body, 4, 64, axis), quant_ref.quantize(body.contiguous(), 4, 64, axis))
    assert torch.equal(x, before)


def test_constant_and_zero_groups_match_the_reference():
    x = torch.zeros(2, 70, 64, dtype=torch.float16)
    x[1] = 0.75
    x[0, :, 5] = torch.linspace(-3, 3, 70)
    for axis in ("token", "channel"):
        ref = quant_ref.quantize(x, 4, 32, axis)
        assert_same(quant_cpu.quantize(x, 4, 32, axis), ref)
        assert torch.equal(quant_cpu.dequantize(ref, torch.float32), quant_ref.dequantize(ref, torch.float32))


def test_cpu_tensors_dispatch_to_the_fast_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(quant_cpu, "quantize", lambda *args: calls.append("quantize"))
    monkeypatch.setattr(quant_cpu, "dequantize", lambda *args: calls.append("dequantize"))
    quantize(torch.zeros(1, 8, 8), 4, 8, "token")
    dequantize(quant_ref.quantize(torch.zeros(1, 8, 8), 4, 8, "token"))
    assert calls == ["quantize", "dequantize"]


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_into_a_token_slice_or_a_tokens_first_buffer_writes_the_reference_values(axis, bits):
    x = torch.randn(2, 3, 41, 16, generator=torch.Generator().manual_seed(3))
    q = quant_ref.quantize(x[:, :, 1:], bits, 16, axis)
    want = quant_ref.dequantize(q, torch.float16)  # (2, 3, 40, 16)
    dense = torch.full((2, 3, 41, 16), 7.0, dtype=torch.float16)
    assert dequantize(q, out=dense[:, :, 1:]) is not None
    assert torch.equal(dense[:, :, 1:], want) and bool((dense[:, :, 0] == 7.0).all())
    layer = quant_ref.quantize(x[0], bits, 16, axis)  # (kv_heads, tokens, head_dim)
    rows = torch.empty(41, 3, 16, dtype=torch.bfloat16)  # (tokens, kv_heads, head_dim), as cache slots
    quant_cpu.dequantize(layer, out=rows.transpose(0, 1))
    assert torch.equal(rows.transpose(0, 1), quant_ref.dequantize(layer, torch.bfloat16))
