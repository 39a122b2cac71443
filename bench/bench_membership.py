"""The daemon's own membership with N real peers: convergence, election + plan, and re-election after SIGKILL.

How it works. Each run starts a bootstrap node and N `swarm join` processes on 127.0.0.1 (`LocalSwarm`),
each with a declared GPU profile (A40, RTX3090Ti, L4, A6000 in turn) and the engine tests' tiny
random-weight Llama (written once to a temporary folder), so N processes stay light. Time zero is the
moment every process listens (its address file is written). From then on this process polls every
peer's `/swarm/status/1.0.0` (what `swarm status --json` reads) every POLL_S over one libp2p host and
notes the first poll at which:
- converged: every peer lists all N serving peers;
- coordinator agreed: every peer names the same coordinator;
- plan applied: every peer follows the same plan epoch;
then it SIGKILLs the coordinator's process (time zero again) and notes when:
- re-elected: every survivor names the same, other coordinator, and each survivor's log says that
  coordinator won a higher term than the killed one had (the term is in the daemons' logs, not in their
  status replies: the one thing read from logs);
- left: no survivor lists the killed peer among its members;
- replanned: every survivor follows one plan without the killed peer's host.
The survivors' logs also say why the killed peer left ("disconnected": the libp2p connection closed,
"silent": the heartbeat timeout), counted over the survivors.
Figures are the median and min-max over --runs runs, with the load average before and after. A time
is only as fine as one poll round (POLL_S plus the answers, printed as `poll_round_ms`). Every wait has a
deadline; every process is stopped at the end of its run, also on error (`LocalSwarm`).

Digest bytes (`--digest-bytes`): no processes; N real `Node`s in memory, each with an Ed25519 identity, a
signed declared profile, a 127.0.0.1 address, 4 measured links, every other peer as a member and a plan of N
one-GPU groups (the shape of the networking.md assessment). The wire size of a digest (`encode`, what the
stream carries less its length prefix) in full, as a peer that lacks the plan and the peers gets it, and as
trimmed for a settled peer (`membership.trimmed_for`), with the bytes per exchange (push + reply) and per
peer per second (2 (N-1) exchanges a gossip interval).

    python -m bench.bench_membership [--peers 8] [--runs 5 | --quick] [--json]
    python -m bench.bench_membership --digest-bytes 8 64 [--json]
    python -m bench.bench_swarm --membership 8 [--runs 5] [--json]      (the same)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROFILES = ("A40", "RTX3090Ti", "L4", "A6000")
POLL_S = 0.1
STATUS_TIMEOUT_S = 3.0
FORMING_TIMEOUT_S = 180.0  # processes importing torch on a shared machine start slowly
FAILOVER_TIMEOUT_S = 60.0
STAGES = ("converged_s", "coordinator_agreed_s", "plan_applied_s")
FAILOVER_STAGES = ("reelected_s", "dead_peer_left_s", "replanned_s")
TERM_LINE = re.compile(r"coordinator for term (\d+): (\S+( peer)?)")


def write_tiny_model(folder: Path) -> Path:
    """The engine tests' tiny random-weight Llama (their helper, loaded by path: tests/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "engine" / "engine_helpers.py"
    spec = importlib.util.spec_from_file_location("engine_helpers_for_bench", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.write_tiny_model(folder)


async def poll_statuses(host, peer_ids: dict[str, str]) -> dict:
    """name -> StatusReply of every peer that answered within STATUS_TIMEOUT_S (the others are left out)."""
    import trio

    from peers.status import STATUS_PROTOCOL
    from swarm.net.rpc import read_message, write_message
    from swarm.wire.requests import StatusReply, StatusRequest

    replies = {}

    async def ask(name: str, peer_id: str) -> None:
        try:
            with trio.fail_after(STATUS_TIMEOUT_S):
                stream = await host.open_stream(peer_id, STATUS_PROTOCOL, timeout_s=STATUS_TIMEOUT_S)
                try:
                    await write_message(stream, StatusRequest())
                    replies[name] = await read_message(stream, expect=StatusReply)
                finally:
                    await stream.close()
        except Exception:  # a peer still starting (or just killed) answers nothing: it is polled again
            return

    async with trio.open_nursery() as nursery:
        for name, peer_id in peer_ids.items():
            nursery.start_soon(ask, name, peer_id)
    return replies


def serving_ids(reply) -> set[str]:
    return {m.peer_id for m in reply.members if m.is_serving}


def plan_hosts(reply) -> set[str]:
    """Host names of the GPUs in the reply's plan ("host/i")."""
    if not reply.plan_json:
        return set()
    plan = json.loads(reply.plan_json)
    return {gpu.split("/")[0] for group in plan["groups"] for stage in group["stages"] for gpu in stage["gpus"]}


def last_term(log: str, coordinator_id: str | None = None) -> int:
    """The highest term a daemon's log says a coordinator (`coordinator_id`, or any) was elected for."""
    terms = [int(m.group(1)) for m in TERM_LINE.finditer(log)
             if coordinator_id is None or m.group(2) in (coordinator_id, "this peer")]
    return max(terms, default=0)


async def watch(host, swarm, peer_ids: dict[str, str], checks: dict, timeout_s: float) -> tuple[dict, list]:
    """Poll until every check (name -> fn(replies) -> bool) has held once; (name -> seconds, round times)."""
    import trio

    start = time.monotonic()
    found: dict[str, float] = {}
    rounds = []
    while len(found) < len(checks):
        if time.monotonic() - start > timeout_s:
            missing = sorted(set(checks) - set(found))
            raise TimeoutError(f"{missing} not reached within {timeout_s:g} s; peer logs are in {swarm.workdir}")
        swarm.check_alive()
        round_start = time.monotonic()
        replies = await poll_statuses(host, peer_ids)
        now = time.monotonic()
        rounds.append(now - round_start)
        if len(replies) == len(peer_ids):
            for name, check in checks.items():
                if name not in found and check(replies):
                    found[name] = now - start
        await trio.sleep(POLL_S)
    return found, rounds


async def one_run(model: Path, num_peers: int) -> dict:
    import signal

    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from swarm.client.localswarm import LocalSwarm, PeerSpec
    from swarm.net.host import HostConfig, open_host

    specs = [PeerSpec(f"p{i}-{PROFILES[i % len(PROFILES)].lower()}", PROFILES[i % len(PROFILES)])
             for i in range(num_peers)]
    swarm = LocalSwarm(specs, model=str(model), kv_bits=16)
    await trio.to_thread.run_sync(swarm.__enter__)
    error = None
    try:
        config = HostConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), dial_timeout_s=STATUS_TIMEOUT_S,
                            stream_timeout_s=STATUS_TIMEOUT_S)
        async with open_host(config, key_pair=create_new_key_pair()) as host:
            peer_ids = {}
            for name, addrs in swarm.addrs.items():
                peer_ids[name] = await host.dial(addrs[0], timeout_s=STATUS_TIMEOUT_S)
            serving = {peer_ids[s.name] for s in specs}

            def same(replies, key) -> bool:
                values = {key(r) for r in replies.values()}
                return len(values) == 1 and all(values)

            forming, rounds = await watch(host, swarm, peer_ids, {
                "converged_s": lambda rs: all(serving_ids(r) == serving for r in rs.values()),
                "coordinator_agreed_s": lambda rs: same(rs, lambda r: r.coordinator_id),
                "plan_applied_s": lambda rs: same(rs, lambda r: r.plan_json and r.epoch + 1),
            }, FORMING_TIMEOUT_S)
            replies = await poll_statuses(host, peer_ids)
            coordinator_id = replies["bootstrap"].coordinator_id
            victim = next(name for name, p in peer_ids.items() if p == coordinator_id)
            old_term = last_term(swarm.log("bootstrap"), coordinator_id)
            await trio.to_thread.run_sync(swarm.kill, victim, signal.SIGKILL)
            del peer_ids[victim]
            survivors = set(peer_ids)

            def reelected(rs) -> bool:
                return same(rs, lambda r: r.coordinator_id if r.coordinator_id != coordinator_id else "") and all(
                    last_term(swarm.log(name), rs[name].coordinator_id) > old_term for name in survivors)

            failover, more_rounds = await watch(host, swarm, peer_ids, {
                "reelected_s": reelected,
                "dead_peer_left_s": lambda rs: all(coordinator_id not in serving_ids(r) for r in rs.values()),
                "replanned_s": lambda rs: same(rs, lambda r: r.plan_json and r.epoch + 1)
                and all(victim not in plan_hosts(r) for r in rs.values()),
            }, FAILOVER_TIMEOUT_S)
            left = [re.findall(rf"peer {coordinator_id} left the swarm \((\w+)", swarm.log(name)) for name in survivors]
            reasons = collections.Counter(found[-1] if found else "not logged" for found in left)
        return {**forming, **failover, "old_term": old_term, "left_because": dict(reasons),
                "poll_round_ms": round(1e3 * statistics.median(rounds + more_rounds), 1)}
    except BaseException as e:
        error = e
        raise
    finally:  # stops every process; after an error the peer logs are kept (LocalSwarm prints nothing: say where)
        await trio.to_thread.run_sync(swarm.__exit__, type(error), error, None)
        if error is not None:
            print(f"run failed; peer logs kept in {swarm.workdir}", file=sys.stderr)


