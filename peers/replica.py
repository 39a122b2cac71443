"""The replica side of the data plane: prefill jobs, decode sessions waiting for KV, colocated requests.

`/swarm/prefill/1.0.0`: a `PrefillJob` in; on a prefill replica the first token comes back, the KV is
exported in the job's format and pushed to the decode replica's stages (`kvroute`: slices of layers when
either replica is a pipeline across peers), and an `Ack` ends the stream;
on a colocated (`both`) replica every token comes back on this stream. `/swarm/decode/1.0.0`: a
`DecodeWatch` in, `Ack` out, then, once all of its first stage's layers of the KV have arrived and been
imported, the tokens (a decode head that gets no complete KV within KV_WAIT_S frees what came). Jobs carrying
an epoch older than this peer's plan are refused (fencing), so the entry peer re-routes. A peer may serve
several groups (one engine each): a job goes to the group it names (`group_for`), which must be ready and
have the right role.
"""

from __future__ import annotations

import logging

import trio

from peers.engine import SamplingParams
from peers.kvroute import hand_off_kv
from peers.worker import GroupWorker, group_for
from swarm.errors import SwarmError
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import (
    Ack,
    DecodeWatch,
    GenerateRequest,
    KvPush,
    PrefillJob,
    RequestFailure,
    TokenChunk,
)

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0
KV_WAIT_S = 60.0


def sampling_params(request: GenerateRequest) -> SamplingParams:
    return SamplingParams(temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
                          seed=request.seed, max_tokens=request.max_tokens, stop=request.stop,
                          ignore_eos=request.ignore_eos)


def prompt_of(request: GenerateRequest) -> tuple[object, list[dict] | None]:
    """(prompt, messages) as the engine's `add` takes them."""
    if request.messages:
        return None, [{"role": m.role, "content": m.content} for m in request.messages]
    return (list(request.token_ids) if request.token_ids else request.prompt), None


def chunk_of(request_id: str, index: int, event) -> TokenChunk:
    return TokenChunk(request_id, index, tuple(event.token_ids), event.text, event.finish_reason or "")


def check_epoch(node, epoch: int, request_id: str) -> RequestFailure | None:
    if epoch < node.holder.epoch:
        logger.info("request %s carries plan epoch %d, older than ours (%d): refused", request_id, epoch,
                    node.holder.epoch)
        return RequestFailure(request_id, "stale_epoch", f"plan epoch {epoch} is older than {node.holder.epoch}")
    return None


async def serve_prefill(node, stream) -> None:
    with trio.fail_after(READ_TIMEOUT_S):
        job = await read_message(stream, expect=PrefillJob)
    request = job.request
    group = head_for(node, job.group_id, "prefill")
    failure = check_epoch(node, job.epoch, request.request_id) or _role_failure(node, group, job.group_id,
                                                                             request.request_id, "prefill")
    if failure is not None:
        await write_message(stream, failure)
        return
    worker = group.worker
    if job.decode_group_id >= 0:
        is_colocated = job.decode_group_id == group.group_id and group.role == "both"
    else:  # an entry peer that predates group ids
        is_colocated = job.decode_peer_id == node.peer_id and group.role == "both"
    try:
        prompt, messages = prompt_of(request)
        events = await worker.add(request.request_id, prompt, messages=messages, params=sampling_params(request))
    except SwarmError as e:
        await write_message(stream, RequestFailure(request.request_id, "bad_request", str(e)[:4000]))
        return
    try:
        with trio.fail_after(node.config.request_timeout_s):
            if is_colocated:
                await _stream_events(stream, request.request_id, 0, events)
            else:
                await _prefill_and_push(node, group, stream, job, events)
    finally:
        await worker.abort(request.request_id)


async def _prefill_and_push(node, group: GroupWorker, stream, job: PrefillJob, events) -> None:
    request_id = job.request.request_id
    try:
        first = await events.receive()
    except trio.EndOfChannel:  # the pipeline replica stopped (PipelineWorker closes its requests' channels)
        await write_message(stream, RequestFailure(request_id, "replica_failed", "the prefill pipeline stopped: "
                                                   "one of its stages failed or left (see its log)"))
        return
    await write_message(stream, chunk_of(request_id, 0, first))
    if first.finish_reason != "prefilled":
        return
    try:
        await hand_off_kv(node, group, job, first.prompt_token_ids, tuple(first.token_ids))
    except SwarmError as e:
        await write_message(stream, RequestFailure(request_id, "kv_push_failed", str(e)[:4000]))
        return
    await write_message(stream, Ack(request_id))


