"""The fast data path: sealed blobs arrive intact in both modes; tampering and unknown sessions are refused."""

import logging
from functools import partial

import pytest
import trio

from swarm.net.fastpath import SESSION_ID_BYTES, open_fastpath, run_fastpath_server
from swarm.net.host import open_host
from swarm.wire.frames import FRAME_KINDS


def run_pair(host_config, body):
    received = []

    async def on_blob(peer_id, header, blob):
        received.append((peer_id, header, bytes(blob)))

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as server, open_host(host_config()) as client:
                fastpath = await server.nursery.start(run_fastpath_server, server, on_blob)
                await client.dial(server.addrs[0])
                await body(server, client, fastpath, received)

    trio.run(main)


@pytest.mark.parametrize("is_encrypted", [True, False], ids=["aead", "auth-only"])
def test_blobs_arrive_intact_and_acknowledged(host_config, is_encrypted):
    blobs = [b"", b"small", bytes(range(256)) * (20 << 10)]  # empty, tiny, 5 MiB (two frames)

    async def body(server, client, fastpath, received):
        async with open_fastpath(client, server.peer_id, is_encrypted=is_encrypted) as channel:
            for i, blob in enumerate(blobs):
                await channel.send_blob(i, 7, "kv", blob)
        assert [r[2] for r in received] == blobs
        assert {r[0] for r in received} == {client.peer_id}
        assert [(h.request_id, h.epoch, FRAME_KINDS[h.kind]) for _, h, _ in received] == [(i, 7, "kv") for i in range(3)]

    run_pair(host_config, body)


def test_tampered_frame_and_unknown_session_are_refused(host_config, caplog):
    async def body(server, client, fastpath, received):
        async with open_fastpath(client, server.peer_id, is_encrypted=False) as channel:
            real_send_all = channel.sock.send_all
            count = 0

            async def flip_payload(data):  # corrupt the first payload byte of the data frame
                nonlocal count
                count += 1
                if count == 5:
                    data = bytes([data[0] ^ 1]) + bytes(data[1:])
                await real_send_all(data)

            channel.sock.send_all = flip_payload
            with pytest.raises(Exception):  # noqa: B017 - the receiver closes: reset or end of stream
                await channel.send_blob(1, 1, "kv", b"payload")
        stranger = await trio.open_tcp_stream("127.0.0.1", fastpath.port)
        async with stranger:
            await stranger.send_all(bytes(SESSION_ID_BYTES))
            with trio.fail_after(5):
                assert await stranger.receive_some(10) == b""
        assert received == []
        async with open_fastpath(client, server.peer_id) as channel:  # the server still serves
            await channel.send_blob(2, 1, "kv", b"fine")
        assert [r[2] for r in received] == [b"fine"]

    with caplog.at_level(logging.WARNING, logger="swarm.net.fastpath"):
        run_pair(host_config, body)
    assert "authentication failed" in caplog.text
    assert "unknown or expired session id" in caplog.text


@pytest.mark.parametrize("is_encrypted", [True, False], ids=["aead", "auth-only"])
def test_tampered_middle_frame_of_a_long_blob_is_refused(host_config, caplog, is_encrypted):
    blob = bytes(range(256)) * (48 << 10)  # 12 MiB: three data frames, the pipeline runs

    async def body(server, client, fastpath, received):
        async with open_fastpath(client, server.peer_id, is_encrypted=is_encrypted) as channel:
            real_send_all = channel.sock.send_all

            async def flip_second_frame(data):
                view = memoryview(data)
                if len(view) > 1 << 20 and not getattr(flip_second_frame, "seen", False):
                    flip_second_frame.seen = True  # let the first big piece (data frame 1) through
                elif len(view) > 1 << 20:  # its last byte: ciphertext/tag (aead) or payload (auth-only)
                    data = bytes(view[:-1]) + bytes([view[-1] ^ 1])
                await real_send_all(data)

            channel.sock.send_all = flip_second_frame
            with pytest.raises(Exception):  # noqa: B017 - the receiver closes: reset or end of stream
                await channel.send_blob(1, 1, "kv", blob)
        async with open_fastpath(client, server.peer_id, is_encrypted=is_encrypted) as channel:
            await channel.send_blob(2, 1, "kv", blob)
        assert [r[2] for r in received] == [blob]

    with caplog.at_level(logging.WARNING, logger="swarm.net.fastpath"):
        run_pair(host_config, body)
    assert "authentication failed" in caplog.text


def test_a_connection_reset_closes_that_channel_and_the_server_keeps_serving(host_config, caplog):
    import socket
    import struct

    from swarm.net.fastpath import connect_fastpath

    received = []

    async def on_channel(peer_id, channel):
        while True:
            _, blob = await channel.receive_blob()
            received.append(bytes(blob))

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as server, open_host(host_config()) as client:
                await server.nursery.start(partial(run_fastpath_server, server, on_channel=on_channel))
                await client.dial(server.addrs[0])
                reset = await connect_fastpath(client, server.peer_id)
                await reset.send_blob(1, 1, "kv", b"before the reset")
                reset.sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await reset.sock.aclose()  # linger 0: an RST, as when a peer is SIGKILLed mid-exchange
                async with open_fastpath(client, server.peer_id) as channel:
                    await channel.send_blob(2, 1, "kv", b"after the reset")

    with caplog.at_level(logging.WARNING, logger="swarm.net.fastpath"):
        trio.run(main)
    assert received == [b"before the reset", b"after the reset"]
    assert "connection closed" in caplog.text
