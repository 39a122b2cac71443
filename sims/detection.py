"""When the swarm notices a failure: the daemon's membership state machine fed with simulated heartbeats.

How it works: `swarm.proto.membership.Membership` (the code the daemon runs) keeps the coordinator's view.
Every host's peer heartbeats every HEARTBEAT_S, each at its own phase (drawn from the run's seed), and the
coordinator ticks the state machine every TICK_S, as `swarm.net.liveness` does. At the failure instant the
failed hosts stop: a *silent* failure (power loss, partition, frozen process) is declared dead once nothing
was heard for `dead_after_s`; a *killed* peer (its connections reset) leaves `disconnect_grace_s` after the
disconnect. The re-plan starts when `PeerLeft` comes out. The coordinator is assumed to survive (a lost
coordinator adds an election, `swarm.proto.election`, not modelled here). The data path needs no detector:
requests and KV sent to a stopped replica fail at once in the simulator (streams reset).
The membership adapts each peer's timeout to the gaps between its recent heartbeats, so the hosts have
beaten for a full `gap_window` before the failure (a swarm that has been running for a while).

`replay` feeds heartbeat arrival times recorded on a real swarm (`bench/bench_heartbeats.py`, stored under
data/heartbeats/) through the same state machine: how often a configuration declares a live peer dead
(a false departure costs two re-plans: one when it leaves, one when it rejoins), and how long it would take
to notice each peer failing silently at instants spread over the recording.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sims.errors import SimError
from swarm.proto.membership import Membership, MembershipConfig, PeerLeft

HEARTBEAT_S = 0.5  # swarm.net.liveness.LivenessConfig.heartbeat_interval_s
TICK_S = 0.1  # swarm.net.liveness.LivenessConfig.tick_s
HOW = ("silent", "killed")
HEARTBEATS = Path(__file__).parent / "data" / "heartbeats"


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
    start_s = max(fail_s - (cfg.gap_window + 2) * HEARTBEAT_S - cfg.dead_after_s, 0.0)
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


@dataclass(frozen=True)
class Replay:
    """A detector configuration against recorded heartbeats: false departures of live peers, and the
    times to notice silent failures at `num_failures` instants (seconds from the failure)."""

    peer_hours: float
    false_departures: int
    detection_s: tuple[float, ...]
    closest_call: float = 0.0  # the largest gap over the timeout in force when it began (1+: a departure)

    @property
    def false_departures_per_peer_hour(self) -> float:
        return self.false_departures / self.peer_hours


def load_arrivals(name: str) -> dict[str, np.ndarray]:
    """Recorded heartbeat arrival times per peer (data/heartbeats/NAME.csv: `peer,arrival_s`)."""
    path = HEARTBEATS / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in HEARTBEATS.glob("*.csv"))
        raise SimError(f"no recorded heartbeats {name!r} in {HEARTBEATS}: record some with "
                       f"`python -m bench.bench_heartbeats --out {path}` or use one of {known}")
    arrivals: dict[str, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            arrivals.setdefault(row["peer"], []).append(float(row["arrival_s"]))
    return {peer: np.sort(np.array(times)) for peer, times in arrivals.items()}


def replay(arrivals: dict[str, np.ndarray], config: MembershipConfig | None = None, *,
           num_failures: int = 50) -> Replay:
    """Run the coordinator's membership over recorded arrivals (ticked every TICK_S, as the daemon does)."""
    cfg = config or MembershipConfig()
    end_s = max(float(t[-1]) for t in arrivals.values())
    false_departures = 0
    membership = Membership("coordinator", config=cfg)
    for peer in arrivals:
        membership.profile_received(peer, None, 0.0)
    for now_s, peer in _ticked(arrivals, end_s):
        actions = membership.tick(now_s) if peer is None else membership.heartbeat(peer, now_s)
        false_departures += sum(isinstance(a, PeerLeft) for a in actions)
    detection = []
    warm_s = (cfg.gap_window + 1) * HEARTBEAT_S
    for times in arrivals.values():  # each peer fails silently at instants spread over the recording
        for fail_s in np.linspace(warm_s, end_s - cfg.dead_after_s, num_failures):
            detection.append(_time_to_notice(times[times < fail_s], float(fail_s), cfg))
    peer_hours = len(arrivals) * end_s / 3600.0
    return Replay(peer_hours, false_departures, tuple(detection), _closest_call(arrivals, cfg))


def _closest_call(arrivals: dict[str, np.ndarray], cfg: MembershipConfig) -> float:
    worst = 0.0
    for times in arrivals.values():
        gaps = np.diff(times)
        for i, gap in enumerate(gaps):
            recent = gaps[max(0, i - cfg.gap_window):i]
            worst = max(worst, float(gap) / cfg.dead_after_for(recent))
    return worst


def _ticked(arrivals: dict[str, np.ndarray], end_s: float):
    """(time, peer) for every heartbeat and (time, None) for every tick, in time order."""
    events = [(float(t), peer) for peer, times in arrivals.items() for t in times]
    events += [(float(t), None) for t in np.arange(0.0, end_s, TICK_S)]
    return sorted(events, key=lambda e: (e[0], e[1] is None, e[1] or ""))


def _time_to_notice(heard: np.ndarray, fail_s: float, cfg: MembershipConfig) -> float:
    membership = Membership("coordinator", config=cfg)
    membership.profile_received("peer", None, 0.0)
    for t in heard:
        membership.heartbeat("peer", float(t))
    now_s = np.ceil(fail_s / TICK_S) * TICK_S
    while not any(isinstance(a, PeerLeft) for a in membership.tick(float(now_s))):
        now_s += TICK_S
    return float(now_s - fail_s)


def main() -> None:
    """`python -m sims.detection [RECORDING]`: the default detector against fixed timeouts on a recording."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("recording", nargs="?", default="loaded-8-peers")
    parser.add_argument("--failures", type=int, default=40, help="failure instants per peer")
    args = parser.parse_args()
    arrivals = load_arrivals(args.recording)
    gaps = np.concatenate([np.diff(t) for t in arrivals.values()])
    print(f"{args.recording}: {len(arrivals)} peers, {len(gaps)} gaps, longest {gaps.max():.3f} s, "
          f"p99 {np.quantile(gaps, 0.99):.3f} s")
    configs = {
        "fixed 2.5 s (the previous default)": MembershipConfig(gap_window=0),
        "fixed 1.5 s": MembershipConfig(suspect_after_s=0.9, dead_after_s=1.5, gap_window=0),
        "adaptive (default)": MembershipConfig(),
    }
    for name, config in configs.items():
        result = replay(arrivals, config, num_failures=args.failures)
        noticed = np.array(result.detection_s)
        print(f"{name:36s} false departures {result.false_departures} in {result.peer_hours:.2f} peer-hours; "
              f"noticed after mean {noticed.mean():.2f} s, p90 {np.quantile(noticed, 0.9):.2f} s, "
              f"max {noticed.max():.2f} s; longest gap / timeout {result.closest_call:.2f}")


if __name__ == "__main__":
    main()
