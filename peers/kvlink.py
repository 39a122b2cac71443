"""The KV link: a prefill replica pushes a request's exported KV blob to its paired decode replica (one blob
per slice of layers, to each decode stage, when either replica is a pipeline across peers: `kvroute`).

Fast path (the default): the decode peer serves `swarm.net.fastpath` (session key granted over Noise, then
AES-256-GCM sealed 4 MiB frames on a plain TCP socket, 6-9x libp2p's throughput). The sender negotiates
once per decode peer and keeps the connection for later pushes (a pool of idle connections per peer; one
that went stale is replaced once). Per push, three sealed blobs under one frame request id: the
`KvPush` record, the KV (capped at the size the record announced, its epoch the record's), the answer
(`Ack` or `RequestFailure`) back from the receiver after the import.

Fallback, logged: if the negotiation fails, protocol `/swarm/kv/1.0.0` over libp2p, one stream per
request: the sender writes a `KvPush` record, then the blob in checksummed frames of at most 4 MiB
(`swarm.net.frames`); the receiver checks the size it was promised, imports the KV into its engine (the
decode session waiting for this request id, or on a later decode pipeline stage its engine, which frees
a request's slices not all there within KV_PART_WAIT_S), and answers `Ack` or a `RequestFailure`.
Link probes (`measure_gbps`, for the planner) time a transfer of throw-away bytes on the path KV to that
peer takes: a `BandwidthProbe` record, the bytes and an `Ack` on a pooled fast-path connection (where the
KV server tells a probe from a `KvPush` by its record), or, where the fast path is unavailable,
`/swarm/bandwidth/1.0.0` over libp2p. The probe is capped at 64 MiB and `PROBE_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from peers.daemon_errors import ReplicaFailedError
from swarm.errors import SwarmError, WireError
from swarm.net.errors import StreamError
from swarm.net.fastpath import SealedChannel, connect_fastpath
from swarm.net.frames import libp2p_frames
from swarm.net.rpc import MAX_RPC_BYTES, read_message, write_message
from swarm.wire.codec import decode, encode
from swarm.wire.requests import Ack, BandwidthProbe, KvPush, RequestFailure

logger = logging.getLogger(__name__)
T = TypeVar("T")

KV_PROTOCOL = "/swarm/kv/1.0.0"
BANDWIDTH_PROTOCOL = "/swarm/bandwidth/1.0.0"
FRAME_TIMEOUT_S = 10.0
HEADER_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 30.0
NEGOTIATE_TIMEOUT_S = 5.0
KV_IDLE_S = 120.0  # the receiver closes a fast-path KV connection idle this long
REUSE_IDLE_S = 60.0  # the sender does not reuse a connection idle longer (the receiver may be closing it)
RETRY_FASTPATH_S = 60.0  # after a failed negotiation, libp2p frames to that peer for this long
PROBE_TIMEOUT_S = 10.0  # a link probe, negotiation included, gives up after this long
MAX_PROBE_BYTES = 64 << 20  # BandwidthProbe's own cap
MAX_IDLE_PER_PEER = 4
KV_PART_WAIT_S = 60.0  # a later decode stage frees a request's KV slices not all here by then
BROKEN = (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class KvLinks:
    """The sender's fast-path KV connections: idle ones per decode peer, and peers to avoid for a while."""

    def __init__(self) -> None:
        self.idle: dict[str, list[tuple[SealedChannel, float]]] = {}
        self.avoid_until: dict[str, float] = {}
        self.next_id = 0
        self.num_fast = 0  # pushes that went over the fast path
        self.num_fallback = 0  # pushes that went over libp2p frames

    async def take(self, host, peer_id: str) -> tuple[SealedChannel | None, bool]:
        """An idle connection (reused: True), a new one (False), or None if the fast path is unavailable."""
        now = time.monotonic()
        pool = self.idle.get(peer_id, [])
        while pool:
            channel, since = pool.pop()
            if now - since < REUSE_IDLE_S:
                return channel, True
            await close_quietly(channel)
        if self.avoid_until.get(peer_id, 0.0) > now:
            return None, False
        try:
            return await connect_fastpath(host, peer_id, timeout_s=NEGOTIATE_TIMEOUT_S), False
        except (SwarmError, OSError, trio.TooSlowError) as e:
            self.avoid_until[peer_id] = now + RETRY_FASTPATH_S
            logger.warning("fast path to peer %s unavailable (%s); KV goes over libp2p frames for %g s",
                           peer_id, e or type(e).__name__, RETRY_FASTPATH_S)
            return None, False

    async def give_back(self, peer_id: str, channel: SealedChannel) -> None:
        pool = self.idle.setdefault(peer_id, [])
        if len(pool) >= MAX_IDLE_PER_PEER:
            await close_quietly(channel)
        else:
            pool.append((channel, time.monotonic()))

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for channel, _ in pool:
                await close_quietly(channel)
        self.idle.clear()


