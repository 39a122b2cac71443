"""The pure-torch quantisation reference: error bound, packing layout, odd lengths, argument checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import KvConfigError, quant_ref
from kernels.quant_ref import (
    dequantize,
    pack_along_rows,
    quantize,
    quantized_nbytes,
    row_groups,
    row_layout,
    row_width,
    unpack_along_rows,
)


def error_bound(q) -> torch.Tensor:
    """Per-element bound on |x - deq(q(x))|: half a step plus the fp16 rounding of scale and minimum."""
    q_max = 2**q.bits - 1
    lo = q.minimum.float()
    hi = lo + q.scale.float() * q_max
    slack = 2.0**-10 * torch.maximum(lo.abs(), hi.abs())  # fp16 rounding of minimum and scale * q_max
    per_group = q.scale.float() / 2 + slack + 1e-6  # (num_leads, num_groups, width)
    _, row_len = row_layout(q.shape, q.axis)
    per_elt = per_group.repeat_interleave(q.group_size, dim=1)[:, :row_len]  # (num_leads, row_len, width)
    return per_elt.reshape(q.shape)  # the storage order is the tensor's own


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_round_trip_is_within_half_a_step(bits, axis, group_size):
    x = torch.randn(2, 3, 45, 64, generator=torch.Generator().manual_seed(1)) * 3
    x[..., 5] += 20  # an outlier channel, as real keys have
    q = quantize(x, bits, group_size, axis)
    err = (dequantize(q, torch.float32) - x).abs()
    assert bool((err <= error_bound(q)).all()), float((err - error_bound(q)).max())


def test_eight_bits_is_sixteen_times_finer_than_four():
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2))
    err4 = (dequantize(quantize(x, 4, 32, "token"), torch.float32) - x).abs().mean()
    err8 = (dequantize(quantize(x, 8, 32, "token"), torch.float32) - x).abs().mean()
    assert 10 < float(err4 / err8) < 25  # step ratio 255 / 15 = 17


def test_4bit_packs_even_element_in_low_nibble():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 16)  # one group: min 0, max 15, scale 1
    q = quantize(x, 4, 16, "token")
    assert q.scale.flatten().tolist() == [1.0] and q.minimum.flatten().tolist() == [0.0]
    assert q.data.flatten().tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert torch.equal(dequantize(q, torch.float32), x)


def test_8bit_stores_one_code_per_byte():
    x = torch.tensor([0.0, 255.0, 1.0, 128.0, 7.0, 0.0, 0.0, 0.0]).reshape(1, 1, 8)
    q = quantize(x, 8, 8, "token")
    assert q.data.flatten().tolist() == [0, 255, 1, 128, 7, 0, 0, 0]


def test_channel_codes_are_stored_token_major():
    x = torch.zeros(1, 3, 2)  # (heads, tokens, head_dim): channel 0 counts 0, 1, 2; channel 1 is 10, 8, 9
    x[0, :, 0] = torch.tensor([0.0, 1.0, 2.0])
    x[0, :, 1] = torch.tensor([10.0, 8.0, 9.0])
    q = quantize(x, 8, 8, "channel")  # one group per channel: minimum 0 and 8, scale 2/255 and 2/255
    assert q.data.shape == (1, 3, 2) and q.scale.shape == (1, 1, 2)
    assert q.minimum.flatten().tolist() == [0.0, 8.0]
    assert q.data[0].tolist() == [[0, 255], [128, 0], [255, 128]]  # (tokens, channels)
    q4 = quantize(x, 4, 8, "channel")  # tokens 0 and 1 share byte 0; token 2 and its padding copy byte 1
    assert q4.data[0].tolist() == [[0x80 | 0x0, 0x0 | 0xF], [0xF0 | 0xF, 0x80 | 0x8]]


def test_pack_and_unpack_are_inverse():
    codes = torch.randint(0, 16, (5, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(unpack_along_rows(pack_along_rows(codes)), codes)


def test_channel_axis_groups_along_tokens():
    x = torch.zeros(1, 64, 8)  # (heads, tokens, head_dim)
    x[0, :, 3] = torch.linspace(100, 200, 64)  # one outlier channel
    q = quantize(x, 4, 32, "channel")
    scale = row_groups(q.scale).float()  # (head_dim rows, token groups)
    assert bool((scale[3] > 0).all()) and float(scale[[0, 1, 2, 4, 5, 6, 7]].abs().max()) == 0.0
    assert float((dequantize(q, torch.float32) - x).abs()[..., [0, 1, 2, 4, 5, 6, 7]].max()) == 0.0


@pytest.mark.parametrize("num_tokens", [1, 7, 33, 100])
@pytest.mark.parametrize("axis", ["token", "channel"])
def test_odd_token_counts_round_trip_and_store_no_padding(num_tokens, axis):
    x = torch.randn(3, num_tokens, 64, generator=torch.Generator().manual_seed(num_tokens))
    q = quantize(x, 4, 32, axis)
    num_rows, row_len = row_layout(tuple(x.shape), axis)
    width = row_width(tuple(x.shape), axis)
    assert q.data.shape == (num_rows // width, -(-row_len // 2), width)
    assert q.data.numel() + 2 * (q.scale.numel() + q.minimum.numel()) == quantized_nbytes(
        x.shape, 4, 32, axis
    )
    out = dequantize(q, torch.float32)
    assert out.shape == x.shape
    assert bool(((out - x).abs() <= error_bound(q)).all())


def test_padding_repeats_the_last_element_so_the_range_is_unchanged():
    x = torch.tensor([[[-1.0], [5.0], [2.0]]])  # (1 head, 3 tokens, head_dim 1): one channel row of 3
    q = quantize(x, 4, 8, "channel")
    assert q.minimum.flatten().tolist() == [-1.0]
    assert q.scale.flatten().tolist() == [pytest.approx(6 / 15, rel=1e-3)]


def test_constant_group_has_zero_scale_and_is_exact():
    x = torch.full((2, 40, 16), 0.75)
    q = quantize(x, 4, 32, "token")
    assert float(q.scale.float().abs().max()) == 0.0
    assert torch.equal(dequantize(q, torch.float32), x)


def test_quantize_leaves_its_input_alone():
    x = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(4))
    before = x.clone()
    quantize(x, 4, 32, "token")
    quantize(x[0], 8, 32, "channel")
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_returns_the_asked_dtype(dtype):
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(5)).to(dtype)
    out = dequantize(quantize(x, 8, 64, "token"), dtype)
    assert out.dtype == dtype and out.shape == x.shape


@pytest.mark.parametrize(
    ("bits", "group_size", "axis", "message"),
    [
        (3, 32, "token", "bits=3"),
        (16, 32, "token", "bits=16"),
        (4, 48, "token", "group_size=48"),
        (4, 4, "token", "group_size=4"),
        (4, 2048, "token", "group_size=2048"),
        (4, 32, "head", "axis='head'"),
    ],
)
def test_quantize_rejects_unsupported_arguments(bits, group_size, axis, message):
    with pytest.raises(KvConfigError, match=message.replace("(", r"\(")):
        quantize(torch.randn(2, 8, 8), bits, group_size, axis)


def test_quantize_rejects_integer_and_empty_tensors():
    with pytest.raises(KvConfigError, match="non-empty float tensor"):
        quantize(torch.ones(2, 8, 8, dtype=torch.int32), 4, 32, "token")
    with pytest.raises(KvConfigError, match="non-empty float tensor"):
        quantize(torch.ones(2, 0, 8), 4, 32, "token")


@settings(max_examples=60, deadline=None)
@given(
    num_layers=st.integers(1, 3),
    kv_heads=st.integers(1, 4),
    num_tokens=st.integers(1, 70),
    head_dim=st.sampled_from([8, 16, 24, 64, 128]),
    bits=st.sampled_from([4, 8]),
    group_size=st.sampled_from([8, 16, 32, 64, 128]),
    axis=st.sampled_from(["token", "channel"]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_round_trips_within_the_bound(
    num_layers, kv_heads, num_tokens, head_dim, bits, group_size, axis, seed
):
    shape = (num_layers, kv_heads, num_tokens, head_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4
    q = quantize(x, bits, group_size, axis)
    num_rows, _ = row_layout(shape, axis)
    num_leads = num_rows // row_width(shape, axis)
    assert q.scale.shape == q.minimum.shape and q.scale.shape[0] == num_leads == q.data.shape[0]
    assert q.data.numel() + 4 * q.scale.numel() == quantized_nbytes(shape, bits, group_size, axis)
    err = (dequantize(q, torch.float32) - x).abs()
    assert bool((err <= error_bound(q)).all())


@pytest.mark.parametrize("axis", ["token", "channel"])
@pytest.mark.parametrize("bits", [4, 8])
def test_processing_rows_in_blocks_changes_nothing(monkeypatch, axis, bits):
    x = torch.randn(3, 2, 45, 16, generator=torch.Generator().manual_seed(6))
    whole = quantize(x, bits, 32, axis)
    monkeypatch.setattr(quant_ref, "BLOCK_ELEMENTS", 40)  # a few rows per block
    blocked = quantize(x, bits, 32, axis)
    assert torch.equal(whole.data, blocked.data) and torch.equal(whole.scale, blocked.scale)
    assert torch.equal(whole.minimum, blocked.minimum)
    assert torch.equal(dequantize(blocked, torch.float32), dequantize_whole(whole, monkeypatch))


def dequantize_whole(q, monkeypatch):
    monkeypatch.setattr(quant_ref, "BLOCK_ELEMENTS", 1 << 30)
    return dequantize(q, torch.float32)
