"""The KV wire blob: round trips in every format, sizes, and every way decode_kv_blob refuses a blob."""

import dataclasses
import struct
import zlib

import pytest
import torch

from kernels import (
    KvConfigError,
    KvExpectation,
    KvFormat,
    KvFormatError,
    decode_kv_blob,
    encode_kv_blob,
)
from kernels.kv_format import PayloadLayout
from swarm.errors import SwarmError
from swarm.wire.kv import KvHeader, decode_kv_header, encode_kv_header

NUM_LAYERS, KV_HEADS, NUM_TOKENS, HEAD_DIM = 3, 2, 37, 64
FINGERPRINT = "smollm2-135m/abc123"
EXPECTED = KvExpectation(FINGERPRINT, 4, NUM_LAYERS, KV_HEADS, HEAD_DIM)
FORMATS = [
    KvFormat(bits=16),
    KvFormat(bits=8, group_size=32, key_axis="token", num_sink_tokens=0),
    KvFormat(bits=4, group_size=64, key_axis="token", num_sink_tokens=0),
    KvFormat(bits=4, group_size=32, key_axis="channel", value_group_size=128, num_sink_tokens=4),
    KvFormat(),
]


def section_sizes(header: KvHeader) -> list[int]:
    return PayloadLayout.of(header).section_sizes()


def make_kv(seed: int = 0, num_tokens: int = NUM_TOKENS, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(KV_HEADS, num_tokens, HEAD_DIM, generator=gen).to(dtype) for _ in range(NUM_LAYERS)]
    values = [torch.randn(KV_HEADS, num_tokens, HEAD_DIM, generator=gen).to(dtype) for _ in range(NUM_LAYERS)]
    return keys, values


def make_blob(fmt: KvFormat = KvFormat(bits=4), **kv) -> bytes:
    keys, values = make_kv(**kv)
    return encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=4)


def split(blob: bytes) -> tuple[KvHeader, bytes]:
    header, offset = decode_kv_header(blob)
    return header, blob[offset:]


def rebuild(header: KvHeader, payload: bytes, **changes) -> bytes:
    """A blob with header fields changed; the checksum is recomputed unless `checksum` is given."""
    changes.setdefault("checksum", zlib.crc32(payload))
    return encode_kv_header(dataclasses.replace(header, **changes)) + payload


def rejects(blob: bytes, match: str, expected: KvExpectation = EXPECTED) -> None:
    with pytest.raises(KvFormatError, match=match):
        decode_kv_blob(blob, expected, dtype=torch.float32)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("num_tokens", [1, 37, 128])
def test_blob_round_trips_per_layer(fmt, num_tokens):
    keys, values = make_kv(num_tokens=num_tokens)
    blob = encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=4)
    new_keys, new_values = decode_kv_blob(blob, EXPECTED, dtype=torch.float32)
    assert len(new_keys) == len(new_values) == NUM_LAYERS
    tolerance = {16: 2e-3, 8: 0.03, 4: 0.5}[fmt.bits]  # |x| < 5 here: half a step plus fp16 rounding
    for before, after in zip(keys + values, new_keys + new_values, strict=True):
        assert after.shape == (KV_HEADS, num_tokens, HEAD_DIM) and after.dtype == torch.float32
        assert float((before - after).abs().max()) <= tolerance


def test_fp16_blob_is_exact_for_fp16_input():
    keys, values = make_kv(dtype=torch.float16)
    blob = encode_kv_blob(keys, values, KvFormat(bits=16), model_fingerprint=FINGERPRINT, first_layer=4)
    new_keys, new_values = decode_kv_blob(blob, EXPECTED, dtype=torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(keys + values, new_keys + new_values, strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_decode_gives_the_asked_dtype_whatever_the_input_dtype(dtype):
    blob = make_blob(KvFormat(), dtype=torch.bfloat16)
    new_keys, _ = decode_kv_blob(blob, EXPECTED, dtype=dtype)
    assert new_keys[0].dtype == dtype


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("num_tokens", [1, 3, 40, 256])
def test_payload_size_is_what_the_format_predicts(fmt, num_tokens):
    keys, values = make_kv(num_tokens=num_tokens)
    header, payload = split(encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=4))
    assert (
        fmt.payload_bytes(NUM_LAYERS, KV_HEADS, num_tokens, HEAD_DIM) == len(payload) == header.payload_bytes
    )
    assert sum(section_sizes(header)) == len(payload)


def test_wire_size_matches_bits_per_element_without_sinks():
    for fmt in FORMATS[:3]:
        keys, values = make_kv(num_tokens=256)
        _, payload = split(encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=4))
        num_elements = 2 * NUM_LAYERS * KV_HEADS * 256 * HEAD_DIM
        assert len(payload) * 8 / num_elements == pytest.approx(fmt.bits_per_element())


