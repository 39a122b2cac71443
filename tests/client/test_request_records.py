"""The data-plane and status records (wire ids 80-99): round trips and refusals of bad input."""

from __future__ import annotations

import msgpack
import pytest

from swarm.client.errors import ClientError
from swarm.client.session import make_request
from swarm.errors import WireError
from swarm.wire.codec import WIRE_VERSION, decode, encode
from swarm.wire.messages import SignedRecord
from swarm.wire.requests import (
    ChatMessage,
    GenerateRequest,
    KvPush,
    MemberDigest,
    PrefillJob,
    RequestFailure,
    TokenChunk,
)


@pytest.mark.parametrize("record", [
    GenerateRequest("r1", prompt="hi", max_tokens=8, seed=3, stop=("\n",)),
    GenerateRequest("r2", messages=(ChatMessage("user", "hello"),)),
    TokenChunk("r1", 3, (1, 2), "ab", "stop"),
    RequestFailure("r1", "unavailable", "no replica"),
    PrefillJob(GenerateRequest("r3", token_ids=(1, 2, 3)), epoch=4, decode_peer_id="QmAbc", kv_bits=16),
    KvPush("r1", 2, (1, 2, 3), (4,), 1000),
    MemberDigest("QmAbc", 1, ("/ip4/127.0.0.1/tcp/1",), SignedRecord("QmAbc", 1, b"p", b"k", b"s"),
                 links_gbps={"QmDef": 1.5}, coordinator_id="QmDef", coordinator_term=3),
])
def test_records_round_trip(record):
    assert decode(encode(record)) == record


@pytest.mark.parametrize("fields, problem", [
    ({"request_id": "r"}, "exactly one"),
    ({"request_id": "r", "prompt": "a", "token_ids": (1,)}, "exactly one"),
    ({"request_id": "", "prompt": "a"}, "request_id"),
    ({"request_id": "r", "prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"request_id": "r", "prompt": "a", "temperature": float("nan")}, "temperature"),
    ({"request_id": "r", "prompt": "a", "top_p": 0.0}, "top_p"),
    ({"request_id": "r", "prompt": "x" * 70_000}, "prompt"),
])
def test_bad_generate_requests_are_refused(fields, problem):
    with pytest.raises(WireError, match=problem):
        GenerateRequest(**fields)


def test_bytes_from_a_peer_are_checked_field_by_field():
    body = ["r1", "hi", [], [], "many"]  # max_tokens as a string
    with pytest.raises(WireError, match="max_tokens"):
        decode(msgpack.packb([WIRE_VERSION, 80, body]))
    with pytest.raises(WireError, match="unknown message type"):
        decode(msgpack.packb([WIRE_VERSION, 99, []]))
    with pytest.raises(WireError, match="finish_reason"):
        decode(msgpack.packb([WIRE_VERSION, 81, ["r1", 0, [1], "", "exploded"]]))


def test_a_digest_plan_needs_its_coordinator_and_an_epoch_within_max_epoch():
    from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

    plan = Plan(PLAN_FORMAT, 5, "m", (Group(0, "both", 1, 1, (Stage(("h/0",), (0, 2)),)),),
                Routing({0: 1.0}, ((0, 0, 1.0),)))
    with pytest.raises(WireError, match="max_epoch"):
        MemberDigest("QmAbc", 1, ("/ip4/127.0.0.1/tcp/1",), plan=plan, max_epoch=4, plan_coordinator_id="QmAbc")
    with pytest.raises(WireError, match="coordinator"):
        MemberDigest("QmAbc", 1, ("/ip4/127.0.0.1/tcp/1",), plan=plan, max_epoch=5)
    assert MemberDigest("QmAbc", 1, ("/a",), plan=plan, max_epoch=5, plan_coordinator_id="QmAbc").plan == plan


def test_client_builds_requests_and_names_bad_options():
    request = make_request(None, [{"role": "user", "content": "hi"}], {"max_tokens": 4, "stop": "\n"})
    assert request.messages == (ChatMessage("user", "hi"),) and request.stop == ("\n",)
    with pytest.raises(ClientError, match="unknown sampling"):
        make_request("hi", None, {"temprature": 1.0})
    with pytest.raises(ClientError, match="invalid request"):
        make_request("hi", None, {"max_tokens": -1})