def digest_sizes(num_peers: int, gossip_interval_s: float = 0.5) -> dict:
    """Wire bytes of one peer's digest in full and trimmed for a settled receiver (see the module doc)."""
    from types import SimpleNamespace

    import msgpack
    from libp2p.crypto.ed25519 import create_new_key_pair

    from peers.config import PeerConfig
    from peers.daemon import Node
    from peers.gossip import take_digest
    from peers.membership import PlanHolder
    from swarm.hardware import declared_profile
    from swarm.net.identity import peer_id_of
    from swarm.net.signed import sign_record
    from swarm.wire.codec import WIRE_VERSION, encode, to_primitive
    from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

    nodes = []
    for i in range(num_peers):
        key_pair = create_new_key_pair()
        peer_id, name, gpu = peer_id_of(key_pair), f"peer-{i}", PROFILES[i % len(PROFILES)]
        node = Node(PeerConfig(profile=gpu, name=name), SimpleNamespace(
            peer_id=peer_id, addrs=[f"/ip4/127.0.0.1/tcp/{40000 + i}/p2p/{peer_id}"]), None)
        node.profile = declared_profile(gpu, peer_id=peer_id, host=name)
        node.signed_profile = sign_record(key_pair, node.profile, 1)
        nodes.append(node)
    for node in nodes:
        node.links_gbps = dict([(other.peer_id, 9.875) for other in nodes if other is not node][:4])
        for other in nodes:
            if other is not node:
                take_digest(node, other.digest(), other.profile)
    share = 1.0 / num_peers
    groups = tuple(Group(i, "both", 1, 1, (Stage((f"peer-{i}/0",), (0, 30)),)) for i in range(num_peers))
    plan = Plan(PLAN_FORMAT, 1, "SmolLM2-135M", groups, Routing({i: share for i in range(num_peers)},
                                                                   tuple((i, i, share) for i in range(num_peers))))
    coordinator = nodes[0].peer_id
    for node in nodes:
        node.membership.election.heartbeat_received(1, coordinator, 0.0)
        node.holder = PlanHolder(plan, {f"peer-{i}": n.peer_id for i, n in enumerate(nodes)}, 1, coordinator)
    sender, receiver = nodes[1], nodes[2]
    full = sender.digest()
    trimmed = sender.digest(receiver=receiver.digest())
    if trimmed.plan is not None or trimmed.known:
        raise RuntimeError("a settled receiver still got the plan or the known addresses: the fingerprints differ")
    full_bytes, trimmed_bytes = len(encode(full)), len(encode(trimmed))
    # before the fingerprints: the same digest without its last two fields, as an older peer sends it
    before_bytes = len(msgpack.packb([WIRE_VERSION, 89, to_primitive(full)[:-2]], use_bin_type=True))
    profile_bytes = full_bytes - len(encode(dataclasses.replace(full, signed_profile=None)))
    exchanges_per_s = 2 * (num_peers - 1) / gossip_interval_s
    return {"num_peers": num_peers, "digest_before_bytes": before_bytes, "digest_full_bytes": full_bytes, "digest_trimmed_bytes": trimmed_bytes,
            "plan_and_hosts_bytes": full_bytes - len(encode(dataclasses.replace(full, plan=None, plan_hosts={}))),
            "known_bytes": full_bytes - len(encode(dataclasses.replace(full, known=()))),
            "signed_profile_bytes": profile_bytes,
            "exchange_full_bytes": 2 * full_bytes, "exchange_trimmed_bytes": 2 * trimmed_bytes,
            "per_peer_before_kb_s": round(exchanges_per_s * before_bytes / 1e3, 1),
            "per_peer_trimmed_kb_s": round(exchanges_per_s * trimmed_bytes / 1e3, 1),
            "ratio_to_before": round(before_bytes / trimmed_bytes, 1)}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in (*STAGES, *FAILOVER_STAGES, "poll_round_ms"):
        values = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                    "max": round(max(values), 2)}
    return out


