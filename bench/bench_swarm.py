"""Swarm overhead: TTFT and TPOT through a local swarm vs the same engine called in this process, same run.

How it works. A bootstrap node and two peers (emulated A40 prefill, RTX 3090 Ti decode, the plan pinned
with `--plan` so the measured path is always the disaggregated one) start as processes on 127.0.0.1 with
the default SmolLM2 model; the client submits each prompt through the
bootstrap node (entry peer -> prefill peer -> KV push -> decode peer -> entry -> client). The baseline is
one engine in this process (role `both`, one torch thread, as each peer runs) given the same prompt.
Local and swarm runs alternate, so load on this shared machine hits both alike; the medians and their
ratios (swarm / local) are reported. The swarm's TTFT includes the client's connection, routing, the
prefill and the first token's trip back; its TPOT includes the KV hand-off spread over the tokens.

    python -m bench.bench_swarm [--quick] [--json] [--kv-bits 4|16]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts x 16 tokens x 2 repeats")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--kv-bits", type=int, choices=(4, 8, 16), default=4)
    args = parser.parse_args(argv)
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
