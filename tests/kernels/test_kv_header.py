"""KvHeader (swarm.wire.kv): golden bytes, round trip, forward compatibility, validation."""

import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire.kv import KvHeader, decode_kv_header, encode_kv_header

GOLDEN_FIELDS = ("m", 0, 2, 3, 5, 64, "float16", 4, 32, 128, "channel", 1, 1234, 0xDEADBEEF)
HEADER = KvHeader(*GOLDEN_FIELDS)
GOLDEN = bytes.fromhex(
    "53574b56"  # magic "SWKV"
    "00000028"  # header length 40, big-endian
    "930114"  # the codec's envelope [1, 20 (KvHeader), ...
    "9e"  # [14 fields ...
    "a16d0002030540a7666c6f61743136"  # "m", 0, 2, 3, 5, 64, "float16"
    "0420cc80a76368616e6e656c01"  # 4, 32, 128, "channel", 1
    "cd04d2cedeadbeef"  # 1234, 0xDEADBEEF
)


def test_header_encodes_to_the_golden_bytes():
    assert encode_kv_header(HEADER) == GOLDEN


def test_golden_bytes_decode_to_the_header():
    assert decode_kv_header(GOLDEN + b"payload") == (HEADER, len(GOLDEN))


def test_trailing_fields_from_a_newer_sender_are_ignored():
    body = msgpack.packb([1, 20, [*list(GOLDEN_FIELDS), "future", 7]])
    header, offset = decode_kv_header(b"SWKV" + len(body).to_bytes(4, "big") + body)
    assert header == HEADER and offset == 8 + len(body)


def test_header_validates_on_construction():
    with pytest.raises(WireError, match="KvHeader.head_dim=0"):
        KvHeader("m", 0, 2, 3, 5, 0, "float16", 4, 32, 128, "channel", 1, 1234, 0)
    with pytest.raises(WireError, match="KvHeader.first_layer='0'"):
        KvHeader("m", "0", 2, 3, 5, 64, "float16", 4, 32, 128, "channel", 1, 1234, 0)


def test_header_refuses_binary_fields_and_long_strings():
    body = msgpack.packb([1, 20, [b"m", *GOLDEN_FIELDS[1:]]], use_bin_type=True)
    with pytest.raises(WireError, match="KvHeader.model_fingerprint: expected str, got bytes"):
        decode_kv_header(b"SWKV" + len(body).to_bytes(4, "big") + body)
    body = msgpack.packb([1, 20, ["x" * 129, *GOLDEN_FIELDS[1:]]])
    with pytest.raises(WireError, match="KvHeader.model_fingerprint='xxxx"):
        decode_kv_header(b"SWKV" + len(body).to_bytes(4, "big") + body)


def test_header_is_the_codecs_message_20():
    from swarm.wire import codec

    assert codec.decode(codec.encode(HEADER), expect=KvHeader) == HEADER
    assert GOLDEN[8:] == codec.encode(HEADER)


def test_the_wire_module_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, swarm.wire.kv; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
