"""Fit the cost model's `Efficiency` for this CPU against the real engine's SmolLM2 step times.

How it works: the engine (`peers.engine.Engine`, SmolLM2-135M-Instruct, fp32 weights and KV) runs
prefills of n tokens (one sequence) and decode steps of B sequences with C context tokens each; the
median wall time of each is compared with the cost model (`swarm.plan.cost`) for a one-stage,
tp=1 deployment of the same model on a "GPU" whose peak figures are this CPU's measured float32
matmul rate and memory bandwidth (`swarm.hardware.probe`). (compute, memory, per-layer overhead)
are grid-searched to minimise the mean squared relative error; the cost model counts 2-byte weights,
the engine reads 4-byte ones, which the fitted memory efficiency absorbs (about halved).
One thread (OMP and torch) for the probe and the engine alike, so step times do not depend on how many
cores other processes leave free; each point is the median of `repeats` steps after a warm-up step. The
load average is printed with the fit: on a shared machine above a load of about the core count the
medians are not trustworthy.

    python -m bench.calibrate_cpu [--quick] [--json]
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from peers.engine import Engine  # noqa: E402
from peers.engine.config import EngineConfig  # noqa: E402
from swarm.hardware import Cluster  # noqa: E402
from swarm.hardware.catalog import GpuSpec  # noqa: E402
from swarm.hardware.cluster import Host  # noqa: E402
from swarm.hardware.probe import probe  # noqa: E402
from swarm.models import model_spec  # noqa: E402
from swarm.plan.cost import Efficiency, build_group_cost  # noqa: E402
from swarm.plan.parallel import Deployment  # noqa: E402
from swarm.wire.plan import Stage  # noqa: E402

MODEL = "smollm2-135m"
PREFILL_TOKENS = (16, 64, 256, 512)
DECODE_POINTS = ((1, 128), (4, 128), (16, 128), (32, 256))  # (batch, context tokens per sequence)


def measure(engine: Engine, repeats: int) -> tuple[list[tuple], list[tuple]]:
    """(prefill rows (n, seconds), decode rows (batch, context total, seconds))."""
    rng = np.random.default_rng(0)
    vocab = engine.model_config.vocab_size
    prefill, decode, counter = [], [], iter(range(10**9))
    for n in PREFILL_TOKENS:
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            rid = f"p{next(counter)}"
            engine.add(rid, [int(t) for t in rng.integers(10, vocab - 10, n)])
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
            engine.abort(rid)
        prefill.append((n, statistics.median(times[1:])))
    for batch, context in DECODE_POINTS:
        ids = [f"d{next(counter)}" for _ in range(batch)]
        for rid in ids:
            engine.add(rid, [int(t) for t in rng.integers(10, vocab - 10, context)])
        while any(engine.seqs[r].num_tokens <= context for r in ids if r in engine.seqs):
            engine.step()  # prefills, then the first decode
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        decode.append((batch, batch * (context + 1), statistics.median(times)))
        for rid in ids:
            engine.abort(rid)
    return prefill, decode


def cpu_cost(efficiency: Efficiency, profile):
    """The cost model of SmolLM2 on one 'GPU' with this CPU's measured peak figures (`profile`)."""
    spec = GpuSpec(
        name="CPU",
        tflops=profile.tflops,
        memory_gb=profile.memory_gb,
        memory_bandwidth_gbs=profile.memory_bandwidth_gbs,
        pcie_gbs=10.0,
        nvlink_gbs=0.0,
        price_per_hour=0.0,
    )
    cluster = Cluster(hosts=(Host("cpu", spec, (0,), 0.0, 100.0),), name="cpu")
    model = model_spec(MODEL)
    deployment = Deployment(("cpu/0",), "both", 1, 1, (Stage(("cpu/0",), (0, model.num_layers)),))
    return build_group_cost(cluster, model, {"CPU": efficiency}, deployment)


def fit(prefill, decode, profile) -> tuple[Efficiency, float, list[dict]]:
    best = None
    for compute in np.linspace(0.05, 1.0, 20):
        for memory in np.linspace(0.05, 1.0, 20):
            for overhead_s in np.linspace(0.0, 2e-3, 21):
                eff = Efficiency(float(compute), float(memory), 0.7, float(overhead_s))
                rows = predict(eff, prefill, decode, profile)
                loss = float(np.mean([(r["model_s"] / r["measured_s"] - 1) ** 2 for r in rows]))
                if best is None or loss < best[0]:
                    best = (loss, eff, rows)
    _, eff, rows = best
    return eff, float(np.mean([abs(r["model_s"] / r["measured_s"] - 1) for r in rows])), rows


def predict(eff: Efficiency, prefill, decode, profile) -> list[dict]:
    cost = cpu_cost(eff, profile)
    rows = [{"step": f"prefill n={n}", "measured_s": s, "model_s": cost.prefill_s(n, 1)} for n, s in prefill]
    rows += [
        {"step": f"decode B={b} C={c}", "measured_s": s, "model_s": float(cost.decode_step_s(b, c))}
        for b, c, s in decode
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    engine = Engine.load(None, EngineConfig(max_num_batched_tokens=4096))
    prefill, decode = measure(engine, 3 if args.quick else 15)
    profile = probe()
    load_after = os.getloadavg()[0]
    eff, error, rows = fit(prefill, decode, profile)
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores")
    print(
        f"CPU peak (probe, 1 thread): {profile.tflops:.3f} TFLOPS fp32, {profile.memory_bandwidth_gbs:.1f} GB/s"
    )
    print(
        f"fit: compute {eff.compute:.2f}, memory {eff.memory:.2f}, "
        f"overhead {eff.layer_overhead_s * 1e6:.0f} us/layer;"
        f" mean abs error {error:.1%}"
    )
    print("| step | measured ms | model ms | error |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['measured_s'] * 1e3:.1f} | {r['model_s'] * 1e3:.1f} | "
            f"{r['model_s'] / r['measured_s'] - 1:+.0%} |"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "compute": eff.compute,
                    "memory": eff.memory,
                    "layer_overhead_s": eff.layer_overhead_s,
                    "mean_abs_error": error,
                    "load_average": [load_before, load_after],
                }
            )
        )


if __name__ == "__main__":
    main()