def test_sink_tokens_travel_exactly_in_fp16():
    keys, values = make_kv(dtype=torch.float16)
    keys[0][:, 0] = 300.0  # a huge first token would wreck its groups' range if it were quantised
    blob = encode_kv_blob(
        keys, values, KvFormat(bits=4, num_sink_tokens=2), model_fingerprint=FINGERPRINT, first_layer=4
    )
    assert split(blob)[0].num_sink_tokens == 2
    new_keys, new_values = decode_kv_blob(blob, EXPECTED, dtype=torch.float16)
    assert torch.equal(new_keys[0][:, :2], keys[0][:, :2]) and torch.equal(
        new_values[2][:, :2], values[2][:, :2]
    )
    assert float((new_keys[0][:, 2:] - keys[0][:, 2:]).abs().max()) < 0.5


def test_a_sequence_shorter_than_the_sinks_is_all_fp16():
    keys, values = make_kv(num_tokens=1, dtype=torch.float16)
    blob = encode_kv_blob(
        keys, values, KvFormat(bits=4, num_sink_tokens=4), model_fingerprint=FINGERPRINT, first_layer=4
    )
    header, payload = split(blob)
    assert header.num_sink_tokens == 1 and len(payload) == 2 * NUM_LAYERS * KV_HEADS * HEAD_DIM * 2
    new_keys, _ = decode_kv_blob(blob, EXPECTED, dtype=torch.float16)
    assert torch.equal(new_keys[1], keys[1])


def test_default_format_is_under_three_tenths_of_fp16():
    assert KvFormat().bits_per_element() / 16 <= 0.30


GOLDEN_PAYLOAD = bytes.fromhex(  # KvFormat(bits=4, group_size=8): the payload of golden_kv()
    "000000bc004000c2004400c5004600c7004700460045004400420040003c0000663e663e663e663e663e663e663e663e"
    "004820d0004960d0004aa0d0004be0d077377737773777370048004c004e005050af50af50af50affa05fa05fa05fa05"
    "df9b4602df9b4602df9b4602df9b4602"
)


