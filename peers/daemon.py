"""The peer daemon: `run_peer(config)` runs one peer under a single trio root nursery.

Subsystems (each started with `await nursery.start(run_x, node)`): membership gossip and link probes
(`gossip.py`), the applier (loads this peer's part of each group the plan puts it in, takes its roles), the
coordinator runtime (plans while elected), one engine worker per group (`Node.groups`: a peer with several
GPUs may serve several groups, e.g. prefill on GPU 0 and decode on GPU 1). Protocol handlers (`/swarm/<name>/1.0.0`: member, status, generate, prefill,
decode, kv, kvexport, hidden, bandwidth) run per stream; a failure there resets that stream and is logged, never
more. `Node` holds the state they share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time
from functools import partial
from pathlib import Path

import trio

from peers.applier import run_applier
from peers.config import PeerConfig
from peers.coordinator import run_coordinator
from peers.daemon_errors import PeerConfigError
from peers.dispatch import DECODE_PROTOCOL, GENERATE_PROTOCOL, PREFILL_PROTOCOL, Ledger, serve_generate
from peers.gossip import MEMBER_PROTOCOL, run_gossip, run_link_probes, serve_member
from peers.kvlink import (
    BANDWIDTH_PROTOCOL,
    FRAME_TIMEOUT_S,
    KV_PROTOCOL,
    KvLinks,
    serve_bandwidth,
    serve_kv,
    serve_kv_channel,
)
from peers.kvroute import KV_EXPORT_PROTOCOL, serve_kv_export
from peers.loopback import loopback_pair
from peers.membership import PlanHolder, SwarmView, ready_groups, trimmed_for
from peers.pipeline import HIDDEN_PROTOCOL, serve_hidden
from peers.replica import serve_decode, serve_prefill
from peers.status import STATUS_PROTOCOL, serve_status
from peers.worker import EngineWorker, GroupWorker, WorkerLoad, group_for
from swarm.errors import SwarmError
from swarm.net.fastpath import run_fastpath_server
from swarm.net.host import Host, HostConfig, open_host, reset_quietly
from swarm.net.identity import load_or_create_identity, peer_id_of, read_swarm_key
from swarm.net.signed import sign_record
from swarm.wire.requests import MemberDigest

logger = logging.getLogger(__name__)

PARENT_CHECK_S = 1.0


class Node:
    """What the subsystems of one peer share: identity, membership, the followed plan, the engine."""

    def __init__(self, config: PeerConfig, host: Host, nursery: trio.Nursery) -> None:
        self.config = config
        self.host = host
        self.nursery = nursery
        self.peer_id = host.peer_id
        self.started_s = time.monotonic()
        self.membership = SwarmView(self.peer_id, is_serving=config.is_serving, now_s=time.monotonic(),
                                    failure_timeout_s=config.failure_timeout_s)
        self.holder = PlanHolder()
        self.ledger = Ledger()
        self.rng = random.Random(0)
        self.profile = None  # HardwareProfile; None on a bootstrap node
        self.signed_profile = None  # the same, signed with this peer's key, as gossiped
        self.verified: dict[str, tuple[bytes, object]] = {}  # peer id -> (signature, profile) checked
        self.model_path: Path | None = None
        self.model_name = ""
        self.groups: dict[int, GroupWorker] = {}  # the groups of the followed plan this peer serves, by id
        self.spare = None  # the Engine preloaded before any plan (whole model, role both), until a group takes it
        self.ready_epoch = -1  # the plan epoch the groups marked ready are ready for
        self.decode_sessions: dict = {}  # request id -> DecodeSession (request ids are unique per swarm)
        self.links_gbps: dict[str, float] = {}
        self.kv_links = KvLinks()  # fast-path KV connections this peer opened (as a prefill replica)
        self.fastpath = None  # the FastPathServer decode replicas receive KV on
        self.sequence = 0
        self.changed = trio.Event()
        self.gossip_soon = trio.Event()
        self.preloaded = trio.Event()

    # ---- shared state ----------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every task waiting for a change (plan, readiness, membership)."""
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for_change(self, timeout_s: float = 1.0) -> None:
        with trio.move_on_after(timeout_s):
            await self.changed.wait()

    def coordinator_id(self) -> str:
        return self.membership.coordinator_id

    def offer_plan(self, plan, hosts: dict[str, str], term: int, coordinator_id: str, *, source: str) -> None:
        outcome = self.holder.offer(self.membership, plan, hosts, term, coordinator_id)
        if outcome == "applied":
            logger.info("following plan epoch %d of coordinator %s, term %d (from %s)", plan.epoch, coordinator_id,
                        term, source)
            self.notify()
            self.gossip_soon.set()
        elif outcome == "stale":
            logger.debug("ignored plan epoch %d from %s: we follow epoch %d", plan.epoch, source, self.holder.epoch)

    def set_ready(self, epoch: int) -> None:
        """The groups marked ready (`GroupWorker.is_ready`) are ready for plan `epoch` (-1: none is); gossiped."""
        self.ready_epoch = epoch
        self.notify()
        self.gossip_soon.set()

    def group_failed(self, group: GroupWorker) -> None:
        """A group's replica stopped (a pipeline stage failed or left): not ready until the next plan."""
        group.is_ready = False
        self.notify()
        self.gossip_soon.set()

    def ready_group_ids(self) -> tuple[int, ...]:
        """The groups of plan `ready_epoch` this peer is ready for, ascending."""
        if self.ready_epoch < 0:
            return ()
        return tuple(sorted(g.group_id for g in self.groups.values() if g.is_ready))

    def ready_by_peer(self) -> dict[str, set[int]]:
        """Peer id -> the groups of the followed plan it is ready for (this peer's own included)."""
        ready = {p: ready_groups(m.digest, self.holder) for p, m in self.membership.members.items()}
        if self.ready_epoch == self.holder.epoch >= 0:
            ready[self.peer_id] = set(self.ready_group_ids())
        return ready

    def later_stage_worker(self, group_id: int) -> EngineWorker | None:
        """The engine worker of a later stage of decode group `group_id` on this peer (the KV slices for its
        layers come here); for NO_GROUP (a push from a peer that predates group ids) the one such stage."""
        group = group_for(self.groups, group_id, lambda g: g.stage > 0 and g.role in ("decode", "both"))
        return None if group is None else group.worker

    def load(self) -> WorkerLoad:
        """This peer's load: the sum over its groups' engines."""
        total = WorkerLoad()
        for group in self.groups.values():
            if group.worker is not None:
                load = group.worker.load()
                total.num_queued += load.num_queued
                total.num_running += load.num_running
                total.kv_tokens_free += load.kv_tokens_free
                total.tokens_per_s += load.tokens_per_s
        return total

    def load_of(self, peer_id: str) -> int:
        if peer_id == self.peer_id:
            load = self.load()
            return load.num_queued + load.num_running
        member = self.membership.members.get(peer_id)
        return 0 if member is None else member.digest.num_queued + member.digest.num_running

    def digest(self, receiver: MemberDigest | None = None) -> MemberDigest:
        """This peer's digest; for a peer whose last digest is `receiver`, without the plan and the known
        addresses when that digest showed it holds them (`trimmed_for`); in full for `receiver` None."""
        self.sequence += 1
        load = self.load()
        ready = self.ready_group_ids()
        addrs = tuple(self.host.addrs[:8])
        known = self.membership.known()
        return trimmed_for(MemberDigest(
            peer_id=self.peer_id, sequence=self.sequence, addrs=addrs,
            signed_profile=self.signed_profile,
            max_epoch=max(self.membership.max_epoch, self.holder.epoch, 0),
            coordinator_term=self.membership.election.term, coordinator_id=self.coordinator_id(),
            plan=self.holder.plan, plan_term=self.holder.term, plan_coordinator_id=self.holder.coordinator_id,
            plan_hosts=self.holder.hosts, ready_epoch=self.ready_epoch if ready else -1,
            num_queued=load.num_queued, num_running=load.num_running, kv_tokens_free=load.kv_tokens_free,
            tokens_per_s=round(load.tokens_per_s, 3), known=known, links_gbps=dict(self.links_gbps),
            ready_groups=ready, plan_hash=self.holder.plan_hash,
            members_hash=self.membership.members_fingerprint(known, addrs)), receiver)

    # ---- engine ----------------------------------------------------------------------------------------

    async def preload(self) -> None:
        """Load the whole model (role `both`) before any plan arrives, so applying a plan is a role flip for
        the group that takes it (`spare`)."""
        import torch

        from peers.engine import Engine, EngineConfig

        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        config = EngineConfig(role="both", device=self.config.device, dtype=self.config.dtype,
                              kv_cache_bytes=self.config.kv_cache_bytes,
                              max_num_seqs=self.config.max_num_seqs)
        start = time.perf_counter()
        self.spare = await trio.to_thread.run_sync(Engine.load, self.model_path, config)
        self.preloaded.set()
        logger.info("model %s loaded in %.1f s (%d layers) on %s", self.model_name, time.perf_counter() - start,
                    self.spare.model_config.num_layers, config.torch_device())

    async def start_group(self, group: GroupWorker, worker: EngineWorker) -> None:
        """Run `worker` (an engine's driver) for `group`, replacing the worker it had (stopped)."""

        async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                group.is_running = True
                task_status.started(scope)
                try:
                    await worker.run_worker()
                finally:
                    group.is_running = False

        if group.worker is not None and group.worker is not worker:
            self.stop_group(group)
        group.worker = worker
        group.scope = await self.nursery.start(run)

    def stop_group(self, group: GroupWorker) -> None:
        """Stop a group's worker: its requests end (their consumers see the channel close), its engine's
        memory is released once nothing refers to it."""
        group.is_ready = False
        if group.scope is not None:
            group.scope.cancel()
        if group.worker is not None:
            group.worker.close_requests()
        group.worker, group.scope = None, None

    # ---- streams ---------------------------------------------------------------------------------------

    async def open_stream(self, peer_id: str, protocol: str):
        """A stream to `peer_id` (an in-process loopback when it is this peer), dialling if need be."""
        if peer_id == self.peer_id:
            ours, theirs = loopback_pair(self.peer_id)
            self.nursery.start_soon(self._serve_loopback, protocol, theirs)
            return ours
        if peer_id not in self.host.connected_peer_ids():
            await self.dial(peer_id, self.membership.addrs.get(peer_id, ()))
        return await self.host.open_stream(peer_id, protocol)

    async def close_stream(self, stream) -> None:
        # the stream may be reset or closed by the other side already
        with trio.move_on_after(1.0), contextlib.suppress(Exception):
            await stream.close()

    async def dial(self, peer_id: str, addrs) -> None:
        errors = []
        for addr in addrs:
            full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
            try:
                await self.host.dial(full)
                return
            except SwarmError as e:
                errors.append(str(e))
        raise SwarmError(f"cannot reach peer {peer_id}: {'; '.join(errors) or 'no known address'}")

    async def _serve_loopback(self, protocol: str, stream) -> None:
        try:
            await HANDLERS[protocol](self, stream)
        except Exception as e:  # as in Host.set_handler: a stream's failure stays in that stream
            logger.warning("%s (local): %s; stream reset", protocol, e)
            await reset_quietly(stream)


