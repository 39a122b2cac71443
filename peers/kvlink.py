"""The KV link: a prefill replica pushes a request's exported KV blob to its paired decode replica.

Protocol `/swarm/kv/1.0.0`, one stream per request: the sender writes a `KvPush` record, then the blob in
checksummed frames of at most 4 MiB (`swarm.net.frames`); the receiver checks the size it was promised,
imports the KV into its engine (the decode session waiting for this request id), and answers `Ack` or a
`RequestFailure`. `/swarm/bandwidth/1.0.0` is the same transfer with throw-away bytes, timed, which is how
a peer measures its links for the planner.
"""

from __future__ import annotations

import logging
import time

import trio

from peers.daemon_errors import ReplicaFailedError
from swarm.errors import WireError
from swarm.net.frames import libp2p_frames
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import Ack, BandwidthProbe, KvPush, RequestFailure

logger = logging.getLogger(__name__)

KV_PROTOCOL = "/swarm/kv/1.0.0"
BANDWIDTH_PROTOCOL = "/swarm/bandwidth/1.0.0"
FRAME_TIMEOUT_S = 10.0
HEADER_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 30.0


async def send_kv(node, decode_peer_id: str, push: KvPush, blob: bytes, epoch: int) -> None:
    """Push one request's KV to `decode_peer_id`; raises ReplicaFailedError if it is not taken."""
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
    if isinstance(answer, RequestFailure):
        raise ReplicaFailedError(f"decode peer {decode_peer_id} refused the KV of {push.request_id}: "
                                 f"{answer.code}: {answer.message}")
    if not isinstance(answer, Ack):
        raise ReplicaFailedError(f"decode peer {decode_peer_id} answered a KV push with {type(answer).__name__}")


async def serve_kv(node, stream) -> None:
    """Receive a KV push and hand it to the decode session waiting for it."""
    with trio.fail_after(HEADER_TIMEOUT_S):
        push = await read_message(stream, expect=KvPush)
    with trio.fail_after(ANSWER_TIMEOUT_S):
        header, blob = await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).receive_blob(max_bytes=push.blob_bytes)
    if len(blob) != push.blob_bytes:
        raise WireError(f"KV of {push.request_id}: {len(blob)} bytes arrived, {push.blob_bytes} were announced")
    session = node.decode_sessions.get(push.request_id)
    if session is None:
        await write_message(stream, RequestFailure(push.request_id, "unknown_request",
                                                   "no entry peer is waiting for this request's tokens here"))
        return
    try:
        await session.take_kv(push, blob)
    except Exception as e:  # an engine refusal (capacity, wrong model) goes back to the sender
        logger.warning("request %s: KV import failed: %s", push.request_id, e)
        await write_message(stream, RequestFailure(push.request_id, "kv_import_failed", str(e)[:4000]))
        return
    await write_message(stream, Ack(push.request_id))


async def measure_gbps(node, peer_id: str, num_bytes: int) -> float:
    """Time a bulk transfer of `num_bytes` to a peer (sent and acknowledged); Gbit/s."""
    stream = await node.open_stream(peer_id, BANDWIDTH_PROTOCOL)
    try:
        with trio.fail_after(FRAME_TIMEOUT_S):
            start = time.perf_counter()
            await write_message(stream, BandwidthProbe(num_bytes))
            await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).send_blob(0, 0, "bench", bytes(num_bytes))
            await read_message(stream, expect=Ack)
            elapsed_s = time.perf_counter() - start
    finally:
        await node.close_stream(stream)
    return num_bytes * 8 / max(elapsed_s, 1e-6) / 1e9


async def serve_bandwidth(node, stream) -> None:
    with trio.fail_after(FRAME_TIMEOUT_S):
        probe = await read_message(stream, expect=BandwidthProbe)
        await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).receive_blob(max_bytes=probe.num_bytes)
        await write_message(stream, Ack("bandwidth"))
