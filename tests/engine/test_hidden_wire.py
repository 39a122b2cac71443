"""The hidden-state blob between pipeline stages: round trip, golden bytes, and refusal of bad blobs."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

from swarm.errors import WireError
from swarm.wire.hidden import HiddenHeader, pack_hidden, unpack_hidden

PAYLOAD = bytes(range(16)) * 2  # 2 tokens x hidden 4 x float32


def header(**changes) -> HiddenHeader:
    fields = dict(model_fingerprint="abc", first_layer=2, is_prefill=True, dtype="float32", hidden_size=4,
                  request_ids=("r0",), query_lens=(2,), start_positions=(0,), temperatures=(0.0,), top_ps=(1.0,),
                  top_ks=(0,), seeds=(-1,), num_generated=(0,), payload_bytes=len(PAYLOAD),
                  payload_crc32=zlib.crc32(PAYLOAD))
    return HiddenHeader(**{**fields, **changes})


def test_round_trip_and_golden_bytes():
    blob = pack_hidden(header(), PAYLOAD)
    got, payload = unpack_hidden(blob)
    assert got == header() and bytes(payload) == PAYLOAD
    # the format is a contract between peers: changing these bytes breaks older peers
    assert blob[:-len(PAYLOAD)].hex() == (
        "0000003e930118dc0010a361626302c3a7666c6f617433320491a272309102910091cb000000000000000091cb3ff0"
        "000000000000910091ff910020ceab4f616590")


@pytest.mark.parametrize("changes, message", [
    ({"dtype": "int8"}, "dtype"),
    ({"query_lens": (2, 1)}, "one entry per request"),
    ({"payload_bytes": 31}, "payload_bytes"),
    ({"start_positions": (3,)}, "position 0"),
    ({"is_prefill": False}, "exactly one token"),
    ({"query_lens": (0,), "payload_bytes": 0}, "query_lens"),
])
def test_invalid_headers_are_refused(changes, message):
    with pytest.raises(WireError, match=message):
        header(**changes)


def test_cut_short_or_corrupt_blobs_are_refused():
    blob = pack_hidden(header(), PAYLOAD)
    with pytest.raises(WireError, match="cut short"):
        unpack_hidden(blob[:-1])
    with pytest.raises(WireError, match="cut short"):
        unpack_hidden(blob[:2])
    with pytest.raises(WireError, match="checksum"):
        unpack_hidden(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(WireError, match="header"):
        unpack_hidden((10**6).to_bytes(4, "big") + blob[4:])
    assert dataclasses.is_dataclass(header())
