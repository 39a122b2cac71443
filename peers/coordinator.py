"""The coordinator runtime: while this peer is the elected coordinator, plan the swarm and publish the plan.

How it works: the swarm's profiles and measured links become a `Cluster` (`cluster_from_profiles`); with the
model, the configured workload, rate and SLO scale that is a planner `Problem`. When the set of serving
peers changes (and has been still for `settle_s`; a departure is planned at once), the planner runs in a
worker thread, never on the event loop:
1. lightweight first (ThunderServe section 4.4): if groups of the current plan survive, `replan` keeps
   them (no weights move) and re-decides roles and routing; that plan is published at once;
2. then the full tabu search (`plan`) over the new membership; its plan replaces the lightweight one
   only if it scores clearly better (a change of groups moves weights).
Each published plan carries an epoch above every epoch seen in the swarm (`SwarmView.max_epoch`) and the
election term it was made in, which is what the other peers fence it by.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from peers.membership import is_servable
from swarm.errors import SwarmError
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Predicted, Routing, Stage

logger = logging.getLogger(__name__)

POLL_S = 0.1
FULL_PLAN_GAIN = 1.05  # the full plan must score this much better than the lightweight one


@dataclass(frozen=True)
class PlanInputs:
    """What a plan is computed from; equal inputs give the same plan, so it is the re-plan trigger."""

    profiles: tuple  # HardwareProfile of every serving peer, by peer id
    links_gbps: tuple  # ((peer a, peer b), Gbit/s), measured

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(p.peer_id for p in self.profiles)


def build_problem(config, model_path, inputs: PlanInputs):
    """The planner's Problem for the current swarm, and its host name -> peer id map."""
    from swarm.hardware import cluster_from_profiles
    from swarm.models import model_spec
    from swarm.plan import Problem, base_slo
    from swarm.workloads import load_workload

    gbps = {frozenset(pair): value for pair, value in inputs.links_gbps}
    cluster, hosts = cluster_from_profiles(inputs.profiles, gbps)
    model = model_spec(model_path)
    workload = load_workload(config.workload)
    slo = base_slo(model, workload).scaled(config.slo_scale)
    return Problem(cluster, model, workload, slo, rate_rps=config.rate_rps, kv_bits=config.kv_bits), hosts


def lightweight_plan(config, model_path, inputs: PlanInputs, current: Plan | None,
                     current_hosts: dict[str, str]):
    """Step 1, in a worker thread: the surviving groups of `current` with new roles and routing, or None."""
    if current is None:
        return None
    try:
        problem, hosts = build_problem(config, model_path, inputs)
    except SwarmError:
        return None
    light = _lightweight(problem, current, current_hosts, hosts)
    return None if light is None else (light, hosts)


def full_plan(config, model_path, inputs: PlanInputs, light, model_name: str,
              is_join: bool = False) -> tuple[Plan, dict[str, str], str]:
    """Step 2, in a worker thread: the tabu search's plan, kept if peers joined (groups must change to use
    them) or if it beats the lightweight one clearly."""
    try:
        problem, hosts = build_problem(config, model_path, inputs)
    except SwarmError as e:
        logger.error("cannot build the planning problem (%s); using the simple fallback plan", e)
        return fallback_plan(inputs, model_path, model_name), _fallback_hosts(inputs), "fallback"
    full = _full(problem, config.plan_budget_s, light[0] if light else None, hosts)
    if full is not None and (light is None or is_join or full.score > light[0].score * FULL_PLAN_GAIN):
        return full.plan, hosts, "full"
    if light is not None:
        return light[0].plan, light[1], "lightweight"
    logger.error("the planner found no feasible plan for %d peers; using the simple fallback plan",
                 len(inputs.profiles))
    return fallback_plan(inputs, model_path, model_name), hosts, "fallback"