async def close_quietly(channel: SealedChannel) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await channel.aclose()


async def send_kv(node, decode_peer_id: str, push: KvPush, blob: bytes, epoch: int) -> None:
    """Push one request's KV to `decode_peer_id` (fast path, else libp2p frames); raises ReplicaFailedError
    if it is not taken."""
    answer = None
    if decode_peer_id != node.peer_id:
        answer = await _send_fast(node, decode_peer_id, push, blob, epoch)
    if answer is None:
        node.kv_links.num_fallback += 1
        answer = await _send_libp2p(node, decode_peer_id, push, blob, epoch)
    else:
        node.kv_links.num_fast += 1
    if isinstance(answer, RequestFailure):
        raise ReplicaFailedError(f"decode peer {decode_peer_id} refused the KV of {push.request_id}: "
                                 f"{answer.code}: {answer.message}")
    if not isinstance(answer, Ack) or answer.request_id != push.request_id:
        raise ReplicaFailedError(f"decode peer {decode_peer_id} answered a KV push with {answer!r:.200}")


async def _send_fast(node, peer_id: str, push: KvPush, blob: bytes, epoch: int):
    """The answer to a push over the fast path, or None if the fast path cannot be negotiated."""

    async def push_and_wait(channel: SealedChannel, frame_id: int):
        with trio.fail_after(ANSWER_TIMEOUT_S):
            return await _push_on(channel, frame_id, push, blob, epoch)

    try:
        return await on_fast_channel(node, peer_id, push_and_wait)
    except BROKEN as e:
        raise ReplicaFailedError(f"KV of {push.request_id} to {peer_id} over the fast path: {e}") from None
    except trio.TooSlowError:
        raise ReplicaFailedError(f"decode peer {peer_id} did not take the KV of {push.request_id} "
                                 f"within {ANSWER_TIMEOUT_S:g} s") from None


async def on_fast_channel(node, peer_id: str, exchange: Callable[[SealedChannel, int], Awaitable[T]]) -> T | None:
    """`await exchange(channel, frame_id)` on a pooled fast-path connection to `peer_id`; None if the fast
    path to that peer cannot be negotiated. A pooled connection that went stale while idle is replaced and
    the exchange tried again on a new one; the connection goes back to the pool after a successful exchange
    and is closed after any error, which is raised."""
    links = node.kv_links
    while True:
        channel, is_reused = await links.take(node.host, peer_id)
        if channel is None:
            return None
        links.next_id += 1
        try:
            result = await exchange(channel, links.next_id)
        except BROKEN as e:
            await close_quietly(channel)
            if is_reused:  # the exchange did not start: try a new connection
                logger.info("fast-path connection to %s was gone (%s); reconnecting", peer_id, e)
                continue
            raise
        except BaseException:
            await close_quietly(channel)
            raise
        await links.give_back(peer_id, channel)
        return result


async def _push_on(channel: SealedChannel, frame_id: int, push: KvPush, blob: bytes, epoch: int):
    await channel.send_blob(frame_id, epoch, "kv", encode(push))
    await channel.send_blob(frame_id, epoch, "kv", blob)
    header, reply = await channel.receive_blob(max_bytes=MAX_RPC_BYTES)
    if header.request_id != frame_id:
        raise WireError(f"fast path: answer for frame id {header.request_id}, expected {frame_id}")
    return decode(bytes(reply), max_bytes=MAX_RPC_BYTES)


