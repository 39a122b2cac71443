import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire import HardwareProfile, Plan, decode, encode
from swarm.wire.codec import WIRE_VERSION


def profile(**changes):
    fields = dict(peer_id="12D3Koo", host="a40-0", gpu="A40", num_gpus=2, tflops=149.7, memory_gb=48.0,
                  memory_bandwidth_gbs=696.0, price_per_gpu_hour=0.403, is_emulated=True,
                  measured={"decode_tokens_per_s": 812.5})
    fields.update(changes)
    return HardwareProfile(**fields)


def test_round_trip():
    assert decode(encode(profile())) == profile()


def test_golden_bytes_of_a_profile():
    # The format is a contract between versions of swarm: change it only with a new wire version.
    data = encode(profile(measured={}))
    assert data.hex() == (
        "9301019c a7313244 334b6f6f a5613430 2d30a341 343002cb 4062b666 66666666 cb404800 00000000 00cb4085 "
        "c0000000 0000cb3f d9cac083 126e98c3 a3637075 80a0").replace(" ", "")


def test_unknown_trailing_fields_are_ignored_and_missing_optional_ones_defaulted():
    body = msgpack.unpackb(encode(profile()))[2]
    longer = msgpack.packb([WIRE_VERSION, 1, [*body, "a field from a newer peer"]])
    assert decode(longer) == profile()
    shorter = msgpack.packb([WIRE_VERSION, 1, body[:7]])
    assert decode(shorter).price_per_gpu_hour == 0.0


@pytest.mark.parametrize("envelope, message", [
    ([2, 1, []], "wire version 2 is not supported"),
    ([WIRE_VERSION, 999, []], "unknown message type 999"),
    ([WIRE_VERSION, 1, "x"], "expected a HardwareProfile record"),
    ([WIRE_VERSION, 1, ["p", "h"]], "missing required field 'gpu'"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", "2", 1.0, 1.0, 1.0]], r"num_gpus: expected int, got str"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", True, 1.0, 1.0, 1.0]], r"num_gpus: expected int, got bool"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", 0, 1.0, 1.0, 1.0]], "num_gpus must be 1..64"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", 1, float("nan"), 1.0, 1.0]], "NaN is not allowed"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", 1, 1.0, 1.0, 1.0, 0.0, False, "tpu"]], "device must be"),
    ([WIRE_VERSION, 1, ["p", "h", "A40", 1, 1.0, 1.0, 1.0, 0.0, False, "cpu", {"x": "fast"}]], r"measured\['x'\]"),
    ("not a list", "must be \\[wire_version, type_id, body\\]"),
])
def test_bad_messages_say_what_is_wrong(envelope, message):
    with pytest.raises(WireError, match=message):
        decode(msgpack.packb(envelope))


def test_garbage_oversize_and_wrong_type_are_refused():
    with pytest.raises(WireError, match="not a valid msgpack"):
        decode(b"\xc1\xc1\xc1")
    with pytest.raises(WireError, match="exceeds the limit"):
        decode(b"\x00" * 2000, max_bytes=1000)
    with pytest.raises(WireError, match="expected a Plan, got a HardwareProfile"):
        decode(encode(profile()), expect=Plan)


def test_huge_declared_lengths_are_capped_before_allocation():
    # A bin header claiming 2 GiB: msgpack must refuse it rather than try.
    with pytest.raises(WireError):
        decode(b"\x93\x01\x01\x91\xc6\x7f\xff\xff\xff", max_bytes=100)