def _lightweight(problem, current: Plan | None, current_hosts: dict[str, str], hosts: dict[str, str]):
    from swarm.plan import replan

    if current is None or any(current_hosts.get(h, p) != p for h, p in hosts.items()):
        return None  # no plan yet, or a host name now means another peer
    try:
        light = replan(problem, current)
    except Exception as e:  # a planner failure must not stop the coordinator; the full search follows
        logger.info("lightweight re-plan not possible: %s", e)
        return None
    return light if _servable(light, hosts) else None


def _servable(evaluation, hosts: dict[str, str]) -> bool:
    why = is_servable(evaluation.plan, hosts)
    if why:
        logger.info("planner's candidate skipped: %s", why)
    return not why


def _full(problem, budget_s: float, initial, hosts: dict[str, str]):
    """The tabu search's best servable plan: disaggregated (ThunderServe's phase split); colocated
    (`both`) replicas only when no disaggregated plan is feasible (a single peer, say)."""
    from swarm.plan import plan

    is_colocated_now = initial is not None and all(g.role == "both" for g in initial.plan.groups)
    best = None
    for roles in (("prefill", "decode"), ("both",)):
        if best is not None:
            break
        start = initial.plan if initial is not None and (roles == ("both",)) == is_colocated_now else None
        try:
            result = plan(problem, budget_s=budget_s, initial=start, allowed_roles=roles)
        except Exception as e:  # a planner bug or an infeasible swarm: report it, keep serving
            logger.info("full planning with roles %s failed: %s: %s", roles, type(e).__name__, e)
            continue
        if result.best.is_feasible and _servable(result.best, hosts):
            best = result.best
    return best


def fallback_plan(inputs: PlanInputs, model_path, model_name: str) -> Plan:
    """When the planner cannot help: the fastest peer prefills, every other peer decodes (one alone: both)."""
    from swarm.models import model_spec

    num_layers = model_spec(model_path).num_layers
    hosts = _fallback_hosts(inputs)
    names = sorted(hosts, key=lambda h: hosts[h])
    by_speed = sorted(inputs.profiles, key=lambda p: (-p.tflops, p.peer_id))
    host_of = {p: h for h, p in hosts.items()}
    if len(names) == 1:
        group = Group(0, "both", 1, 1, (Stage((f"{names[0]}/0",), (0, num_layers)),))
        return Plan(PLAN_FORMAT, 0, model_name, (group,), Routing({0: 1.0}, ((0, 0, 1.0),)), Predicted())
    order = [host_of[by_speed[0].peer_id]] + [host_of[p.peer_id] for p in by_speed[1:]]
    groups = tuple(Group(i, "prefill" if i == 0 else "decode", 1, 1, (Stage((f"{h}/0",), (0, num_layers)),))
                   for i, h in enumerate(order))
    share = 1.0 / (len(groups) - 1)
    return Plan(PLAN_FORMAT, 0, model_name, groups, Routing({0: 1.0}, tuple((0, i, share) for i in range(1, len(groups)))),
                Predicted())


def _fallback_hosts(inputs: PlanInputs) -> dict[str, str]:
    from swarm.hardware import cluster_from_profiles

    return cluster_from_profiles(inputs.profiles)[1]


def plan_inputs(node) -> PlanInputs:
    """The current serving peers' profiles and the links they measured. Between two emulated peers the
    link is emulated too (`emulated_link_gbps`): their loopback measurement says nothing about the
    network being emulated, and on a busy box it would make the planner avoid any KV transfer."""
    members = {p: m for p, m in node.membership.members.items() if m.profile is not None}
    digests = {p: m.digest for p, m in members.items()}
    profiles = [m.profile for m in members.values()]
    if node.profile is not None:
        profiles.append(node.profile)
        digests[node.peer_id] = node.digest()
    emulated = {p.peer_id for p in profiles if p.is_emulated}
    links: dict[tuple[str, str], float] = {}
    for peer_id, digest in digests.items():
        for other, gbps in digest.links_gbps.items():
            if other in digests and other != peer_id:
                pair = tuple(sorted((peer_id, other)))
                links[pair] = min(links.get(pair, gbps), gbps)
    for pair in links:
        if set(pair) <= emulated:
            links[pair] = node.config.emulated_link_gbps
    return PlanInputs(tuple(sorted(profiles, key=lambda p: p.peer_id)), tuple(sorted(links.items())))


