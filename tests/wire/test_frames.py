"""The bulk frame header: golden bytes, round trips and every way a header can be wrong."""

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.errors import WireError
from swarm.wire.frames import (
    FRAME_KINDS,
    HEADER_BYTES,
    MAX_FRAME_PAYLOAD_BYTES,
    FrameHeader,
    check_payload,
    decode_frame_header,
    encode_frame_header,
    frame_header,
)

GOLDEN = bytes.fromhex("53574631" "01" "01" "0001" "0000000000000007" "0000000000000003" "00000002"
                       "00000005" "3610a686")


def test_golden_header_bytes():
    header = frame_header(7, 3, "kv", 2, b"hello", is_last=True)
    data = encode_frame_header(header)
    assert len(data) == HEADER_BYTES == 40
    assert data[:36] == GOLDEN
    assert data[36:] == struct.pack(">I", zlib.crc32(data[:36]))
    assert decode_frame_header(data) == header and header.is_last


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.sampled_from(sorted(FRAME_KINDS)),
       st.integers(0, 2**32 - 1), st.binary(max_size=256), st.booleans())
def test_round_trip(request_id, epoch, kind, sequence, payload, is_last):
    header = frame_header(request_id, epoch, kind, sequence, payload, is_last=is_last)
    assert decode_frame_header(encode_frame_header(header)) == header
    check_payload(header, payload)


def corrupt(data: bytes, offset: int, value: bytes, *, fix_crc: bool = True) -> bytes:
    body = data[:offset] + value + data[offset + len(value):36]
    return body + (struct.pack(">I", zlib.crc32(body)) if fix_crc else data[36:])


@pytest.mark.parametrize("offset,value,match", [
    (0, b"XXXX", "magic"),
    (4, b"\x09", "version"),
    (5, b"\x63", "kind"),
    (6, b"\x00\x04", "flags"),
    (28, struct.pack(">I", MAX_FRAME_PAYLOAD_BYTES + 1), "payload_bytes"),
])
def test_bad_fields_are_refused(offset, value, match):
    data = encode_frame_header(frame_header(1, 1, "kv", 0, b"x"))
    with pytest.raises(WireError, match=match):
        decode_frame_header(corrupt(data, offset, value))


def test_header_checksum_catches_a_flipped_bit():
    data = bytearray(encode_frame_header(frame_header(1, 1, "kv", 0, b"x")))
    data[10] ^= 1
    with pytest.raises(WireError, match="checksum"):
        decode_frame_header(bytes(data))


def test_short_header_is_refused():
    with pytest.raises(WireError, match="40 bytes"):
        decode_frame_header(b"SWF1")


def test_payload_checksum_and_length_are_checked():
    header = frame_header(1, 1, "hidden", 0, b"abcd")
    with pytest.raises(WireError, match="checksum"):
        check_payload(header, b"abce")
    with pytest.raises(WireError, match="header says 4"):
        check_payload(header, b"abc")


def test_constructing_an_invalid_header_fails():
    with pytest.raises(WireError):
        FrameHeader(-1, 0, 1, 0, 0, 0)
    with pytest.raises(WireError):
        FrameHeader(0, 0, 1, 0, MAX_FRAME_PAYLOAD_BYTES + 1, 0)


def test_sealed_frames_carry_no_checksum():
    header = frame_header(1, 1, "kv", 0, b"abcd", is_sealed=True)
    assert header.is_sealed and header.checksum == 0
    check_payload(header, b"abce")  # integrity is the tag's job on the fast path
    with pytest.raises(WireError, match="must be 0"):
        FrameHeader(1, 1, 1, 0, 4, 123, flags=2)
