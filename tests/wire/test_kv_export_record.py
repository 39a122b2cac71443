"""`KvExportJob` (prefill pipeline head -> a later stage: export and push these layer slices): round trip,
golden bytes, and refusal of bad fields from a peer."""

import msgpack
import pytest

from swarm.errors import WireError
from swarm.wire.codec import decode, encode
from swarm.wire.requests import KvExportJob, KvTarget

PEER = "12D3KooWEnFjm2K6xM8iefvbq2fA9QRmypcm3G3vfsGU4zJktrD8"


def job(**fields) -> KvExportJob:
    values = {"request_id": "r", "epoch": 3, "kv_bits": 16, "prompt_token_ids": (1, 2), "output_token_ids": (3,),
              "targets": (KvTarget(PEER, 10, 20), KvTarget("QmB", 20, 30)), "release": True}
    return KvExportJob(**{**values, **fields})


def test_round_trip():
    assert decode(encode(job())) == job()
    assert decode(encode(job(release=False))).release is False


def test_golden_bytes():
    # [wire version 1, type 92, ["r", 3, 16, [1, 2], [3], [["QmB", 20, 30]], true, 4, 9]]
    data = encode(job(targets=(KvTarget("QmB", 20, 30),), group_id=4, decode_group_id=9))
    assert data == bytes.fromhex("93015c99a172031092010291039193a3516d42141ec30409")


def test_an_old_sender_without_release_means_release():
    data = msgpack.packb([1, 92, ["r", 3, 16, [1, 2], [3], [["QmB", 0, 4]]]])
    assert decode(data) == job(targets=(KvTarget("QmB", 0, 4),))


def test_an_old_sender_without_group_ids_names_no_group():
    data = msgpack.packb([1, 92, ["r", 3, 16, [1, 2], [3], [["QmB", 0, 4]], False]])
    decoded = decode(data)
    assert (decoded.group_id, decoded.decode_group_id, decoded.release) == (-1, -1, False)


@pytest.mark.parametrize("fields,match", [
    ({"kv_bits": 5}, "kv_bits"),
    ({"epoch": -1}, "epoch"),
    ({"output_token_ids": ()}, "first output token"),
    ({"prompt_token_ids": ()}, "prompt tokens"),
    ({"targets": ()}, "targets"),
    ({"targets": (KvTarget("QmA", 0, 10), KvTarget("QmB", 5, 20))}, "overlap"),
    ({"request_id": ""}, "request_id"),
    ({"group_id": -2}, "group_id"),
    ({"decode_group_id": 1 << 21}, "decode_group_id"),
])
def test_bad_jobs_are_refused(fields, match):
    with pytest.raises(WireError, match=match):
        job(**fields)


@pytest.mark.parametrize("target,match", [
    (["QmB", 5, 5], "layers"),
    (["QmB", -1, 4], "layers"),
    (["QmB", 0, 5000], "layers"),
    (["not a/peer", 0, 4], "peer id"),
    (["QmB", "0", 4], "first_layer"),
])
def test_bad_targets_from_a_peer_are_refused(target, match):
    with pytest.raises(WireError, match=match):
        decode(msgpack.packb([1, 92, ["r", 3, 16, [1], [2], [target], True]]))