async def serve_kv_channel(node, peer_id: str, channel: SealedChannel) -> None:
    """Receive KV pushes on one fast-path connection until the sender closes it or leaves it idle."""
    while True:
        with trio.move_on_after(KV_IDLE_S) as idle:
            await trio.lowlevel.wait_readable(channel.sock.socket)
        if idle.cancelled_caught:
            return
        with trio.fail_after(ANSWER_TIMEOUT_S):
            head, record = await channel.receive_blob(max_bytes=MAX_RPC_BYTES)
            push = decode(bytes(record), max_bytes=MAX_RPC_BYTES)
            if isinstance(push, BandwidthProbe):  # a link probe (measure_gbps) on the path KV takes
                await answer_probe(channel, head, push)
                continue
            if not isinstance(push, KvPush):
                raise WireError(f"{type(push).__name__} on a fast-path KV connection (KvPush or BandwidthProbe only)")
            header, blob = await channel.receive_blob(max_bytes=push.blob_bytes)
        if (header.request_id, header.epoch) != (head.request_id, head.epoch) or header.epoch != push.epoch:
            raise WireError(f"KV of {push.request_id} from {peer_id}: frame id/epoch {header.request_id}/"
                            f"{header.epoch} does not match its record's {head.request_id}/{push.epoch}")
        if len(blob) != push.blob_bytes:
            raise WireError(f"KV of {push.request_id}: {len(blob)} bytes arrived, {push.blob_bytes} were announced")
        answer = await take_pushed_kv(node, push, blob)
        with trio.fail_after(ANSWER_TIMEOUT_S):
            await channel.send_blob(head.request_id, push.epoch, "kv", encode(answer))


async def take_pushed_kv(node, push: KvPush, blob) -> Ack | RequestFailure:
    """Hand a received KV blob (or slice of layers) to the decode session waiting for it, or on a later stage
    of a decode pipeline to the engine of the group the push names; the answer for the sender."""
    session = node.decode_sessions.get(push.request_id)
    worker = node.later_stage_worker(push.group_id) if session is None else None
    if session is None and worker is None:
        return RequestFailure(push.request_id, "unknown_request",
                              "no entry peer is waiting for this request's tokens here, and this peer holds no "
                              f"later stage of decode group {push.group_id}")
    try:
        if session is not None:
            await session.take_kv(push, blob)
        else:
            await take_stage_kv(node, worker, push, blob)
    except Exception as e:  # an engine refusal (capacity, wrong model) goes back to the sender
        logger.warning("request %s: KV import failed: %s", push.request_id, e)
        return RequestFailure(push.request_id, "kv_import_failed", str(e)[:4000])
    return Ack(push.request_id)


async def take_stage_kv(node, worker, push: KvPush, blob) -> None:
    """A later decode stage (`worker`, its engine's): import a slice; the first slice of a request starts a
    KV_PART_WAIT_S deadline after which an incomplete set is freed (its prefill side failed; the decode head
    frees its own)."""
    is_new = push.request_id not in worker.engine.partial_imports
    await worker.import_kv_part(push.request_id, blob, prompt_token_ids=list(push.prompt_token_ids),
                                output_token_ids=list(push.output_token_ids), params=None)
    if is_new and push.request_id in worker.engine.partial_imports:
        node.nursery.start_soon(_expire_partial, worker, push.request_id)


async def _expire_partial(worker, request_id: str) -> None:
    await trio.sleep(KV_PART_WAIT_S)
    await worker.drop_partial_kv(request_id)


