"""The KV hand-off between a prefill replica and a decode replica, either of which may be a pipeline across
peers with its own layer split (ThunderServe: prefill and decode groups are planned independently).

How it works (the prefill replica's first stage, its "head", coordinates):
1. when a request is prefilled, every prefill stage holds the KV of its own layer range (the head in its
   parked sequence, later stages in the blocks their micro-batches used). `kv_routes` intersects each
   prefill stage's layers with each decode stage's layers: every non-empty intersection is one slice,
   sent by that prefill stage's peer to that decode stage's peer, so each decode stage receives exactly
   its layers [first, last), possibly from several prefill stages;
2. the slices go in two phases: first every slice for a later decode stage, then those for the decode
   head. A stage acknowledges a slice once imported, and the decode head starts decoding as soon as all of
   its own layers are in (`Engine.import_kv_part`), so by then every later decode stage holds its layers;
3. the head exports and pushes its own slices (`kvlink.send_kv`: fast path when negotiated, libp2p frames
   otherwise) and sends each later prefill stage a `KvExportJob` on `/swarm/kvexport/1.0.0` naming its
   slices of the phase; that stage exports them from its blocks, pushes them the same way, and answers
   `Ack` (or a `RequestFailure`). Its last job for the request frees its blocks.
A later decode stage keeps the slices of an incomplete set for `kvlink.KV_PART_WAIT_S`, then frees them;
the decode head frees its own when its session ends without complete KV and names the request released
to its later stages. Every wait is bounded; any failure ends the request with an error naming the stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from kernels import KvFormat
from peers.daemon_errors import ReplicaFailedError
from peers.kvlink import send_kv
from peers.membership import peer_stages
from peers.worker import GroupWorker, group_for
from swarm.errors import SwarmError
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import Ack, KvExportJob, KvPush, KvTarget, PrefillJob, RequestFailure

logger = logging.getLogger(__name__)

KV_EXPORT_PROTOCOL = "/swarm/kvexport/1.0.0"
READ_TIMEOUT_S = 5.0
EXPORT_TIMEOUT_S = 60.0  # one stage's export and pushes of one phase


@dataclass(frozen=True)
class KvRoute:
    """One slice of a hand-off: layers [first_layer, last_layer) from a prefill stage's peer to a decode
    stage's peer (`target_stage`: its index in the decode pipeline, 0 for the head)."""

    source: str
    target: str
    target_stage: int
    first_layer: int
    last_layer: int


def kv_routes(prefill_stages: list[tuple[str, int, int]], decode_stages: list[tuple[str, int, int]]) -> list[KvRoute]:
    """The slices that carry a request's KV from the prefill pipeline's stages to the decode pipeline's, each
    stage a (peer id, first layer, last layer) as `peer_stages` gives; both must cover the same layers."""
    for name, stages in (("prefill", prefill_stages), ("decode", decode_stages)):
        if not stages or any(a[2] != b[1] for a, b in zip(stages, stages[1:], strict=False)) \
                or any(first >= last for _, first, last in stages):
            raise ReplicaFailedError(f"the {name} replica's stages {stages} are not consecutive layer ranges")
    if (prefill_stages[0][1], prefill_stages[-1][2]) != (decode_stages[0][1], decode_stages[-1][2]):
        raise ReplicaFailedError(f"the prefill replica holds layers [{prefill_stages[0][1]}, {prefill_stages[-1][2]}) "
                                 f"but the decode replica [{decode_stages[0][1]}, {decode_stages[-1][2]})")
    routes = []
    for source, source_first, source_last in prefill_stages:
        for index, (target, target_first, target_last) in enumerate(decode_stages):
            first, last = max(source_first, target_first), min(source_last, target_last)
            if first < last:
                routes.append(KvRoute(source, target, index, first, last))
    return routes


def hand_off_phases(routes: list[KvRoute]) -> list[list[KvRoute]]:
    """The slices for later decode stages, then those for the decode head (which starts decoding once its
    own layers are complete); empty phases left out."""
    later = [r for r in routes if r.target_stage > 0]
    head = [r for r in routes if r.target_stage == 0]
    return [phase for phase in (later, head) if phase]


