"""Framed bulk streams over libp2p: blobs larger than a frame, and corrupted frames reset their stream."""

import logging

import pytest
import trio

from swarm.net.frames import libp2p_frames
from swarm.net.host import open_host
from swarm.wire.frames import FRAME_KINDS, HEADER_BYTES, encode_frame_header, frame_header

BULK = "/swarm/test-bulk/1.0.0"


def run_pair(host_config, body):
    received = []

    async def on_bulk(stream):
        header, blob = await libp2p_frames(stream, timeout_s=3.0).receive_blob()
        received.append((header, blob))
        await stream.write(len(blob).to_bytes(8, "big"))
        await stream.close()

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as server, open_host(host_config()) as client:
                server.set_handler(BULK, on_bulk)
                await client.dial(server.addrs[0])
                await body(server, client, received)

    trio.run(main)


def test_blob_of_several_frames_arrives_intact(host_config):
    blob = bytes(range(256)) * (37 << 10)  # 9.25 MiB: three frames, the last one partial

    async def body(server, client, received):
        stream = await client.open_stream(server.peer_id, BULK)
        assert await libp2p_frames(stream).send_blob(11, 4, "kv", blob) == 3
        assert int.from_bytes(await stream.read(8), "big") == len(blob)
        header, data = received[0]
        assert (header.request_id, header.epoch, FRAME_KINDS[header.kind]) == (11, 4, "kv")
        assert data == blob

    run_pair(host_config, body)


def corrupted_payload() -> bytes:
    return encode_frame_header(frame_header(1, 1, "kv", 0, b"hello", is_last=True)) + b"jello"


def bad_magic() -> bytes:
    return b"HTTP" + bytes(HEADER_BYTES - 4)


def out_of_order() -> bytes:
    first = encode_frame_header(frame_header(1, 1, "kv", 0, b"a")) + b"a"
    return first + encode_frame_header(frame_header(1, 1, "kv", 5, b"b", is_last=True)) + b"b"


@pytest.mark.parametrize("make_bytes", [corrupted_payload, bad_magic, out_of_order])
def test_bad_frames_reset_the_stream_and_the_host_keeps_serving(host_config, caplog, make_bytes):
    async def body(server, client, received):
        stream = await client.open_stream(server.peer_id, BULK)
        await stream.write(make_bytes())
        with trio.fail_after(5):
            try:
                answer = await stream.read(8)
            except Exception:  # the reset surfaces as a libp2p stream error
                answer = b""
        assert answer == b"" and received == []
        good = await client.open_stream(server.peer_id, BULK)
        await libp2p_frames(good).send_blob(2, 1, "hidden", b"fine")
        assert int.from_bytes(await good.read(8), "big") == 4

    with caplog.at_level(logging.WARNING):
        run_pair(host_config, body)
    assert f"{BULK} from peer" in caplog.text and "stream reset" in caplog.text
