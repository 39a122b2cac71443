"""Applying a plan: serve every group the plan puts this peer in, one engine each; report which are ready.

How it works: each time the followed plan changes (a newer epoch, see `membership.PlanHolder`), the
applier lists this peer's part of every group with a GPU on its host (`membership.placements`: a host's
GPUs may be split over several groups, e.g. 2 prefill and 2 decode). Each part runs on the device of the
group's first GPU on this host ("host/i" -> `cuda:i` when the peer runs on CUDA; everything on the CPU when
the peer's device is the CPU, as for an emulated profile). Then, per group:
1. a running engine with the same layer range on the same device is kept (ThunderServe's lightweight
   phase flip: no weights move), re-keyed to the new plan's group id, its role and pipeline place updated;
   kept groups are ready for the new epoch at once;
2. groups this peer no longer serves are stopped (their requests end, their memory is released) before
   anything new is loaded;
3. each new part is loaded in a worker thread (or takes the whole model preloaded before the first plan,
   `Node.spare`, when it wants all layers on that device) and started; the first stage of a multi-peer
   pipeline, whatever its role, gets a `PipelineWorker`, which drives the later stages' peers. Each group
   is gossiped ready as soon as it is (`MemberDigest.ready_groups`, for the plan's epoch); entry peers
   route to a group only when every peer of it is ready for it.
A peer in no group serves nothing.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import replace

import torch
import trio

from peers.daemon_errors import PlanApplyError
from peers.engine import Engine, EngineConfig
from peers.membership import Placement, placements
from peers.pipeline import PipelineWorker
from peers.worker import EngineWorker, GroupWorker
from swarm.errors import SwarmError
from swarm.wire.plan import Plan

logger = logging.getLogger(__name__)


def group_device(node, placement: Placement) -> str:
    """The torch device of this peer's part of a group: its first GPU's CUDA device on a CUDA peer (or the
    one the operator pinned with `--device cuda:N`), the CPU otherwise. A declared (emulated) profile with
    more GPUs than this machine has shares the real ones round-robin."""
    kind = node.profile.device if node.profile is not None else "cpu"
    if kind != "cuda":
        return "cpu"
    if node.config.device.startswith("cuda:"):
        return node.config.device
    count = torch.cuda.device_count()
    index = placement.gpu_index
    if 0 < count <= index and node.profile.is_emulated:
        index %= count
    return f"cuda:{index}"


def engine_config(node, placement: Placement, device: str) -> EngineConfig:
    """The engine settings for this peer's layers of one group."""
    return EngineConfig(role=placement.role, first_layer=placement.first_layer, last_layer=placement.last_layer,
                        device=device, dtype=node.config.dtype, kv_cache_bytes=node.config.kv_cache_bytes,
                        max_num_seqs=node.config.max_num_seqs)


def match_kept(current: list[GroupWorker], wanted: list[tuple[Placement, str]]) -> dict[int, GroupWorker]:
    """For each wanted part (placement, device), by group id, a running group holding the same layers on the
    same device (each used once): those keep their weights."""
    free = [g for g in current if g.worker is not None]
    kept = {}
    for placement, device in wanted:
        layers = (placement.first_layer, placement.last_layer)
        match = next((g for g in free if (g.layers, g.device) == (layers, device)), None)
        if match is not None:
            free.remove(match)
            kept[placement.group_id] = match
    return kept


def spare_fits(engine: Engine | None, placement: Placement, device: str) -> bool:
    """Whether the preloaded whole-model engine can serve this part as it is (a role flip)."""
    if engine is None:
        return False
    stage = engine.stage
    return ((stage.first_layer, stage.last_layer) == (placement.first_layer, placement.last_layer)
            and str(engine.config.torch_device()) == device)


def release_memory(devices: set[str]) -> None:
    """Give the memory of stopped engines back (CUDA caches it otherwise)."""
    gc.collect()
    if any(d.startswith("cuda") for d in devices):
        torch.cuda.empty_cache()