def replica_stages(node, group: GroupWorker, job: PrefillJob) -> tuple[list[tuple[str, int, int]],
                                                                    list[tuple[str, int, int]]]:
    """(the stages of this peer's prefill group `group`, the decode group's stages) as the followed plan has
    them; the decode group is the one the job names (for a job from an entry peer that predates group ids,
    the decode or both group headed on the job's decode peer).

    The plan may have changed since the request was routed (a peer joined, say): a replica the current
    plan no longer shows is taken to be one peer holding every layer, which is what a one-peer replica
    is; a decode peer that holds other layers refuses the KV with an error naming them."""
    holder, engine = node.holder, group.worker.engine
    num_layers = engine.model_config.num_layers
    plan = holder.plan
    own = plan.group(group.group_id) if plan is not None and group.group_id in {g.id for g in plan.groups} else None
    prefill = peer_stages(own, holder.hosts) if own is not None else []
    if (node.peer_id, engine.stage.first_layer, engine.stage.last_layer) not in prefill[:1]:
        if not (engine.stage.is_first and engine.stage.is_last):
            raise ReplicaFailedError(f"the plan changed during request {job.request.request_id} (routed in epoch "
                                     f"{job.epoch}, this peer follows {holder.epoch}) and this peer's pipeline "
                                     "is not in it any more: retry the request")
        prefill = [(node.peer_id, 0, num_layers)]
    if plan is None:
        heads = []
    elif job.decode_group_id >= 0:
        heads = [g.id for g in plan.groups if g.id == job.decode_group_id
                 and holder.peer_of_group(g.id) == job.decode_peer_id]
    else:
        heads = [g for g in holder.groups_of_peer(job.decode_peer_id) if holder.peer_of_group(g) == job.decode_peer_id
                 and plan.group(g).role in ("decode", "both")]
    decode = peer_stages(plan.group(heads[0]), holder.hosts) if heads else [(job.decode_peer_id, 0, num_layers)]
    return prefill, decode


async def hand_off_kv(node, group: GroupWorker, job: PrefillJob, prompt_token_ids: tuple[int, ...],
                      output_token_ids: tuple[int, ...]) -> None:
    """On the head of prefill group `group`: move a prefilled request's KV from every prefill stage to the
    decode stages holding those layers, in two phases; raises ReplicaFailedError if any slice is not taken."""
    request_id = job.request.request_id
    phases = hand_off_phases(kv_routes(*replica_stages(node, group, job)))
    last_phase_of = {r.source: i for i, phase in enumerate(phases) for r in phase}
    for i, phase in enumerate(phases):
        tasks = []
        for source in dict.fromkeys(r.source for r in phase):
            targets = tuple(KvTarget(r.target, r.first_layer, r.last_layer) for r in phase if r.source == source)
            if source == node.peer_id:
                tasks.append(lambda targets=targets: push_slices(node, request_id, job.epoch, job.kv_bits,
                                                                 prompt_token_ids, output_token_ids, targets,
                                                                 job.decode_group_id,
                                                                 export=_head_export(group, request_id)))
            else:
                export_job = KvExportJob(request_id, job.epoch, job.kv_bits, prompt_token_ids, output_token_ids,
                                         targets, release=last_phase_of[source] == i, group_id=group.group_id,
                                         decode_group_id=job.decode_group_id)
                tasks.append(lambda source=source, export_job=export_job: ask_stage(node, source, export_job))
        await run_all(tasks)


def _head_export(group: GroupWorker, request_id: str):
    worker = group.worker

    async def export(layers: tuple[int, int], fmt: KvFormat) -> bytes:
        # the parked sequence stays until the prefill job ends (serve_prefill aborts it then)
        return await worker.call(worker.engine.export_kv, request_id, fmt, release=False, layers=layers)

    return export