async def run_coordinator(node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Plan and publish while this peer is the coordinator; re-plan when the serving peers change."""
    task_status.started()
    planned_ids: tuple[str, ...] | None = None
    changed_at_s, last_ids = time.monotonic(), ()
    while True:
        await trio.sleep(POLL_S)
        if node.coordinator_id() != node.peer_id:
            planned_ids = None
            continue
        if time.monotonic() - node.started_s < node.config.failure_timeout_s + node.config.settle_s:
            continue  # give gossip time to find the swarm before planning for it
        inputs = plan_inputs(node)
        ids = inputs.peer_ids
        if ids != last_ids:
            changed_at_s, last_ids = time.monotonic(), ids
        is_departure = planned_ids is not None and set(ids) < set(planned_ids)
        is_settled = time.monotonic() - changed_at_s >= node.config.settle_s
        if ids == planned_ids or not ids or not (is_departure or is_settled):
            continue
        await publish_new_plan(node, inputs)
        planned_ids = ids


def pinned_plan(config, inputs: PlanInputs) -> tuple[Plan, dict[str, str]] | None:
    """The operator's plan file (`--plan`, e.g. from `swarm plan --json`) once every host it names has joined;
    its host names are the peers' names."""
    try:
        plan = Plan.from_json(Path(config.plan_file).read_text(), source=config.plan_file)
    except (OSError, SwarmError) as e:
        logger.error("cannot use the plan file: %s", e)
        return None
    hosts = _fallback_hosts(inputs)
    missing = sorted({g.split("/")[0] for g in plan.gpu_ids} - set(hosts))
    if missing:
        logger.info("plan file %s: waiting for peers named %s", config.plan_file, ", ".join(missing))
        return None
    return plan, hosts


async def publish_new_plan(node, inputs: PlanInputs) -> None:
    """Lightweight re-plan first (published at once), then the full search (published if peers joined,
    or if it is clearly better)."""
    holder, config = node.holder, node.config
    is_join = bool(set(inputs.peer_ids) - set(holder.hosts.values()))
    start = time.perf_counter()
    if config.plan_file:
        pinned = pinned_plan(config, inputs)
        if pinned is not None:
            publish(node, pinned[0], pinned[1], "pinned", inputs, start)
        return
    light = await trio.to_thread.run_sync(lightweight_plan, config, node.model_path, inputs, holder.plan,
                                          holder.hosts)
    if light is not None:
        publish(node, light[0].plan, light[1], "lightweight", inputs, start)
    plan, hosts, how = await trio.to_thread.run_sync(full_plan, config, node.model_path, inputs, light,
                                                     node.model_name, is_join)
    if how != "lightweight":
        publish(node, plan, hosts, how, inputs, start)


def publish(node, plan: Plan, hosts: dict[str, str], how: str, inputs: PlanInputs, start_s: float) -> None:
    epoch = max(node.membership.max_epoch, node.holder.epoch) + 1
    plan = plan.with_epoch(epoch)
    logger.info("coordinator: %s plan for %d peers, epoch %d, in %.2f s: %s", how, len(inputs.profiles), epoch,
                time.perf_counter() - start_s, describe(plan))
    node.offer_plan(plan, hosts, node.membership.election.term, node.peer_id, source="self")


def describe(plan: Plan) -> str:
    return ", ".join(f"group {g.id} {g.role} on {'+'.join(g.gpu_ids)} layers {g.stages[0].layers[0]}-"
                     f"{g.stages[-1].layers[1]}" for g in plan.groups)