def measure(num_peers: int, num_runs: int) -> dict:
    import trio

    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "tiny-llama")
        for _ in range(num_runs):
            runs.append(trio.run(one_run, model, num_peers))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in runs[-1].items()}),
                  file=sys.stderr, flush=True)
    left_because = collections.Counter()
    for run in runs:
        left_because.update(run["left_because"])
    return {"num_peers": num_peers, "num_runs": num_runs, "poll_s": POLL_S, "left_because": dict(left_because),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()], **summarize(runs), "runs": runs}


def report(result: dict) -> None:
    print(f"daemon membership, {result['num_peers']} serving peers + bootstrap on 127.0.0.1, {result['num_runs']} "
          f"runs (median [min-max] s); load avg {result['load_avg_before']} -> {result['load_avg_after']}")
    labels = {"converged_s": "every peer lists all serving peers", "coordinator_agreed_s": "one coordinator named "
              "by all", "plan_applied_s": "one plan followed by all", "reelected_s": "after SIGKILL of the "
              "coordinator: new one, higher term", "dead_peer_left_s": "... killed peer out of every member list",
              "replanned_s": "... killed peer out of every followed plan", "poll_round_ms": "one poll round (ms)"}
    for key, label in labels.items():
        s = result[key]
        print(f"  {label:58s} {s['median']:7.2f}  [{s['min']:.2f}-{s['max']:.2f}]")
    print(f"  why the killed peer left, over the survivors of all runs: {result['left_because']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8, help="serving peers (besides the bootstrap node)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--quick", action="store_true", help="one run (for `python -m bench --quick`)")
    parser.add_argument("--digest-bytes", type=int, nargs="+", metavar="N",
                        help="digest sizes at N peers, in memory (no processes): see the module doc")
    args = parser.parse_args(argv)
    if args.digest_bytes:
        sizes = [digest_sizes(n) for n in args.digest_bytes]
        if not args.json:
            for r in sizes:
                print(f"{r['num_peers']:3d} peers: digest {r['digest_before_bytes']} B before, "
                      f"{r['digest_full_bytes']} B in full (plan+hosts {r['plan_and_hosts_bytes']} B, known "
                      f"addresses {r['known_bytes']} B, signed profile {r['signed_profile_bytes']} B), "
                      f"{r['digest_trimmed_bytes']} B trimmed ({r['ratio_to_before']}x less); per peer "
                      f"{r['per_peer_before_kb_s']} -> {r['per_peer_trimmed_kb_s']} kB/s sent")
        print(json.dumps(sizes))
        return 0
    if args.peers < 2 or args.runs < 1:
        parser.error("--peers must be at least 2 (one is killed) and --runs at least 1")
    result = measure(args.peers, 1 if args.quick else args.runs)
    if not args.json:
        report(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
