"""The status record and endpoint: this peer's view of the swarm (members, profiles, plan, epoch, load).

`/swarm/status/1.0.0` answers a `StatusRequest` with a `StatusReply`; `swarm status` asks any peer and,
when that peer is not the coordinator, asks the coordinator it names, so the answer is the coordinator's
view. Each row lists every group the plan puts the peer in (a peer with several GPUs may serve several),
with its role, layers, device and readiness. The table printer lives in `swarm.client.status` (the CLI may not import `peers`).
"""

from __future__ import annotations

import time

import trio

from peers.membership import placements, ready_groups
from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import GroupStatus, MemberDigest, MemberStatus, StatusReply, StatusRequest

STATUS_PROTOCOL = "/swarm/status/1.0.0"
READ_TIMEOUT_S = 5.0


def member_status(node, digest: MemberDigest, profile, last_heard_s: float) -> MemberStatus:
    """One row of the status table from a peer's latest digest and verified profile, with every group the
    followed plan puts it in (its first group's also in the flat fields older clients read)."""
    ready = ready_groups(digest, node.holder)
    groups = tuple(GroupStatus(p.group_id, p.role, p.stage, p.num_stages, p.first_layer, p.last_layer,
                               group_device(node, digest.peer_id, profile, p), p.group_id in ready)
                   for p in placements(node.holder.plan, node.holder.hosts, digest.peer_id))
    first = groups[0] if groups else None
    return MemberStatus(
        peer_id=digest.peer_id, host=profile.host if profile else "(bootstrap)",
        gpu=profile.gpu if profile else "-", num_gpus=profile.num_gpus if profile else 0,
        is_emulated=bool(profile and profile.is_emulated), is_serving=profile is not None,
        group_id=first.group_id if first else -1, role=first.role if first else "-",
        is_ready=bool(groups) and all(g.is_ready for g in groups),
        num_queued=digest.num_queued, num_running=digest.num_running, kv_tokens_free=digest.kv_tokens_free,
        tokens_per_s=digest.tokens_per_s, last_heard_s=round(last_heard_s, 3), addrs=digest.addrs[:4],
        profile=profile, links_gbps=dict(digest.links_gbps), groups=groups)


def group_device(node, peer_id: str, profile, placement) -> str:
    """Where a peer runs its part of a group: this peer's actual device, else what its profile implies
    (its GPU "host/i" is `cuda:i` on a CUDA peer, the CPU otherwise)."""
    own = node.groups.get(placement.group_id) if peer_id == node.peer_id else None
    if own is not None:
        return own.device
    if profile is None or profile.device != "cuda":
        return "cpu"
    return f"cuda:{placement.gpu_index}"


def status_reply(node) -> StatusReply:
    now = time.monotonic()
    rows = [member_status(node, node.digest(), node.profile, 0.0)]
    rows += [member_status(node, m.digest, m.profile, now - m.last_heard_s) for m in node.membership.members.values()]
    rows.sort(key=lambda r: (not r.is_serving, r.host, r.peer_id))
    plan = node.holder.plan
    return StatusReply(peer_id=node.peer_id, coordinator_id=node.coordinator_id(), epoch=node.holder.epoch,
                       plan_json=plan.to_json(indent=None) if plan else "", members=tuple(rows),
                       uptime_s=round(now - node.started_s, 3))


async def serve_status(node, stream) -> None:
    with trio.fail_after(READ_TIMEOUT_S):
        await read_message(stream, expect=StatusRequest)
        await write_message(stream, status_reply(node))
    await stream.close()
