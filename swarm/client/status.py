"""The coordinator's view of a swarm, fetched through any peer, as JSON or a human-readable table."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from swarm.client.errors import ClientError
from swarm.client.sync import SwarmClient
from swarm.wire.requests import MemberStatus, StatusReply

DEFAULT_ADDRS_FILE = Path("~/.swarm/peer.addrs")  # `swarm join` and `swarm demo` write their address here


def addrs_file() -> Path:
    """Where local peers leave their addresses: $SWARM_ADDRS_FILE, else ~/.swarm/peer.addrs."""
    import os

    return Path(os.environ.get("SWARM_ADDRS_FILE") or DEFAULT_ADDRS_FILE).expanduser()
COLUMNS = ("host", "gpu", "role", "group", "layers", "device", "ready", "queued", "running", "kv free", "tok/s",
           "heard", "peer")


def default_peer_addrs() -> list[str]:
    """Where to ask when no peer is given: $SWARM_PEER (comma-separated), else the addresses the last
    `swarm join` or `swarm demo` on this machine wrote to `addrs_file()`."""
    import os

    addrs = [a for a in os.environ.get("SWARM_PEER", "").split(",") if a]
    path = addrs_file()
    if not addrs and path.is_file():
        addrs = path.read_text().split()
    if not addrs:
        raise ClientError("give a peer to ask: --peer /ip4/HOST/tcp/PORT/p2p/<peer id> (or set SWARM_PEER, "
                          "or run `swarm join`/`swarm demo` on this machine first)")
    return addrs


def fetch_status(addrs: Sequence[str], *, swarm_key: str | None = None, timeout_s: float = 5.0) -> StatusReply:
    """Ask a peer; if it names another coordinator, ask the coordinator (falling back to the first answer)."""
    reply = SwarmClient(list(addrs), swarm_key=swarm_key, timeout_s=timeout_s, connect_timeout_s=timeout_s).status()
    if reply.coordinator_id in ("", reply.peer_id):
        return reply
    coordinator = next((m for m in reply.members if m.peer_id == reply.coordinator_id and m.addrs), None)
    if coordinator is None:
        return reply
    addrs = [a if "/p2p/" in a else f"{a}/p2p/{coordinator.peer_id}" for a in coordinator.addrs]
    try:
        return SwarmClient(addrs, swarm_key=swarm_key, timeout_s=timeout_s, connect_timeout_s=timeout_s).status()
    except ClientError:
        return reply


def status_dict(reply: StatusReply) -> dict:
    """A JSON-ready dict: the answering peer, coordinator, epoch, plan (as its JSON object) and members."""
    return {"peer_id": reply.peer_id, "coordinator_id": reply.coordinator_id, "epoch": reply.epoch,
            "uptime_s": reply.uptime_s, "plan": json.loads(reply.plan_json) if reply.plan_json else None,
            "members": [dataclasses.asdict(m) for m in reply.members]}


def format_status(reply: StatusReply) -> str:
    """A table of the members, then the plan's groups and predictions."""
    rows = [COLUMNS] + [row for m in reply.members for row in _rows(m, reply.coordinator_id)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [f"coordinator {reply.coordinator_id or '(none)'}   plan epoch {reply.epoch}   "
             f"{sum(m.is_serving for m in reply.members)} serving peers"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if reply.plan_json:
        lines.append(describe_plan(json.loads(reply.plan_json)))
    return "\n".join(lines)


def describe_plan(plan: dict) -> str:
    """A few lines: each group's role, GPUs, TP x PP and layers; the routing; the predicted figures."""
    lines = [f"plan epoch {plan['epoch']} for {plan['model']}:"]
    for g in plan["groups"]:
        stages = "; ".join(f"{'+'.join(s['gpus'])} layers {s['layers'][0]}-{s['layers'][1]}" for s in g["stages"])
        share = plan["routing"]["prefill"].get(str(g["id"]))
        routed = f", {share:.0%} of requests" if share else ""
        lines.append(f"  group {g['id']}: {g['role']:<7} tp={g['tp']} pp={g['pp']}  {stages}{routed}")
    kv = ", ".join(f"{p}->{d} {s:.0%}" for p, d, s in plan["routing"]["kv"])
    lines.append(f"  KV routes: {kv}")
    p = plan.get("predicted", {})
    if p:
        lines.append(f"  predicted: goodput {p['goodput_rps']:.2f} req/s, SLO attainment {p['slo_attainment']:.0%}, "
                     f"TTFT p90 {p['ttft_p90_s'] * 1e3:.1f} ms, TPOT p90 {p['tpot_p90_s'] * 1e3:.2f} ms (emulated GPUs)")
    return "\n".join(lines)


def _rows(m: MemberStatus, coordinator_id: str) -> list[tuple[str, ...]]:
    """A peer's row (its first group's role, layers, device and readiness), then one short row per further
    group it serves (a peer with several GPUs may serve several groups)."""
    gpu = f"{m.gpu}x{m.num_gpus}{'*' if m.is_emulated else ''}" if m.is_serving else "-"
    mark = " (coordinator)" if m.peer_id == coordinator_id else ""
    groups = [(g.role, str(g.group_id), _layers(g), g.device, "yes" if g.is_ready else "no") for g in m.groups]
    if not groups:  # a reply from a peer that predates `groups`, or a peer in no group
        groups = [(m.role, str(m.group_id) if m.group_id >= 0 else "-", "-", "-", "yes" if m.is_ready else "no")]
    first = (m.host, gpu, *groups[0], str(m.num_queued), str(m.num_running), str(m.kv_tokens_free),
             f"{m.tokens_per_s:.1f}", f"{m.last_heard_s:.1f}s", m.peer_id[-10:] + mark)
    return [first] + [("", "", *group, "", "", "", "", "", "") for group in groups[1:]]


def _layers(g) -> str:
    where = f" ({g.stage + 1}/{g.num_stages})" if g.num_stages > 1 else ""
    return f"{g.first_layer}-{g.last_layer}{where}"
