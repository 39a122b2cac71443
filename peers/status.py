"""The status record and endpoint: this peer's view of the swarm (members, profiles, plan, epoch, load).

`/swarm/status/1.0.0` answers a `StatusRequest` with a `StatusReply`; `swarm status` asks any peer and,
when that peer is not the coordinator, asks the coordinator it names, so the answer is the coordinator's
view. The table printer lives in `swarm.client.status` (the CLI may not import `peers`).
"""

from __future__ import annotations

import time

import trio

from swarm.net.rpc import read_message, write_message
from swarm.wire.requests import MemberDigest, MemberStatus, StatusReply, StatusRequest

STATUS_PROTOCOL = "/swarm/status/1.0.0"
READ_TIMEOUT_S = 5.0


def member_status(node, digest: MemberDigest, profile, last_heard_s: float) -> MemberStatus:
    """One row of the status table from a peer's latest digest and verified profile."""
    groups = node.holder.groups_of_peer(digest.peer_id)
    group = node.holder.plan.group(groups[0]) if groups else None
    return MemberStatus(
        peer_id=digest.peer_id, host=profile.host if profile else "(bootstrap)",
        gpu=profile.gpu if profile else "-", num_gpus=profile.num_gpus if profile else 0,
        is_emulated=bool(profile and profile.is_emulated), is_serving=profile is not None,
        group_id=group.id if group else -1, role=group.role if group else "-",
        is_ready=digest.ready_epoch >= 0 and digest.ready_epoch == node.holder.epoch,
        num_queued=digest.num_queued, num_running=digest.num_running, kv_tokens_free=digest.kv_tokens_free,
        tokens_per_s=digest.tokens_per_s, last_heard_s=round(last_heard_s, 3), addrs=digest.addrs[:4],
        profile=profile, links_gbps=dict(digest.links_gbps))


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
