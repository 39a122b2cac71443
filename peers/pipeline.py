"""Pipeline replicas across peers: the first stage's peer drives, the others run their layers on its hidden states.

How it works (one micro-batch in flight, the engine's `step_hidden`/`run_hidden`/`accept_tokens`):
the first stage's `PipelineWorker` runs a step of its layers in a worker thread and sends a `HiddenRoute`
(which group of the receiving peer runs it: a peer may serve several groups) and the hidden-state blob
(checksummed frames, `swarm.wire.hidden` header inside) on `/swarm/hidden/1.1.0` to the next stage's
peer. That peer runs its layers and either forwards its own blob to the stage after it or, as the last
stage, samples; the `StageTokens` travel back up the chain to the first stage, which turns them into
token events. Requests finished or aborted on the first stage are freed downstream by the next blob.
Any role may be a pipeline: a prefill pipeline's stages each keep the KV of their layers after the prompt
step, for the hand-off to the decode replica (`kvroute`); a decode pipeline's head imports the request with
the KV of its layers, once the later stages hold theirs, and drives the decode steps the same way.
A stage that fails or vanishes ends every request in flight on the replica (their entry peers report it)
and stops the replica until the coordinator re-plans.
"""

from __future__ import annotations

import logging
import time

import trio

from peers.daemon_errors import ReplicaFailedError
from peers.worker import EngineWorker, GroupWorker, group_for
from swarm.errors import SwarmError
from swarm.net.frames import libp2p_frames
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import HiddenRoute, RequestFailure, StageTokens

logger = logging.getLogger(__name__)

HIDDEN_PROTOCOL = "/swarm/hidden/1.1.0"  # 1.1.0: a HiddenRoute precedes the blob
FRAME_TIMEOUT_S = 10.0
MAX_HIDDEN_BYTES = 1 << 30


async def forward_hidden(node, group: GroupWorker, blob: bytes) -> dict[str, int]:
    """Send a hidden-state blob to the next stage of `group`; the last stage's tokens come back."""
    peer_id = group.next_peer
    if not peer_id:
        raise ReplicaFailedError(f"group {group.group_id}: this pipeline stage has no next stage in the current plan")
    stream = await node.open_stream(peer_id, HIDDEN_PROTOCOL)
    try:
        with trio.fail_after(node.config.request_timeout_s):
            await write_message(stream, HiddenRoute(group.group_id, max(node.holder.epoch, 0)))
            await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).send_blob(0, node.holder.epoch, "hidden", blob)
            answer = await read_message(stream)
    except trio.TooSlowError:
        raise ReplicaFailedError(f"pipeline stage {peer_id} did not answer within "
                                 f"{node.config.request_timeout_s:g} s") from None
    finally:
        await node.close_stream(stream)
    if isinstance(answer, RequestFailure):
        raise ReplicaFailedError(f"pipeline stage {peer_id}: {answer.code}: {answer.message}")
    if not isinstance(answer, StageTokens):
        raise ReplicaFailedError(f"pipeline stage {peer_id} answered with a {type(answer).__name__}")
    return dict(zip(answer.request_ids, answer.token_ids, strict=True))


async def serve_hidden(node, stream) -> None:
    """A later stage: run this stage's layers of the named group on the blob; forward, or sample if last;
    answer the tokens."""
    with trio.fail_after(FRAME_TIMEOUT_S):
        route = await read_message(stream, expect=HiddenRoute)
    group = group_for(node.groups, route.group_id, lambda g: g.stage > 0)
    if group is None:
        await write_message(stream, RequestFailure("", "not_a_stage", f"this peer holds no later pipeline stage "
                                                   f"of group {route.group_id} (plan epoch {node.holder.epoch})"))
        return
    worker = group.worker
    with trio.fail_after(FRAME_TIMEOUT_S * 2):
        _, blob = await libp2p_frames(stream, timeout_s=FRAME_TIMEOUT_S).receive_blob(max_bytes=MAX_HIDDEN_BYTES)
    try:
        result = await worker.call(worker.engine.run_hidden, blob)
        if isinstance(result, bytes | bytearray):
            result = await forward_hidden(node, group, bytes(result))
    except SwarmError as e:
        logger.warning("group %d: pipeline stage failed on a micro-batch: %s", group.group_id, e)
        await write_message(stream, RequestFailure("", "stage_failed", str(e)[:4000]))
        return
    await write_message(stream, StageTokens(tuple(result), tuple(result.values())))


class PipelineWorker(EngineWorker):
    """The first stage of a multi-peer pipeline: drives micro-batches through the later stages' peers."""

    def __init__(self, engine, node, group: GroupWorker) -> None:
        super().__init__(engine)
        self.node = node
        self.group = group  # its place (group id, next peer) follows re-plans that keep this engine

    async def run_worker(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            blob = await self.call(self._step_hidden_if_busy)
            if blob is None:
                self.has_work = trio.Event()
                if not await self.call(self.engine.has_work):
                    await self.has_work.wait()
                continue
            try:
                tokens = await forward_hidden(self.node, self.group, blob)
            except SwarmError as e:
                logger.error("group %d: pipeline replica stopped: %s", self.group.group_id, e)
                await self._fail_all()
                return
            events = await self.call(self.engine.accept_tokens, tokens)
            self.tokens_window.append((time.monotonic(), len(events)))
            for event in events:
                self._deliver(event)

    def _step_hidden_if_busy(self) -> bytes | None:
        return self.engine.step_hidden() if self.engine.has_work() else None

    async def _fail_all(self) -> None:
        """End every request of this replica (their consumers see the channel close early); the group is not
        ready until a re-plan restarts it."""
        self.node.group_failed(self.group)
        self.close_requests()
