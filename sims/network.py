"""Links between hosts with bandwidth and latency, shared fairly by the transfers crossing them.

How it works: every transfer crosses one directed host-to-host link (the bottleneck pair of its two
groups, see `kv_route`), so max-min fair sharing reduces to processor sharing on each link: n active
transfers each get gbps / n. On every arrival or departure the link advances all its transfers by the
bytes they moved since the last change and re-schedules the next completion. A transfer first waits
the link's latency, then competes for bandwidth. Cost per change: O(transfers on that link).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from sims.core import Simulator
from swarm.hardware import Cluster
from swarm.plan.cost import INTRA_HOST_LATENCY_S, efficiency_of


class Link:
    """One direction of a host pair: `gbps` (Gbit/s, after the network efficiency) and a latency."""

    def __init__(self, sim: Simulator, name: str, gbps: float, latency_s: float) -> None:
        self.sim, self.name, self.latency_s = sim, name, latency_s
        self.bytes_per_s = gbps * 1e9 / 8
        self.active: dict[int, list] = {}  # id -> [remaining bytes, on_done, args]
        self.bytes_moved = 0.0
        self._updated_s = 0.0
        self._next = None

    def start(self, transfer_id: int, num_bytes: float, on_done: Callable, args: tuple) -> None:
        self._advance()
        self.active[transfer_id] = [float(num_bytes), on_done, args]
        self._reschedule()

    def abort(self, transfer_id: int) -> bool:
        """Drop a transfer (its sender or receiver failed); True if it was still running."""
        if transfer_id not in self.active:
            return False
        self._advance()
        del self.active[transfer_id]
        self._reschedule()
        return True

    def share_bytes_per_s(self) -> float:
        return self.bytes_per_s / max(1, len(self.active))

    def _advance(self) -> None:
        now = self.sim.now_s
        if self.active and now > self._updated_s:
            moved = (now - self._updated_s) * self.share_bytes_per_s()
            for entry in self.active.values():
                entry[0] -= moved
                self.bytes_moved += moved
        self._updated_s = now

    def _reschedule(self) -> None:
        Simulator.cancel(self._next)
        self._next = None
        if self.active:
            first = min(self.active, key=lambda t: (self.active[t][0], t))
            delay_s = max(0.0, self.active[first][0]) / self.share_bytes_per_s()
            self._next = self.sim.after(delay_s, self._finish, first)

    def _finish(self, transfer_id: int) -> None:
        self._next = None
        self._advance()
        _, on_done, args = self.active.pop(transfer_id)
        self._reschedule()
        on_done(*args)


class Network:
    """The links of a cluster, created on first use; transfers are identified by an integer id."""

    def __init__(self, sim: Simulator, cluster: Cluster, efficiency=None) -> None:
        self.sim, self.cluster, self.efficiency = sim, cluster, efficiency
        self.links: dict[tuple[str, str], Link] = {}
        self._ids = itertools.count()
        self._where: dict[int, Link] = {}
        self._waiting: dict[int, list] = {}

    def link(self, src_host: str, dst_host: str) -> Link:
        key = (src_host, dst_host)
        if key not in self.links:
            network = efficiency_of(self.efficiency, self.cluster.host(src_host).gpu.name).network
            gbps = self.cluster.host_gbps(src_host, dst_host) * network
            latency_s = INTRA_HOST_LATENCY_S if src_host == dst_host else self.cluster.latency_s
            self.links[key] = Link(self.sim, f"{src_host}->{dst_host}", gbps, latency_s)
        return self.links[key]

    def send(self, src_host: str, dst_host: str, num_bytes: float, on_done: Callable, *args) -> int:
        """Start a transfer; `on_done(*args)` runs when its last byte arrives. Returns its id."""
        link = self.link(src_host, dst_host)
        transfer_id = next(self._ids)
        self._where[transfer_id] = link
        self._waiting[transfer_id] = [
            self.sim.after(link.latency_s, self._start, transfer_id, num_bytes, on_done, args)
        ]
        return transfer_id

    def abort(self, transfer_id: int) -> None:
        link = self._where.pop(transfer_id, None)
        waiting = self._waiting.pop(transfer_id, None)
        if waiting is not None:
            Simulator.cancel(waiting[0])
        elif link is not None:
            link.abort(transfer_id)

    def transfer_time_s(self, src_host: str, dst_host: str, num_bytes: float) -> float:
        """Time an uncontended transfer takes (latency plus bytes at full link speed)."""
        link = self.link(src_host, dst_host)
        return link.latency_s + num_bytes / link.bytes_per_s

    def _start(self, transfer_id: int, num_bytes: float, on_done: Callable, args: tuple) -> None:
        self._waiting.pop(transfer_id, None)
        self._where[transfer_id].start(transfer_id, num_bytes, self._done, (transfer_id, on_done, args))

    def _done(self, transfer_id: int, on_done: Callable, args: tuple) -> None:
        self._where.pop(transfer_id, None)
        on_done(*args)


def kv_route(cluster: Cluster, prefill_stages, decode_stages, num_layers: int) -> tuple[str, str, float]:
    """(src host, dst host, share of the KV bytes) of the slowest host pair between two groups.

    Each layer's KV goes from the prefill stage holding it to the decode stage holding it; all host
    pairs move their share in parallel, so the pair with the largest share / bandwidth decides.
    """
    share: dict[tuple[str, str], float] = {}
    for ps in prefill_stages:
        for ds in decode_stages:
            overlap = min(ps.layers[1], ds.layers[1]) - max(ps.layers[0], ds.layers[0])
            if overlap > 0:
                key = (cluster.host_of(ps.gpus[0]).name, cluster.host_of(ds.gpus[0]).name)
                share[key] = share.get(key, 0.0) + overlap / num_layers
    (src, dst), frac = max(share.items(), key=lambda kv: (kv[1] / cluster.host_gbps(*kv[0]), kv[0]))
    return src, dst, frac
