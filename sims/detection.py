"""When the swarm notices a failure: the daemon's membership state machine fed with simulated heartbeats.

How it works: `swarm.proto.membership.Membership` (the code the daemon runs) keeps the coordinator's view.
Every host's peer heartbeats every HEARTBEAT_S, each at its own phase (drawn from the run's seed), and the
coordinator ticks the state machine every TICK_S, as `swarm.net.liveness` does. At the failure instant the
failed hosts stop: a *silent* failure (power loss, partition, frozen process) is declared dead once nothing
was heard for `dead_after_s`; a *killed* peer (its connections reset) leaves `disconnect_grace_s` after the
disconnect. The re-plan starts when `PeerLeft` comes out. The coordinator is assumed to survive (a lost
coordinator adds an election, `swarm.proto.election`, not modelled here). The data path needs no detector:
requests and KV sent to a stopped replica fail at once in the simulator (streams reset).
"""

from __future__ import annotations

import numpy as np

from sims.errors import SimError
from swarm.proto.membership import Membership, MembershipConfig, PeerLeft

HEARTBEAT_S = 0.5  # swarm.net.liveness.LivenessConfig.heartbeat_interval_s
TICK_S = 0.1  # swarm.net.liveness.LivenessConfig.tick_s
HOW = ("silent", "killed")


def detected_at_s(
    host_ids,
    failed_ids,
    fail_s: float,
    *,
    how: str = "silent",
    seed: int = 0,
    config: MembershipConfig | None = None,
) -> float:
    """Simulated time at which the coordinator's membership has dropped every host in `failed_ids`."""
    if how not in HOW:
        raise SimError(f"failure kind must be one of {HOW}, got {how!r}")
    hosts, failed = sorted(host_ids), set(failed_ids)
    if not failed or not failed <= set(hosts):
        raise SimError(f"failed hosts {sorted(failed)} must be a non-empty subset of the cluster's hosts")
    membership = Membership("coordinator", config=config or MembershipConfig())
    cfg = membership.config
    phase = dict(zip(hosts, np.random.default_rng(seed).random(len(hosts)) * HEARTBEAT_S, strict=True))
    start_s = max(fail_s - cfg.dead_after_s - 2 * HEARTBEAT_S, 0.0)
    for host in hosts:
        membership.profile_received(host, None, start_s)
    is_disconnected = how != "killed"  # a killed peer's connections reset at the failure instant
    left: set[str] = set()
    now_s, next_beat = start_s, {h: start_s + phase[h] for h in hosts}
    limit_s = fail_s + 10 * cfg.dead_after_s + 10.0
    while now_s <= limit_s:
        for host in hosts:
            while next_beat[host] <= now_s:
                if host not in failed or next_beat[host] < fail_s:
                    membership.heartbeat(host, next_beat[host])
                next_beat[host] += HEARTBEAT_S
        if not is_disconnected and now_s >= fail_s:
            is_disconnected = True
            for host in sorted(failed):
                membership.disconnected(host, fail_s)
        left |= {a.peer_id for a in membership.tick(now_s) if isinstance(a, PeerLeft)}
        if failed <= left:
            return now_s
        now_s = round(now_s + TICK_S, 9)
    raise SimError(f"membership never dropped {sorted(failed - left)} (config {cfg})")