async def run_parent_watch(scope: trio.CancelScope) -> None:
    """Stop this peer when the process that launched it is gone (its children must never outlive it)."""
    parent_pid = os.getppid()
    while os.getppid() == parent_pid:
        await trio.sleep(PARENT_CHECK_S)
    logger.warning("the launching process %d is gone; stopping", parent_pid)
    scope.cancel()


HANDLERS = {
    MEMBER_PROTOCOL: serve_member, STATUS_PROTOCOL: serve_status, GENERATE_PROTOCOL: serve_generate,
    PREFILL_PROTOCOL: serve_prefill, DECODE_PROTOCOL: serve_decode, KV_PROTOCOL: serve_kv,
    BANDWIDTH_PROTOCOL: serve_bandwidth, HIDDEN_PROTOCOL: serve_hidden, KV_EXPORT_PROTOCOL: serve_kv_export,
}


# ---- root -------------------------------------------------------------------------------------------------

def describe_self(config: PeerConfig, peer_id: str):
    """This peer's profile (declared or probed) and model, or (None, None, "") for a bootstrap node."""
    if not config.is_serving:
        return None, None, ""
    from swarm.hardware import declared_profile, probe
    from swarm.models import model_spec
    from swarm.modelstore import resolve_model

    host = config.host_name
    profile = (declared_profile(config.profile, peer_id=peer_id, host=host) if config.profile
               else probe(peer_id=peer_id, host=host))
    profile = dataclasses.replace(profile, device=engine_device(config))
    model_path = resolve_model(config.model)
    return profile, model_path, model_spec(model_path).name