def golden_kv() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One layer, one head, 5 tokens, head_dim 8: keys count up, odd channels negated; values reversed."""
    counting = torch.arange(5 * 8, dtype=torch.float32).reshape(1, 5, 8)  # (kv_heads, tokens, head_dim)
    return [counting * (-1) ** torch.arange(8)], [counting.flip(-1)]


def test_payload_layout_is_the_golden_bytes():
    keys, values = golden_kv()
    fmt = KvFormat(bits=4, group_size=8)
    header, payload = split(encode_kv_blob(keys, values, fmt, model_fingerprint="m", first_layer=0))
    assert payload == GOLDEN_PAYLOAD
    # Key codes come token-major: byte [j, c] holds channel c of body tokens 2j (low) and 2j + 1 (high).
    # Channel 0 runs 8, 16, 24, 32 (codes 0, 5, 10, 15); channel 1 runs -9 .. -33 (codes 15, 10, 5, 0).
    key_codes = payload[-32:-16]
    assert key_codes[:2] == bytes([0x50, 0xAF]) and key_codes[8:10] == bytes([0xFA, 0x05])
    expected = KvExpectation("m", 0, 1, 1, 8)
    got_keys, _ = decode_kv_blob(encode_kv_header(header) + GOLDEN_PAYLOAD, expected, dtype=torch.float32)
    torch.testing.assert_close(got_keys[0], keys[0], rtol=0, atol=0.9)  # half a step of 1.6 (and fp16)


def test_header_records_shape_format_and_checksum():
    fmt = KvFormat(bits=4, group_size=32, key_axis="channel", value_group_size=128, num_sink_tokens=3)
    header, payload = split(make_blob(fmt))
    assert (header.model_fingerprint, header.first_layer, header.num_layers) == (FINGERPRINT, 4, NUM_LAYERS)
    assert (header.kv_heads, header.num_tokens, header.head_dim) == (KV_HEADS, NUM_TOKENS, HEAD_DIM)
    assert (header.bits, header.group_size, header.value_group_size) == (4, 32, 128)
    assert (header.key_axis, header.num_sink_tokens) == ("channel", 3)
    assert header.dtype == "float16" and header.checksum == zlib.crc32(payload)


# --- every refusal of decode_kv_blob, each with its message -------------------------------------------


@pytest.mark.parametrize(
    ("expected", "match"),
    [
        (dataclasses.replace(EXPECTED, model_fingerprint="llama-7b"), "is for model 'smollm2-135m/abc123'"),
        (dataclasses.replace(EXPECTED, first_layer=0), r"holds layers \[4, 7\), expected \[0, 3\)"),
        (dataclasses.replace(EXPECTED, num_layers=4), r"holds layers \[4, 7\), expected \[4, 8\)"),
        (dataclasses.replace(EXPECTED, kv_heads=3), "kv_heads=2, head_dim=64; expected kv_heads=3"),
        (dataclasses.replace(EXPECTED, head_dim=128), "expected kv_heads=2, head_dim=128"),
    ],
)
def test_decode_refuses_a_blob_for_another_model_layer_range_or_shape(expected, match):
    rejects(make_blob(), match, expected)


def test_decode_refuses_a_corrupted_payload():
    blob = bytearray(make_blob())
    blob[-10] ^= 0x01
    rejects(bytes(blob), "checksum mismatch")


@pytest.mark.parametrize("cut", [1, 100])
def test_decode_refuses_a_truncated_payload(cut):
    rejects(make_blob()[:-cut], "truncated KV blob: payload of")


def test_decode_refuses_trailing_bytes():
    rejects(make_blob() + b"\x00", "oversized KV blob: payload of")


def test_decode_refuses_a_truncated_header():
    blob = make_blob()
    rejects(blob[:20], "truncated KV blob: header needs")
    rejects(blob[:5], "not a KV blob")


def test_decode_refuses_bad_magic():
    rejects(b"XXXX" + make_blob()[4:], "not a KV blob")


def test_decode_refuses_an_oversized_header_before_reading_it():
    rejects(b"SWKV" + struct.pack(">I", 10**9) + b"\x90" * 10, "over the 1024-byte cap")


def test_decode_refuses_a_header_that_is_not_msgpack():
    body = b"\xc1\xc1\xc1"
    rejects(b"SWKV" + struct.pack(">I", len(body)) + body, "not a valid msgpack message")


def test_decode_refuses_a_header_of_the_wrong_envelope():
    import msgpack

    body = msgpack.packb([2, 20, []])
    rejects(b"SWKV" + struct.pack(">I", len(body)) + body, "wire version 2 is not supported")
    body = msgpack.packb([1, 39, []])
    rejects(b"SWKV" + struct.pack(">I", len(body)) + body, "unknown message type 39")
    body = msgpack.packb([1, 20, [FINGERPRINT, 4]])
    rejects(b"SWKV" + struct.pack(">I", len(body)) + body, "missing required field 'num_layers'")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("bits", 5, r"KvHeader.bits=5: expected one of \(16, 8, 4\)"),
        ("bits", True, "KvHeader.bits: expected int, got bool"),
        ("group_size", 48, "KvHeader.group_size=48"),
        ("key_axis", "head", "KvHeader.key_axis='head'"),
        ("num_tokens", 0, r"KvHeader.num_tokens=0: expected an int in \[1, 1048576\]"),
        ("num_layers", 10**6, "KvHeader.num_layers=1000000"),
        ("dtype", "float64", "KvHeader.dtype='float64'"),
        ("model_fingerprint", "", "KvHeader.model_fingerprint=''"),
        ("checksum", -1, "KvHeader.checksum=-1"),
    ],
)
def test_decode_refuses_a_header_field_out_of_range(field, value, match):
    import msgpack

    header, payload = split(make_blob())
    fields = list(dataclasses.astuple(header))
    fields[[f.name for f in dataclasses.fields(KvHeader)].index(field)] = value
    body = msgpack.packb([1, 20, fields])
    rejects(b"SWKV" + struct.pack(">I", len(body)) + body + payload, match)


def test_decode_refuses_inconsistent_sink_counts():
    header, payload = split(make_blob(KvFormat(bits=16)))
    rejects(rebuild(header, payload, num_sink_tokens=1), "num_sink_tokens=1 with num_tokens=37 and bits=16")
    header, payload = split(make_blob(KvFormat(bits=4), num_tokens=2))
    rejects(rebuild(header, payload, num_sink_tokens=3), "sinks must be at most the tokens")


def test_decode_refuses_a_payload_size_that_disagrees_with_the_shape():
    header, payload = split(make_blob())
    rejects(rebuild(header, payload, payload_bytes=header.payload_bytes + 2), "payload_bytes=")


def test_decode_refuses_a_huge_claimed_shape_before_allocating():
    header, payload = split(make_blob())
    blob = rebuild(header, payload, num_tokens=1 << 20, payload_bytes=1 << 32)
    rejects(blob, "payload_bytes=4294967296, its shape and format need")


def test_decode_refuses_non_finite_fp16_values():
    header, payload = split(make_blob(KvFormat(bits=16)))
    payload = bytearray(payload)
    payload[0:2] = struct.pack("<e", float("nan"))
    rejects(rebuild(header, bytes(payload)), "non-finite value")
    payload[0:2] = struct.pack("<e", float("inf"))
    rejects(rebuild(header, bytes(payload)), "non-finite value")


@pytest.mark.parametrize(
    ("section", "value"),
    [
        (0, float("nan")),
        (1, float("inf")),
        (2, float("nan")),
        (2, -1.0),
        (3, float("inf")),
        (5, float("-inf")),
    ],
)
def test_decode_refuses_non_finite_sinks_scales_minimums_or_negative_scales(section, value):
    header, payload = split(make_blob(KvFormat(bits=4)))
    offset = sum(section_sizes(header)[:section])  # sinks of K, V; scales and minimums of K, then of V
    payload = bytearray(payload)
    payload[offset : offset + 2] = struct.pack("<e", value)
    rejects(rebuild(header, bytes(payload)), "non-finite value, a negative scale")


def test_decode_refuses_values_that_overflow_the_target_dtype():
    header, payload = split(make_blob(KvFormat(bits=4)))
    offset = sum(section_sizes(header)[:2])  # the first key scale
    payload = bytearray(payload)
    payload[offset : offset + 2] = struct.pack("<e", 60000.0)  # scale * 15 + minimum is beyond fp16's range
    blob = rebuild(header, bytes(payload))
    with pytest.raises(KvFormatError, match="beyond torch.float16's range"):
        decode_kv_blob(blob, EXPECTED, dtype=torch.float16)
    decode_kv_blob(blob, EXPECTED, dtype=torch.float32)  # representable in fp32: accepted


def test_kv_format_error_is_a_swarm_error():
    assert issubclass(KvFormatError, SwarmError)


# --- encode refusals and KvFormat validation ------------------------------------------------------------


def test_encode_refuses_inconsistent_or_bad_tensors():
    keys, values = make_kv()
    with pytest.raises(KvConfigError, match="keys is empty"):
        encode_kv_blob([], [], KvFormat(), model_fingerprint=FINGERPRINT, first_layer=0)
    with pytest.raises(KvConfigError, match=r"values\[1\] is torch.float32 \(2, 5, 64\)"):
        encode_kv_blob(
            keys, [values[0], values[1][:, :5]], KvFormat(), model_fingerprint=FINGERPRINT, first_layer=0
        )
    with pytest.raises(KvConfigError, match="differ in shape"):
        encode_kv_blob(keys, values[:2], KvFormat(), model_fingerprint=FINGERPRINT, first_layer=0)
    keys[2][0, 0, 0] = float("nan")
    with pytest.raises(KvConfigError, match="keys holds a non-finite value"):
        encode_kv_blob(keys, values, KvFormat(), model_fingerprint=FINGERPRINT, first_layer=0)


@pytest.mark.parametrize("fmt", [KvFormat(bits=16), KvFormat(bits=8), KvFormat(bits=4)], ids=str)
@pytest.mark.parametrize(("token", "value"), [(0, float("inf")), (5, 70000.0), (9, float("nan"))])
def test_encode_refuses_values_fp16_cannot_carry(fmt, token, value):
    keys, values = make_kv()
    values[1][0, token, 3] = value  # token 0 is the fp16 sink, the others are quantised
    with pytest.raises(KvConfigError, match="values holds a non-finite value or one beyond fp16's range"):
        encode_kv_blob(keys, values, fmt, model_fingerprint=FINGERPRINT, first_layer=0)


def test_encode_refuses_a_bad_fingerprint_or_layer():
    keys, values = make_kv()
    with pytest.raises(KvConfigError, match="model_fingerprint=''"):
        encode_kv_blob(keys, values, KvFormat(), model_fingerprint="", first_layer=0)
    with pytest.raises(KvConfigError, match="first_layer=-1"):
        encode_kv_blob(keys, values, KvFormat(), model_fingerprint=FINGERPRINT, first_layer=-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 2}, r"KvFormat.bits=2: must be one of \(16, 8, 4\)"),
        ({"key_axis": "layer"}, "KvFormat.key_axis='layer'"),
        ({"group_size": 24}, "group_size=24: must be a power of two"),
        ({"value_group_size": 4096}, "group_size=4096: must be a power of two"),
        ({"num_sink_tokens": 65}, r"KvFormat.num_sink_tokens=65: must be an int in \[0, 64\]"),
    ],
)
def test_kv_format_validates_its_fields(kwargs, match):
    with pytest.raises(KvConfigError, match=match):
        KvFormat(**kwargs)
