"""Spot-instance traces turned into cluster events: instances added, and preemptions with a grace period.

Sources (copied with their READMEs under sims/data/): SpotServe's AWS g4dn trace (times in ms, events
`add`/`remove` per node; SpotServe assumes a 30 s grace period) and SkyPilot's 16-node AWS
availability traces (instances alive per 300 s tick: a drop is a preemption of the newest instances,
a rise an acquisition). Each spot instance becomes a host of `gpus_per_node` GPUs in a `Cluster`.
Prices: AWS on-demand g4dn.12xlarge (4 x T4) $3.912/h in us-east-1; its spot price is taken as 30%
of that ($1.17/h, the typical 2023-24 discount; an assumption, the traces carry no prices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sims.errors import TraceError
from swarm.hardware import Cluster, gpu_spec
from swarm.hardware.cluster import Host

DATA = Path(__file__).parent / "data"
GRACE_S = 30.0
ON_DEMAND_PER_NODE_HOUR = 3.912
SPOT_PER_NODE_HOUR = 0.3 * ON_DEMAND_PER_NODE_HOUR
SEGMENTS = {"As": "trace_0304_real", "Bs": "trace_0506_real"}
SKYPILOT_ZONES = ("us-east-2b", "us-west-2a", "us-west-2c")


@dataclass(frozen=True)
class SpotEvent:
    time_s: float
    op: str  # "add" or "remove"
    nodes: tuple[str, ...]


def spotserve_segment(name: str) -> list[SpotEvent]:
    """A SpotServe replay segment (`As`, `Bs`, or a file stem under data/spotserve/trace_seg)."""
    path = DATA / "spotserve" / "trace_seg" / f"{SEGMENTS.get(name, name)}.txt"
    if not path.is_file():
        raise TraceError(f"no SpotServe segment {name!r}: use one of {sorted(SEGMENTS)}")
    events = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            time_ms, op, body = json.loads(line)
            nodes = tuple(body["nodes"])
        except (ValueError, KeyError, TypeError):
            raise TraceError(f'{path}, line {line_no}: expected [time_ms, op, {{"nodes": [...]}}]') from None
        if op in ("add", "remove"):
            events.append(SpotEvent(time_ms / 1000.0, op, nodes))
    return events


def spotserve_full() -> list[SpotEvent]:
    """The whole g4dn trace (10.8 h), re-based to start at 0."""
    path = DATA / "spotserve" / "g4dn.csv"
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    try:
        start_ms = float(rows[0][0])
        return [SpotEvent((float(t) - start_ms) / 1000.0, op, (node,)) for t, op, node in rows]
    except (ValueError, IndexError):
        raise TraceError(f"{path}: rows must be time_ms,op,node") from None


def skypilot_availability(zone: str = "us-east-2b", *, max_ticks: int | None = None) -> list[SpotEvent]:
    """Events from a SkyPilot 16-node availability trace: count changes become adds/removes."""
    path = DATA / "skypilot" / "availability" / "16-node" / "aws-08-27-2023" / f"{zone}_v100_1.json"
    if not path.is_file():
        raise TraceError(f"no SkyPilot trace for zone {zone!r}: use one of {SKYPILOT_ZONES}")
    doc = json.loads(path.read_text())
    gap_s, counts = float(doc["metadata"]["gap_seconds"]), doc["data"][:max_ticks]
    events, alive, next_id = [], [], 0
    for tick, count in enumerate(counts):
        if count > len(alive):
            new = [f"node-{next_id + i}" for i in range(count - len(alive))]
            next_id += len(new)
            alive += new
            events.append(SpotEvent(tick * gap_s, "add", tuple(new)))
        elif count < len(alive):
            gone, alive = alive[count:], alive[:count]
            events.append(SpotEvent(tick * gap_s, "remove", tuple(gone)))
    return events


def all_nodes(events: list[SpotEvent]) -> list[str]:
    seen: dict[str, None] = {}
    for e in events:
        seen.update(dict.fromkeys(e.nodes))
    return list(seen)


def spot_cluster(
    nodes: list[str], gpu: str = "T4", gpus_per_node: int = 4, inter_gbps: float = 50.0, name: str = "spot"
) -> Cluster:
    """One host per spot instance (g4dn.12xlarge: 4 x T4, 50 Gbit/s networking)."""
    spec = gpu_spec(gpu)
    price = SPOT_PER_NODE_HOUR / gpus_per_node
    hosts = tuple(
        Host(
            name=n,
            gpu=spec,
            gpu_indices=tuple(range(gpus_per_node)),
            price_per_gpu_hour=price,
            intra_gbps=64.0,
        )
        for n in nodes
    )
    return Cluster(hosts=hosts, default_gbps=inter_gbps, name=name)


def alive_over_time(
    events: list[SpotEvent], initial: list[str] | None = None
) -> list[tuple[float, list[str]]]:
    """(time, nodes alive after the event) for each event, in order."""
    alive = list(initial or [])
    out = []
    for e in sorted(events, key=lambda e: e.time_s):
        if e.op == "add":
            alive += [n for n in e.nodes if n not in alive]
        else:
            alive = [n for n in alive if n not in e.nodes]
        out.append((e.time_s, list(alive)))
    return out


def node_hours(events: list[SpotEvent], end_s: float) -> float:
    """Instance-hours paid for over [0, end_s) (an instance is paid from add to remove)."""
    timeline = alive_over_time([e for e in events if e.time_s < end_s])
    total, last_t, last_n = 0.0, 0.0, 0
    for t, alive in timeline:
        total += (t - last_t) * last_n
        last_t, last_n = t, len(alive)
    return (total + (end_s - last_t) * last_n) / 3600.0