def engine_device(config: PeerConfig) -> str:
    """"cpu" or "cuda": where this peer's engine will run (config.device with "auto" resolved); raises
    EngineConfigError, before anything starts, if a CUDA device was asked for and is absent."""
    from peers.engine import EngineConfig

    return EngineConfig(device=config.device, dtype=config.dtype).torch_device().type


def fastpath_bind_host(listen: tuple[str, ...] | list[str]) -> str:
    """The IPv4 address the KV fast path listens on: the first /ip4 listen address's (all if none)."""
    for addr in listen:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            return parts[2]
    return "0.0.0.0"


async def _close_links_at_exit(node: Node) -> None:
    try:
        await trio.sleep_forever()
    finally:
        await node.kv_links.aclose()


async def run_peer(config: PeerConfig, *, services=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one peer until cancelled; `task_status.started(node)` once it listens and gossips.

    `services(host, *, task_status)`, if given, runs on this peer's host for its lifetime, started before
    the peer reports up (`swarm bootstrap` adds the relay hop and the peer list this way)."""
    host_config = HostConfig(listen_addrs=config.listen, identity_path=config.identity_path,
                             swarm_key_path=config.swarm_key_path)
    # everything a user can get wrong (identity, profile, model) is checked before the host starts
    key_pair = load_or_create_identity(config.identity_path)
    profile, model_path, model_name = describe_self(config, peer_id_of(key_pair))
    if config.swarm_key_path:
        read_swarm_key(config.swarm_key_path)
    async with open_host(host_config, key_pair=key_pair) as host, trio.open_nursery() as nursery:
        if not host.addrs:
            raise PeerConfigError(f"cannot listen on {' '.join(config.listen)}: not an address of this machine, "
                                  "or the port is taken")
        node = Node(config, host, nursery)
        node.profile, node.model_path, node.model_name = profile, model_path, model_name
        if node.profile is not None:
            node.signed_profile = sign_record(host.key_pair, node.profile, 1)
        for protocol, handler in HANDLERS.items():
            host.set_handler(protocol, lambda stream, handler=handler: handler(node, stream))
        nursery.start_soon(_close_links_at_exit, node)
        if services is not None:
            await nursery.start(services, host)
        await nursery.start(run_gossip, node)
        if node.profile is not None:
            node.fastpath = await nursery.start(partial(
                run_fastpath_server, host, on_channel=partial(serve_kv_channel, node),
                bind_host=fastpath_bind_host(config.listen), timeout_s=FRAME_TIMEOUT_S))
            await nursery.start(run_applier, node)
            await nursery.start(run_coordinator, node)
            await nursery.start(run_link_probes, node)
        if config.is_exiting_with_parent:
            nursery.start_soon(run_parent_watch, nursery.cancel_scope)
        if config.addrs_file:
            path = Path(config.addrs_file).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(host.addrs) + "\n")
        what = (f"{node.profile.gpu}x{node.profile.num_gpus}{' (emulated)' if node.profile.is_emulated else ''}, "
                f"model {node.model_name}") if node.profile else "bootstrap node"
        logger.warning("peer %s up (%s) at %s", host.peer_id, what, " ".join(host.addrs))
        task_status.started(node)