async def push_slices(node, request_id: str, epoch: int, kv_bits: int, prompt_token_ids: tuple[int, ...],
                      output_token_ids: tuple[int, ...], targets: tuple[KvTarget, ...], decode_group_id: int, *,
                      export) -> None:
    """Export each target's layers (`export(layers, fmt)`) and push them to its peer (for decode group
    `decode_group_id`), targets concurrently."""
    fmt = KvFormat(bits=kv_bits)

    async def push(target: KvTarget) -> None:
        blob = await export((target.first_layer, target.last_layer), fmt)
        record = KvPush(request_id, epoch, prompt_token_ids, output_token_ids, len(blob), group_id=decode_group_id)
        await send_kv(node, target.peer_id, record, blob, epoch)
        logger.debug("request %s: layers [%d, %d) sent to %s", request_id, target.first_layer, target.last_layer,
                     target.peer_id)

    await run_all([lambda target=target: push(target) for target in targets])


async def ask_stage(node, peer_id: str, job: KvExportJob) -> None:
    """Have a later prefill stage export and push its slices; raises ReplicaFailedError if it does not."""
    try:
        stream = await node.open_stream(peer_id, KV_EXPORT_PROTOCOL)
    except SwarmError as e:
        raise ReplicaFailedError(f"prefill stage {peer_id} is unreachable for the KV of {job.request_id}: {e}") from None
    try:
        with trio.fail_after(EXPORT_TIMEOUT_S):
            await write_message(stream, job)
            answer = await read_message(stream)
    except trio.TooSlowError:
        raise ReplicaFailedError(f"prefill stage {peer_id} did not send the KV of {job.request_id} within "
                                 f"{EXPORT_TIMEOUT_S:g} s") from None
    except SwarmError as e:  # the stream broke, or the answer did not decode
        raise ReplicaFailedError(f"prefill stage {peer_id} went away while sending the KV of {job.request_id}: "
                                 f"{e or type(e).__name__}") from None
    finally:
        await node.close_stream(stream)
    if isinstance(answer, RequestFailure):
        raise ReplicaFailedError(f"prefill stage {peer_id}: {answer.code}: {answer.message}")
    if not isinstance(answer, Ack) or answer.request_id != job.request_id:
        raise ReplicaFailedError(f"prefill stage {peer_id} answered a KV export with {answer!r:.200}")


async def serve_kv_export(node, stream) -> None:
    """`/swarm/kvexport/1.0.0` on a later prefill stage: export the job's slices, push them, answer."""
    with trio.fail_after(READ_TIMEOUT_S):
        job = await read_message(stream, expect=KvExportJob)
    group = group_for(node.groups, job.group_id, lambda g: g.stage > 0 and g.role == "prefill")
    if group is None:
        await write_message(stream, RequestFailure(job.request_id, "not_a_stage", "this peer holds no later stage "
                                                   f"of prefill group {job.group_id} (plan epoch {node.holder.epoch})"))
        return
    worker = group.worker
    engine = worker.engine
    num_tokens = len(job.prompt_token_ids) + len(job.output_token_ids) - 1

    async def export(layers: tuple[int, int], fmt: KvFormat) -> bytes:
        return await worker.call(engine.export_remote_kv, job.request_id, num_tokens, layers, fmt)

    try:
        with trio.fail_after(EXPORT_TIMEOUT_S):
            await push_slices(node, job.request_id, job.epoch, job.kv_bits, job.prompt_token_ids,
                              job.output_token_ids, job.targets, job.decode_group_id, export=export)
    except (SwarmError, trio.TooSlowError) as e:
        message = str(e) or f"not done within {EXPORT_TIMEOUT_S:g} s"
        logger.warning("request %s: KV export failed: %s", job.request_id, message)
        await write_message(stream, RequestFailure(job.request_id, "kv_push_failed", message[:4000]))
        return
    finally:
        if job.release:
            with trio.CancelScope(shield=True):
                await worker.call(engine.release_remote, [job.request_id])
    await write_message(stream, Ack(job.request_id))


async def run_all(tasks) -> None:
    """Run the coroutine functions `tasks` concurrently; the first SwarmError any raised is raised once all
    are done (not a group), so callers see one error naming the stage that failed."""
    errors: list[SwarmError] = []

    async def run(task) -> None:
        try:
            await task()
        except SwarmError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(run, task)
    if errors:
        raise errors[0]