async def _stream_events(stream, request_id: str, index: int, events) -> None:
    """Token events as chunks; events that piled up while the last write was under way go as one chunk."""
    async for event in events:
        batch = [event]
        while not batch[-1].is_finished:
            try:
                batch.append(events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        token_ids = tuple(t for e in batch for t in e.token_ids)
        await write_message(stream, TokenChunk(request_id, index, token_ids, "".join(e.text for e in batch),
                                               batch[-1].finish_reason or ""))
        index += len(token_ids)
        if batch[-1].is_finished:
            return
    # the channel closed before the request finished: its replica stopped (a pipeline stage failed or left)
    await write_message(stream, RequestFailure(request_id, "replica_failed", "the replica stopped mid-request: "
                                               "a stage of its pipeline failed or left (see that peer's log)"))


class DecodeSession:
    """A decode replica (the head of group `group`) waiting for one request's KV, then streaming its tokens to
    the entry peer."""

    def __init__(self, group: GroupWorker, watch: DecodeWatch) -> None:
        self.worker = group.worker  # the group's engine when the session opened (a re-plan may stop it)
        self.watch = watch
        self.events = None
        self.first_index = 0
        self.has_kv = trio.Event()

    async def take_kv(self, push: KvPush, blob: bytes) -> None:
        """Import (a slice of) the KV; once this stage holds all its layers, start streaming."""
        request = self.watch.request
        events = await self.worker.import_kv_part(
            request.request_id, blob, prompt_token_ids=list(push.prompt_token_ids),
            output_token_ids=list(push.output_token_ids), params=sampling_params(request))
        if events is not None:
            self.events = events
            self.first_index = len(push.output_token_ids)
            self.has_kv.set()


async def serve_decode(node, stream) -> None:
    with trio.fail_after(READ_TIMEOUT_S):
        watch = await read_message(stream, expect=DecodeWatch)
    request_id = watch.request.request_id
    group = head_for(node, watch.group_id, "decode")
    failure = check_epoch(node, watch.epoch, request_id) or _role_failure(node, group, watch.group_id, request_id,
                                                                          "decode")
    if failure is None and request_id in node.decode_sessions:
        failure = RequestFailure(request_id, "duplicate", "a decode session for this request id is open")
    if failure is not None:
        await write_message(stream, failure)
        return
    session = DecodeSession(group, watch)
    node.decode_sessions[request_id] = session
    try:
        await write_message(stream, Ack(request_id))
        with trio.move_on_after(KV_WAIT_S):
            await session.has_kv.wait()
        if session.events is None:
            return  # the request ended at its first token, or the prefill replica never sent the KV
        with trio.fail_after(node.config.request_timeout_s):
            await _stream_events(stream, request_id, session.first_index, session.events)
    finally:
        node.decode_sessions.pop(request_id, None)
        if session.events is not None:
            await session.worker.abort(request_id)
        else:
            await session.worker.drop_partial_kv(request_id)


def head_for(node, group_id: int, phase: str) -> GroupWorker | None:
    """The group a prefill job or decode watch names, if this peer holds its first stage; for a record
    from an entry peer that predates group ids, the one group headed here that serves `phase`."""
    if group_id >= 0:
        return group_for(node.groups, group_id, lambda g: g.stage == 0)
    return group_for(node.groups, group_id, lambda g: g.stage == 0 and g.role in (phase, "both"))


def _role_failure(node, group: GroupWorker | None, group_id: int, request_id: str,
                  phase: str) -> RequestFailure | None:
    if group is None or not group.is_ready or node.ready_epoch < 0:
        what = f"group {group_id}" if group_id >= 0 else f"a {phase} group"
        return RequestFailure(request_id, "not_ready", f"this peer is not ready to serve {what} as its first "
                              f"stage (loading, or not in it in plan epoch {node.holder.epoch})")
    role = group.role
    if role != "both" and role != phase:
        return RequestFailure(request_id, "wrong_role", f"group {group.group_id} serves {role}, not {phase}")
    return None
