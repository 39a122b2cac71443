"""Heartbeat arrival times of a real swarm on this machine: the input for judging failure-detector timeouts.

How it works. This process runs a libp2p host with gossip and liveness (`swarm.net.liveness`, 0.5 s
heartbeats) and starts `--peers` - 1 child processes that do the same and dial it, all on 127.0.0.1.
Every heartbeat the observer's membership receives is recorded with its arrival time (`trio.current_time`,
the daemon's clock) for `--seconds`. The arrivals go to a CSV (`peer,arrival_s`, one row per heartbeat)
that `sims.detection.false_leaves` replays through `swarm.proto.membership` to count how often a given
detector configuration would have declared a live peer dead, and how long after a failure it would
have noticed. The gaps are reported as printed quantiles. On a busy machine the gaps include event-loop
stalls of every process involved, which is what a detector on a loaded box must tolerate.

    python -m bench.bench_heartbeats [--peers 8] [--seconds 120] [--out sims/data/heartbeats/NAME.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trio

from swarm.net.host import HostConfig, open_host
from swarm.net.liveness import run_liveness
from swarm.net.pubsub import open_gossip
from swarm.proto.membership import Membership, PeerJoined
from swarm.wire.hardware import HardwareProfile

JOIN_TIMEOUT_S = 60.0


def _profile(peer_id: str) -> HardwareProfile:
    return HardwareProfile(peer_id=peer_id, host="bench", gpu="A40", num_gpus=1, tflops=150.0, memory_gb=48.0,
                           memory_bandwidth_gbs=696.0, is_emulated=True)


async def _child(parent_addr: str, identity_path: str) -> None:
    config = HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), identity_path=identity_path)
    async with open_host(config) as host, open_gossip(host) as gossip:
        await host.dial(parent_addr)
        await host.nursery.start(run_liveness, host, gossip, _profile(host.peer_id))
        await trio.sleep_forever()


async def _observe(num_peers: int, seconds: float, workdir: str) -> dict[str, list[float]]:
    arrivals: dict[str, list[float]] = {}
    original = Membership.heartbeat

    def recording(self, peer_id: str, now: float) -> list:
        if peer_id in self.peers:
            arrivals.setdefault(peer_id, []).append(now)
        return original(self, peer_id, now)

    Membership.heartbeat = recording  # this process only: the observer's view records what it hears
    config = HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), identity_path=Path(workdir) / "observer.key")
    children: list[subprocess.Popen] = []
    try:
        async with open_host(config) as host, open_gossip(host) as gossip:
            live = await host.nursery.start(run_liveness, host, gossip, _profile(host.peer_id))
            for i in range(num_peers - 1):
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_heartbeats", "--child", host.addrs[0],
                     str(Path(workdir) / f"child-{i}.key")], stdout=subprocess.DEVNULL))
            joined: set[str] = set()
            with trio.fail_after(JOIN_TIMEOUT_S):
                while len(joined) < num_peers - 1:
                    event = await live.events.receive()
                    if isinstance(event, PeerJoined):
                        joined.add(event.peer_id)
            arrivals.clear()
            print(f"{len(joined)} peers joined; recording heartbeats for {seconds:g} s", flush=True)
            with trio.move_on_after(seconds):
                async for _ in live.events:  # drain: a full queue would drop actions
                    pass
            host.nursery.cancel_scope.cancel()
    finally:
        Membership.heartbeat = original
        for child in children:
            child.kill()
            child.wait(timeout=10)
    return arrivals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("PARENT_ADDR", "IDENTITY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        trio.run(_child, *args.child)
        return
    if args.peers < 2 or args.seconds <= 0:
        parser.error("--peers must be at least 2 and --seconds positive")
    with tempfile.TemporaryDirectory() as workdir:
        arrivals = trio.run(_observe, args.peers, args.seconds, workdir)
    gaps = np.concatenate([np.diff(times) for times in arrivals.values() if len(times) > 1])
    quantiles = np.quantile(gaps, [0.5, 0.9, 0.99, 0.999])
    print(f"load average {os.getloadavg()[0]:.1f}; {len(gaps)} gaps from {len(arrivals)} peers: "
          f"median {quantiles[0]:.3f} s, p90 {quantiles[1]:.3f}, p99 {quantiles[2]:.3f}, "
          f"p99.9 {quantiles[3]:.3f}, max {gaps.max():.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        names = {peer: f"peer-{i}" for i, peer in enumerate(sorted(arrivals))}
        start = min(times[0] for times in arrivals.values())
        with args.out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["peer", "arrival_s"])
            for peer, times in sorted(arrivals.items()):
                writer.writerows([names[peer], f"{t - start:.4f}"] for t in times)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
