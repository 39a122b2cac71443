"""Applying a plan: find this peer's group, load its stage's layers (or keep them), take its role, report ready.

How it works: each time the followed plan changes (a newer epoch, see `membership.PlanHolder`), the
applier looks up the group and stage holding this peer's GPU. If the engine already holds that layer range
only the role changes (ThunderServe's lightweight phase flip: no weights move); otherwise the stage is
loaded in a worker thread and swapped in (the first stage of a multi-peer pipeline, whatever its role,
gets a `PipelineWorker`, which drives the later stages' peers; prefill and decode pipelines exchange KV
slices per stage, see `kvroute`). When done, `ready_epoch` is set to the plan's epoch and gossiped; entry
peers route only to replicas ready for the epoch they follow. A peer in no group serves nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import trio

from peers.daemon_errors import PlanApplyError
from peers.engine import Engine, EngineConfig
from peers.membership import peer_stages
from peers.pipeline import PipelineWorker
from peers.worker import EngineWorker
from swarm.errors import SwarmError
from swarm.wire.plan import Group, Plan

logger = logging.getLogger(__name__)


def my_group(node, plan: Plan) -> Group | None:
    groups = node.holder.groups_of_peer(node.peer_id)
    if len(groups) > 1:
        logger.warning("plan epoch %d puts this peer in groups %s; serving group %d only", plan.epoch, groups,
                       groups[0])
    return plan.group(groups[0]) if groups else None


def my_stage(node, stages: list[tuple[str, int, int]]) -> int:
    """The index of this peer's part of the pipeline (`peer_stages`)."""
    return next(i for i, (peer, _, _) in enumerate(stages) if peer == node.peer_id)


def engine_config(node, group: Group, stages: list[tuple[str, int, int]], stage_index: int) -> EngineConfig:
    """The engine settings for this peer's layers of `group`."""
    _, first, last = stages[stage_index]
    return EngineConfig(role=group.role, first_layer=first, last_layer=last, device=node.config.device,
                        dtype=node.config.dtype,
                        kv_cache_bytes=node.config.kv_cache_bytes, max_num_seqs=node.config.max_num_seqs)


def next_stage_peer(stages: list[tuple[str, int, int]], stage_index: int) -> str | None:
    return stages[stage_index + 1][0] if stage_index + 1 < len(stages) else None


def holds_layers(engine: Engine, config: EngineConfig) -> bool:
    stage = engine.stage
    return (stage.first_layer, stage.last_layer) == (config.first_layer, config.last_layer)


async def apply_plan(node, plan: Plan) -> None:
    """Take this peer's part in `plan`; sets `node.ready_epoch` when it can serve."""
    if plan.model != node.model_name:
        raise PlanApplyError(f"plan epoch {plan.epoch} is for model {plan.model!r}, this peer serves "
                             f"{node.model_name!r}")
    group = my_group(node, plan)
    if group is None:
        node.set_ready(-1, None)
        logger.info("plan epoch %d: this peer is in no group; idle", plan.epoch)
        return
    stages = peer_stages(group, node.holder.hosts)
    stage_index = my_stage(node, stages)
    config = engine_config(node, group, stages, stage_index)
    node.pipeline_stage, node.pipeline_next = stage_index, next_stage_peer(stages, stage_index)
    worker = node.worker
    if worker is not None and holds_layers(worker.engine, config):
        if worker.engine.config.role != group.role:
            logger.info("plan epoch %d: role %s -> %s (weights stay)", plan.epoch, worker.engine.config.role,
                        group.role)
        worker.engine.config = replace(worker.engine.config, role=group.role)
    else:
        node.set_ready(-1, None)
        logger.info("plan epoch %d: loading layers [%d, %d) as %s", plan.epoch, config.first_layer,
                    config.last_layer, group.role)
        engine = await trio.to_thread.run_sync(Engine.load, node.model_path, config)
        is_head = len(stages) > 1 and stage_index == 0
        await node.start_worker(PipelineWorker(engine, node) if is_head else EngineWorker(engine))
    node.set_ready(plan.epoch, group.id)
    where = f"stage {stage_index + 1} of {len(stages)}, " if len(stages) > 1 else ""
    logger.info("plan epoch %d: ready as group %d (%s, %slayers %s)", plan.epoch, group.id, group.role, where,
                stages[stage_index][1:])


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
            node.set_ready(-1, None)
            logger.error("cannot apply plan epoch %d: %s", plan.epoch, e)
