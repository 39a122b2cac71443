"""The rpc helper: answers, typed failures, deadlines, and bad requests that reset only their stream."""

import logging
import struct

import pytest
import trio

from swarm.net.errors import DeadlineError, RemoteError
from swarm.net.host import open_host
from swarm.net.rpc import call, serve_rpc
from swarm.wire.codec import encode
from swarm.wire.messages import Ping, Pong, RpcFailure

PING = "/swarm/test-ping/1.0.0"


async def on_ping(peer_id: str, req: Ping) -> Pong:
    if req.payload == b"refuse":
        raise RemoteError("busy", "try later")
    if req.payload == b"bug":
        raise ZeroDivisionError("oops")
    if req.payload == b"slow":
        await trio.sleep(5)
    return Pong(req.sequence, req.payload)


def run_pair(host_config, body):
    async def main():
        with trio.fail_after(20):
            async with open_host(host_config()) as server, open_host(host_config()) as client:
                serve_rpc(server, PING, on_ping, request_types=(Ping,), timeout_s=2.0)
                await client.dial(server.addrs[0])
                await body(server, client)

    trio.run(main)


def test_request_and_typed_failures(host_config):
    async def body(server, client):
        assert await call(client, server.peer_id, PING, Ping(3, b"hi"), expect=Pong) == Pong(3, b"hi")
        with pytest.raises(RemoteError, match="busy: try later") as info:
            await call(client, server.peer_id, PING, Ping(1, b"refuse"))
        assert info.value.code == "busy"
        with pytest.raises(RemoteError, match="internal: ZeroDivisionError"):
            await call(client, server.peer_id, PING, Ping(1, b"bug"))

    run_pair(host_config, body)


def test_call_has_a_deadline(host_config):
    async def body(server, client):
        with pytest.raises(DeadlineError, match="within 0.5 s"):
            await call(client, server.peer_id, PING, Ping(1, b"slow"), timeout_s=0.5)
        assert await call(client, server.peer_id, PING, Ping(2), expect=Pong) == Pong(2)

    run_pair(host_config, body)


BAD_REQUESTS = {
    "garbage": struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",
    "oversized": struct.pack(">I", 50 << 20) + b"x" * 100,
    "unknown type": struct.pack(">I", 4) + bytes.fromhex("93014f90"),
    "wrong type": (lambda d: struct.pack(">I", len(d)) + d)(encode(RpcFailure("x", "y"))),
    "truncated": struct.pack(">I", 100) + b"abc",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_resets_the_stream_and_the_host_keeps_serving(host_config, caplog, name):
    async def body(server, client):
        stream = await client.open_stream(server.peer_id, PING)
        await stream.write(BAD_REQUESTS[name])
        if name == "truncated":
            await stream.close()
        with trio.fail_after(5):
            try:
                answer = await stream.read(100)
            except Exception:  # the reset surfaces as a libp2p stream error
                answer = b""
        assert answer == b""
        assert await call(client, server.peer_id, PING, Ping(9), expect=Pong) == Pong(9)

    with caplog.at_level(logging.WARNING):
        run_pair(host_config, body)
    assert f"{PING} from peer" in caplog.text and "stream reset" in caplog.text
