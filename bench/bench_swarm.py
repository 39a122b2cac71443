"""Swarm overhead: TTFT and TPOT through a local swarm vs the same engine called in this process, same run.

How it works. A bootstrap node and two peers (emulated A40 prefill, RTX 3090 Ti decode, the plan pinned
with `--plan` so the measured path is always the disaggregated one) start as processes on 127.0.0.1 with
the default SmolLM2 model; the client submits each prompt through the
bootstrap node (entry peer -> prefill peer -> KV push -> decode peer -> entry -> client). The baseline is
one engine in this process (role `both`, one torch thread, as each peer runs) given the same prompt.
Local and swarm runs alternate, so load on this shared machine hits both alike; the medians and their
ratios (swarm / local) are reported. The swarm's TTFT includes the client's connection, routing, the
prefill and the first token's trip back; its TPOT includes the KV hand-off spread over the tokens.

KV transfer (`--kv-transfer`): the daemon's KV hand-off alone, between two processes on 127.0.0.1. A
receiver process serves `peers.kvlink` as a decode peer does (the fast-path KV server and the libp2p
`/swarm/kv/1.0.0` fallback; its decode sessions take any blob and drop it: no engine import) plus a raw
TCP sink; this process pushes `--blob-mib` blobs with `peers.kvlink.send_kv` (fast path, negotiated once
and reused), with the libp2p fallback, and over a raw socket (length prefix, acknowledgement), interleaved
in the same run; median MB/s and the ratio to raw.

    python -m bench.bench_swarm [--quick] [--json] [--kv-bits 4|16]
    python -m bench.bench_swarm --kv-transfer [--blob-mib 64] [--repeats 5] [--json]
    python -m bench.bench_swarm --membership 8 [--runs 5] [--json]   (`bench.bench_membership`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

PROMPTS = ("What is the capital of France?", "Name three primary colors.",
           "Write one sentence about the sea.", "What is 12 times 12?")


def local_run(engine, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(TTFT s, TPOT s, tokens) of one request on an engine in this process."""
    from peers.engine import SamplingParams

    start = time.perf_counter()
    engine.add(f"r{start}", messages=[{"role": "user", "content": prompt}],
               params=SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    first_s, num_tokens = None, 0
    while engine.has_work():
        for event in engine.step():
            num_tokens += len(event.token_ids)
            if first_s is None and event.token_ids:
                first_s = time.perf_counter() - start
    total_s = time.perf_counter() - start
    return first_s, (total_s - first_s) / max(1, num_tokens - 1), num_tokens


def swarm_run(client, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    completion = client.generate(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                 ignore_eos=True)
    return completion.ttft_s, completion.tpot_s, completion.num_tokens


def disaggregated_plan(num_layers: int):
    """The path being measured, pinned: peer-a40 prefills, peer-3090ti decodes, KV between them."""
    from swarm.models import model_spec
    from swarm.modelstore import resolve_model
    from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage

    groups = (Group(0, "prefill", 1, 1, (Stage(("peer-a40/0",), (0, num_layers)),)),
              Group(1, "decode", 1, 1, (Stage(("peer-3090ti/0",), (0, num_layers)),)))
    return Plan(PLAN_FORMAT, 0, model_spec(resolve_model(None)).name, groups, Routing({0: 1.0}, ((0, 1, 1.0),)))


def measure(num_prompts: int, max_tokens: int, repeats: int, kv_bits: int) -> dict:
    import torch

    from peers.engine import Engine, EngineConfig
    from swarm.client.localswarm import PeerSpec

    torch.set_num_threads(1)
    engine = Engine.load(None, EngineConfig(kv_cache_bytes=256 << 20))
    samples: dict[str, list[float]] = {"local_ttft_s": [], "local_tpot_s": [], "swarm_ttft_s": [], "swarm_tpot_s": []}
    peers = [PeerSpec("peer-a40", "A40"), PeerSpec("peer-3090ti", "RTX3090Ti")]
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = os.path.join(tmp, "plan.json")
        with open(plan_path, "w") as f:
            f.write(disaggregated_plan(engine.model_config.num_layers).to_json())
        return _run(engine, peers, plan_path, kv_bits, num_prompts, max_tokens, repeats, samples)


def _run(engine, peers, plan_path: str, kv_bits: int, num_prompts: int, max_tokens: int, repeats: int,
         samples: dict[str, list[float]]) -> dict:
    from swarm.client.localswarm import LocalSwarm

    with LocalSwarm(peers, kv_bits=kv_bits, extra_args=("--plan", plan_path)) as swarm:
        startup_s = time.perf_counter()
        swarm.wait_for_plan(180)
        client = swarm.client()
        swarm_run(client, PROMPTS[0], 2)  # warm-up: connections, first-call allocations
        local_run(engine, PROMPTS[0], 2)
        for _ in range(repeats):
            for prompt in PROMPTS[:num_prompts]:
                for name, run in (("local", lambda p: local_run(engine, p, max_tokens)),
                                  ("swarm", lambda p: swarm_run(client, p, max_tokens))):
                    ttft_s, tpot_s, _ = run(prompt)
                    samples[f"{name}_ttft_s"].append(ttft_s)
                    samples[f"{name}_tpot_s"].append(tpot_s)
        plan_wait_s = time.perf_counter() - startup_s
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "kv_bits": kv_bits, "num_requests": len(samples["local_ttft_s"]), "max_tokens": max_tokens,
        **{k: round(v, 4) for k, v in med.items()},
        "ttft_ratio": round(med["swarm_ttft_s"] / med["local_ttft_s"], 3),
        "tpot_ratio": round(med["swarm_tpot_s"] / med["local_tpot_s"], 3),
        "ttft_overhead_ms": round((med["swarm_ttft_s"] - med["local_ttft_s"]) * 1e3, 1),
        "run_s": round(plan_wait_s, 1),
    }


# ---- KV transfer through the daemon's path ---------------------------------------------------------------

class SinkSession:
    async def take_kv(self, push, blob) -> None:
        pass


class AnyRequest(dict):
    """Decode sessions that take every request id (the bench measures the transfer, not the import)."""

    def get(self, key, default=None):
        return SinkSession()


class KvNode:
    """What `peers.kvlink` uses of a daemon `Node`."""

    def __init__(self, host) -> None:
        from peers.kvlink import KvLinks

        self.host, self.peer_id, self.kv_links, self.decode_sessions = host, host.peer_id, KvLinks(), AnyRequest()

    async def open_stream(self, peer_id: str, protocol: str):
        return await self.host.open_stream(peer_id, protocol)

    async def close_stream(self, stream) -> None:
        await stream.close()


async def kv_receiver(tmp: str) -> None:
    """The receiving process: prints one JSON line with its addresses, runs until stdin closes."""
    from functools import partial
    from pathlib import Path

    import trio

    from bench.bench_net import raw_sink
    from peers.kvlink import KV_PROTOCOL, serve_kv, serve_kv_channel
    from swarm.net.fastpath import run_fastpath_server
    from swarm.net.host import HostConfig, open_host

    async with open_host(HostConfig(identity_path=Path(tmp) / "receiver.key")) as host:
        node = KvNode(host)
        host.set_handler(KV_PROTOCOL, partial(serve_kv, node))
        await host.nursery.start(partial(run_fastpath_server, host, on_channel=partial(serve_kv_channel, node),
                                         bind_host="127.0.0.1", timeout_s=30))
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await host.nursery.start(trio.serve_listeners, raw_sink, listeners)
        print(json.dumps({"addr": host.addrs[0], "raw_port": listeners[0].socket.getsockname()[1]}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


async def measure_kv_transfer(blob_bytes: int, repeats: int) -> dict:
    import subprocess
    from pathlib import Path

    import trio

    from bench.bench_net import send_raw
    from peers import kvlink
    from swarm.net.host import HostConfig, open_host
    from swarm.wire.requests import KvPush

    blob = os.urandom(blob_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen([sys.executable, "-m", "bench.bench_swarm", "--kv-receiver", tmp],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            info = json.loads(await trio.to_thread.run_sync(child.stdout.readline))
            async with open_host(HostConfig(identity_path=Path(tmp) / "sender.key")) as host:
                peer_id = await host.dial(info["addr"])
                node, counter = KvNode(host), iter(range(1 << 30))

                def push() -> KvPush:
                    return KvPush(f"bench-{next(counter)}", 1, (1, 2, 3), (4,), len(blob))

                senders = {
                    "daemon-fastpath": lambda: kvlink.send_kv(node, peer_id, push(), blob, 1),
                    "daemon-libp2p-fallback": lambda: kvlink._send_libp2p(node, peer_id, push(), blob, 1),
                    "raw": lambda: send_raw(info["raw_port"], blob, 1),
                }
                result = await _kv_rounds(senders, len(blob), repeats)
                result["fastpath_pushes"] = node.kv_links.num_fast
                result["fallback_pushes"] = node.kv_links.num_fallback
                await node.kv_links.aclose()
                return result
        finally:
            child.stdin.close()
            child.wait(timeout=10)


async def _kv_rounds(senders: dict, blob_bytes: int, repeats: int) -> dict:
    import time as _time

    rates: dict[str, list[float]] = {name: [] for name in senders}
    for send in senders.values():  # warm-up: the fast-path negotiation, connections, page faults
        await send()
    for _ in range(repeats):
        for name, send in senders.items():
            start = _time.perf_counter()
            await send()
            rates[name].append(blob_bytes / (_time.perf_counter() - start) / 1e6)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"blob_mib": blob_bytes >> 20, "repeats": repeats, **{
        name: {"mb_per_s": round(m, 1), "ratio_to_raw": round(m / medians["raw"], 3),
               "runs_mb_per_s": [round(x, 1) for x in rates[name]]} for name, m in medians.items()}}


def main_kv_transfer(args) -> int:
    import trio

    result = trio.run(measure_kv_transfer, args.blob_mib << 20, args.repeats)
    if not args.json:
        print(f"KV hand-off through peers.kvlink, {args.blob_mib} MiB blobs, {args.repeats} rounds, 127.0.0.1")
        for name in ("daemon-fastpath", "daemon-libp2p-fallback", "raw"):
            print(f"  {name:24s} {result[name]['mb_per_s']:8.1f} MB/s   {result[name]['ratio_to_raw']:.2f}x raw")
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts x 16 tokens x 2 repeats")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--kv-bits", type=int, choices=(4, 8, 16), default=4)
    parser.add_argument("--kv-transfer", action="store_true", help="KV hand-off throughput only (see above)")
    parser.add_argument("--blob-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--membership", type=int, metavar="N", help="the daemon's membership with N peers: "
                        "convergence, election, plan, re-election (bench.bench_membership)")
    parser.add_argument("--runs", type=int, default=5, help="with --membership")
    parser.add_argument("--kv-receiver", metavar="TMP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.membership:
        from bench import bench_membership

        return bench_membership.main(["--peers", str(args.membership), "--runs", str(args.runs)]
                                     + (["--json"] if args.json else []))
    if args.kv_receiver:
        import trio

        trio.run(kv_receiver, args.kv_receiver)
        return 0
    if args.kv_transfer:
        return main_kv_transfer(args)
    num_prompts, max_tokens, repeats = (2, 16, 2) if args.quick else (4, 32, 3)
    result = measure(num_prompts, max_tokens, repeats, args.kv_bits)
    if not args.json:
        print(f"swarm vs local engine, {result['num_requests']} requests of {max_tokens} tokens, "
              f"{args.kv_bits}-bit KV on the wire")
        print(f"  TTFT  local {result['local_ttft_s'] * 1e3:7.1f} ms   swarm {result['swarm_ttft_s'] * 1e3:7.1f} ms"
              f"   ratio {result['ttft_ratio']:.2f}")
        print(f"  TPOT  local {result['local_tpot_s'] * 1e3:7.1f} ms   swarm {result['swarm_tpot_s'] * 1e3:7.1f} ms"
              f"   ratio {result['tpot_ratio']:.2f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