async def apply_plan(node, plan: Plan) -> None:
    """Take this peer's part in every group of `plan`; each group is marked ready once it can serve."""
    if plan.model != node.model_name:
        raise PlanApplyError(f"plan epoch {plan.epoch} is for model {plan.model!r}, this peer serves "
                             f"{node.model_name!r}")
    wanted = [(p, group_device(node, p)) for p in placements(plan, node.holder.hosts, node.peer_id)]
    kept = match_kept(list(node.groups.values()), wanted)
    stopped = [g for g in node.groups.values() if g not in kept.values()]
    node.groups = {}
    for group in stopped:
        if group.worker is not None:
            logger.info("plan epoch %d: stopping %s (not in this plan)", plan.epoch, group.describe())
        node.stop_group(group)
    spare_taker = next((p.group_id for p, device in wanted
                        if p.group_id not in kept and spare_fits(node.spare, p, device)), None)
    freed = {g.device for g in stopped}
    if node.spare is not None and spare_taker is None:
        freed.add(str(node.spare.config.torch_device()))
        node.spare = None
    if freed:
        release_memory(freed)
    for placement, _ in wanted:
        if placement.group_id in kept:
            await keep_group(node, kept[placement.group_id], placement, plan.epoch)
    node.set_ready(plan.epoch if wanted else -1)
    if not wanted:
        logger.info("plan epoch %d: this peer is in no group; idle", plan.epoch)
        return
    for placement, device in wanted:
        if placement.group_id not in kept:
            await start_new_group(node, placement, device, plan.epoch, take_spare=placement.group_id == spare_taker)
    serving = " and ".join(g.describe() for g in sorted(node.groups.values(), key=lambda g: g.group_id))
    logger.info("plan epoch %d: serving %s", plan.epoch, serving or "nothing (no group could be loaded)")


async def keep_group(node, group: GroupWorker, placement: Placement, epoch: int) -> None:
    """A running engine with this part's layers and device: re-key it, flip its role, ready at once."""
    role = group.role
    if role != placement.role:
        logger.info("plan epoch %d: group %d -> %d on %s: role %s -> %s (weights stay)", epoch, group.group_id,
                    placement.group_id, group.device, role, placement.role)
    group.worker.engine.config = replace(group.worker.engine.config, role=placement.role)
    group.group_id, group.stage, group.num_stages = placement.group_id, placement.stage, placement.num_stages
    group.next_peer = placement.next_peer
    node.groups[placement.group_id] = group
    if not group.is_running:  # a pipeline head whose stage failed: its loop ended, its engine is fine
        await node.start_group(group, group.worker)
    group.is_ready = True


async def start_new_group(node, placement: Placement, device: str, epoch: int, *, take_spare: bool) -> None:
    """Load (or take the preloaded engine for) a part of a group, start its worker, mark it ready; a part
    that cannot be loaded (a CUDA device this machine lacks, too little memory) is logged and left out."""
    config = engine_config(node, placement, device)
    if take_spare:
        engine, node.spare = node.spare, None
        engine.config = replace(engine.config, role=placement.role)
    else:
        logger.info("plan epoch %d: loading %s on %s", epoch, placement.describe(), device)
        try:
            engine = await trio.to_thread.run_sync(Engine.load, node.model_path, config)
        except (SwarmError, torch.cuda.OutOfMemoryError) as e:  # this group cannot be served here, the others can
            logger.error("plan epoch %d: cannot load %s on %s: %s", epoch, placement.describe(), device, e)
            return
    group = GroupWorker(placement.group_id, placement.stage, placement.num_stages, placement.next_peer, device)
    is_head = placement.num_stages > 1 and placement.stage == 0
    await node.start_group(group, PipelineWorker(engine, node, group) if is_head else EngineWorker(engine))
    node.groups[placement.group_id] = group
    group.is_ready = True
    node.set_ready(epoch)
    logger.info("plan epoch %d: ready as %s", epoch, group.describe())


async def run_applier(node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Apply each new plan the peer follows, newest first (an older pending one is skipped)."""
    task_status.started()
    await node.preload()
    applied = None
    while True:
        plan = node.holder.plan
        if plan is None or plan is applied:
            await node.wait_for_change()
            continue
        applied = plan
        try:
            await apply_plan(node, plan)
        except SwarmError as e:
            for group in node.groups.values():
                group.is_ready = False
            node.set_ready(-1)
            logger.error("cannot apply plan epoch %d: %s", plan.epoch, e)