async def _send_libp2p(node, decode_peer_id: str, push: KvPush, blob: bytes, epoch: int):
    stream = await node.open_stream(decode_peer_id, KV_PROTOCOL)
    try:
        with trio.fail_after(ANSWER_TIMEOUT_S):
            await write_message(stream, push)
            await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).send_blob(0, epoch, "kv", blob)
            answer = await read_message(stream)
    except trio.TooSlowError:
        raise ReplicaFailedError(f"decode peer {decode_peer_id} did not take the KV of {push.request_id} "
                                 f"within {ANSWER_TIMEOUT_S:g} s") from None
    finally:
        await node.close_stream(stream)
    return answer


async def serve_kv(node, stream) -> None:
    """Receive a KV push and hand it to the decode session waiting for it."""
    with trio.fail_after(HEADER_TIMEOUT_S):
        push = await read_message(stream, expect=KvPush)
    with trio.fail_after(ANSWER_TIMEOUT_S):
        header, blob = await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).receive_blob(max_bytes=push.blob_bytes)
    if len(blob) != push.blob_bytes or header.epoch != push.epoch:
        raise WireError(f"KV of {push.request_id}: {len(blob)} bytes of epoch {header.epoch} arrived, "
                        f"{push.blob_bytes} of epoch {push.epoch} were announced")
    await write_message(stream, await take_pushed_kv(node, push, blob))


async def measure_gbps(node, peer_id: str, num_bytes: int) -> tuple[float, str]:
    """Time a transfer of `num_bytes` (at most MAX_PROBE_BYTES) to a peer, sent and acknowledged, on the path
    KV to that peer takes; (Gbit/s, "fast path" or "libp2p"). trio.TooSlowError after PROBE_TIMEOUT_S.

    The fast path's connection comes from (and goes back to) the KV pool, so its negotiation is not timed,
    as for a KV push on a reused connection."""
    payload = bytes(min(num_bytes, MAX_PROBE_BYTES))
    with trio.fail_after(PROBE_TIMEOUT_S):
        elapsed_s = await _probe_fast(node, peer_id, payload)
        path = "fast path"
        if elapsed_s is None:
            elapsed_s, path = await _probe_libp2p(node, peer_id, payload), "libp2p"
    return len(payload) * 8 / max(elapsed_s, 1e-6) / 1e9, path


async def _probe_fast(node, peer_id: str, payload: bytes) -> float | None:
    """Seconds to send `payload` on a fast-path connection and get it acknowledged; None if the fast path
    to that peer is unavailable (KV goes over libp2p then too)."""

    async def timed_send(channel: SealedChannel, frame_id: int) -> float:
        start = time.perf_counter()
        await channel.send_blob(frame_id, 0, "bench", encode(BandwidthProbe(len(payload))))
        await channel.send_blob(frame_id, 0, "bench", payload)
        _, reply = await channel.receive_blob(max_bytes=MAX_RPC_BYTES)
        elapsed_s = time.perf_counter() - start
        decode(bytes(reply), expect=Ack, max_bytes=MAX_RPC_BYTES)
        return elapsed_s

    return await on_fast_channel(node, peer_id, timed_send)


async def _probe_libp2p(node, peer_id: str, payload: bytes) -> float:
    stream = await node.open_stream(peer_id, BANDWIDTH_PROTOCOL)
    try:
        start = time.perf_counter()
        await write_message(stream, BandwidthProbe(len(payload)))
        await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).send_blob(0, 0, "bench", payload)
        await read_message(stream, expect=Ack)
        return time.perf_counter() - start
    finally:
        await node.close_stream(stream)


async def answer_probe(channel: SealedChannel, head, probe: BandwidthProbe) -> None:
    """The receiving end of a fast-path link probe: take the bytes, acknowledge them."""
    await channel.receive_blob(max_bytes=probe.num_bytes)
    await channel.send_blob(head.request_id, head.epoch, "bench", encode(Ack("bandwidth")))


async def serve_bandwidth(node, stream) -> None:
    """The receiving end of a libp2p link probe (`/swarm/bandwidth/1.0.0`)."""
    with trio.fail_after(PROBE_TIMEOUT_S):
        probe = await read_message(stream, expect=BandwidthProbe)
        await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).receive_blob(max_bytes=probe.num_bytes)
        await write_message(stream, Ack("bandwidth"))
