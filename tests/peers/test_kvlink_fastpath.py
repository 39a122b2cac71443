"""The KV link between two real hosts on 127.0.0.1: blobs cross on the fast path over one reused
connection; without a fast-path server they fall back to libp2p frames (logged); size caps hold."""

import contextlib
import itertools
import logging
from functools import partial

import pytest
import trio

from peers import kvlink
from peers.daemon_errors import ReplicaFailedError
from peers.kvlink import KV_PROTOCOL, KvLinks, send_kv, serve_kv, serve_kv_channel
from swarm.net.fastpath import run_fastpath_server
from swarm.net.host import HostConfig, open_host
from swarm.wire.requests import KvPush


class FakeSession:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    async def take_kv(self, push: KvPush, blob) -> None:
        self.blobs.append(bytes(blob))


class FakeNode:
    """What the KV link uses of a daemon `Node`."""

    def __init__(self, host) -> None:
        self.host = host
        self.peer_id = host.peer_id
        self.kv_links = KvLinks()
        self.decode_sessions: dict[str, FakeSession] = {}

    def later_stage_worker(self, group_id: int):
        return None  # no engine: a push for a request without a decode session is refused

    async def open_stream(self, peer_id: str, protocol: str):
        return await self.host.open_stream(peer_id, protocol)

    async def close_stream(self, stream) -> None:
        with contextlib.suppress(Exception):
            await stream.close()


def push_of(request_id: str, blob: bytes, epoch: int = 3) -> KvPush:
    return KvPush(request_id, epoch, (1, 2, 3), (4,), len(blob))


@pytest.fixture
def negotiations(monkeypatch) -> list[str]:
    """The peer ids the fast path is negotiated with, in order (connect_fastpath counted)."""
    dialled = []
    connect = kvlink.connect_fastpath

    async def counting_connect(*args, **kwargs):
        dialled.append(args[1])
        return await connect(*args, **kwargs)

    monkeypatch.setattr(kvlink, "connect_fastpath", counting_connect)
    return dialled


def run_pair(tmp_path, body, *, has_fastpath: bool = True) -> None:
    counter = itertools.count()

    def config() -> HostConfig:
        return HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), identity_path=tmp_path / f"id-{next(counter)}")

    async def main():
        with trio.fail_after(60):
            async with open_host(config()) as decode_host, open_host(config()) as prefill_host:
                decode, prefill = FakeNode(decode_host), FakeNode(prefill_host)
                decode_host.set_handler(KV_PROTOCOL, partial(serve_kv, decode))
                if has_fastpath:
                    await decode_host.nursery.start(partial(run_fastpath_server, decode_host,
                                                            on_channel=partial(serve_kv_channel, decode)))
                await prefill_host.dial(decode_host.addrs[0])
                await body(prefill, decode)
                await prefill.kv_links.aclose()

    trio.run(main)


def test_kv_blobs_cross_on_the_fast_path_over_one_reused_connection(tmp_path, negotiations):
    blobs = [bytes(range(256)) * (20 << 10), b"x" * 1000, bytes(9 << 20)]  # 5 MiB, 1 kB, 9 MiB (3 frames)
    async def body(prefill, decode):
        for i, blob in enumerate(blobs):
            decode.decode_sessions[f"r{i}"] = FakeSession()
            await send_kv(prefill, decode.peer_id, push_of(f"r{i}", blob), blob, 3)
        assert [decode.decode_sessions[f"r{i}"].blobs for i in range(len(blobs))] == [[b] for b in blobs]
        assert (prefill.kv_links.num_fast, prefill.kv_links.num_fallback) == (len(blobs), 0)
        assert negotiations == [decode.peer_id]  # negotiated once, the connection reused

    run_pair(tmp_path, body)


def test_a_pooled_connection_that_went_stale_is_replaced_and_the_push_goes_through(tmp_path, negotiations):
    async def body(prefill, decode):
        for i in range(2):
            decode.decode_sessions[f"r{i}"] = FakeSession()
        await send_kv(prefill, decode.peer_id, push_of("r0", b"first"), b"first", 3)
        [(pooled, _)] = prefill.kv_links.idle[decode.peer_id]
        await pooled.aclose()  # the connection breaks while it sits idle in the pool
        await send_kv(prefill, decode.peer_id, push_of("r1", b"second"), b"second", 3)
        assert decode.decode_sessions["r1"].blobs == [b"second"]
        assert negotiations == [decode.peer_id, decode.peer_id]  # a new connection replaced the stale one
        assert (prefill.kv_links.num_fast, prefill.kv_links.num_fallback) == (2, 0)

    run_pair(tmp_path, body)


def test_a_push_for_an_unknown_request_is_refused_and_the_connection_stays_usable(tmp_path):
    async def body(prefill, decode):
        with pytest.raises(ReplicaFailedError, match="unknown_request"):
            await send_kv(prefill, decode.peer_id, push_of("nobody", b"abc"), b"abc", 3)
        decode.decode_sessions["r"] = FakeSession()
        await send_kv(prefill, decode.peer_id, push_of("r", b"abc"), b"abc", 3)
        assert decode.decode_sessions["r"].blobs == [b"abc"]
        assert prefill.kv_links.num_fast == 2

    run_pair(tmp_path, body)


def test_a_blob_larger_than_its_record_announces_is_refused(tmp_path, caplog):
    async def body(prefill, decode):
        decode.decode_sessions["r"] = FakeSession()
        with pytest.raises(ReplicaFailedError):
            await send_kv(prefill, decode.peer_id, push_of("r", b"abc"), b"abcdef", 3)
        assert decode.decode_sessions["r"].blobs == []

    with caplog.at_level(logging.WARNING, logger="swarm.net.fastpath"):
        run_pair(tmp_path, body)
    assert any("exceeds 3" in r.getMessage() for r in caplog.records)


def test_without_a_fast_path_the_kv_falls_back_to_libp2p_frames_and_says_so(tmp_path, caplog):
    async def body(prefill, decode):
        decode.decode_sessions["r"] = FakeSession()
        blob = bytes(range(256)) * 4096
        await send_kv(prefill, decode.peer_id, push_of("r", blob), blob, 3)
        assert decode.decode_sessions["r"].blobs == [blob]
        assert (prefill.kv_links.num_fast, prefill.kv_links.num_fallback) == (0, 1)

    with caplog.at_level(logging.WARNING, logger="peers.kvlink"):
        run_pair(tmp_path, body, has_fastpath=False)
    assert any("libp2p frames" in r.getMessage() for r in caplog.records)
