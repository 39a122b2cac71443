"""Fit the cost model's `Efficiency` for this CPU against the real engine's SmolLM2 step times.

How it works: the engine (`peers.engine.Engine`, SmolLM2-135M-Instruct, fp32 weights and KV) runs
prefills of n tokens (one sequence) and decode steps of B sequences with C context tokens each; the
median time of each is compared with the cost model (`swarm.plan.cost`) for a one-stage, tp=1
deployment of the same model, at the engine's 4 bytes per weight and KV element, on a "GPU" whose peak
figures are this CPU's one-core float32 matmul rate and matrix-vector streaming bandwidth
(`swarm.hardware.probe`). (compute, memory, attention, per-layer overhead) are grid-searched, then
refined around the best point, to minimise the mean squared relative error.

Times are CPU time of the measuring thread (`time.thread_time`), with one OMP and torch thread, so
that other processes on a shared machine delay a step without lengthening what is measured (they
still share the caches and the memory bus). Each point is the median of `repeats` steps after a
warm-up step; the load average is printed with the fit.

    python -m bench.calibrate_cpu [--quick] [--json] [--save FILE | --load FILE] [--write]

`--save` keeps the raw step times and the probe's figures, `--load` refits them without measuring;
`--write` stores the fit as the "CPU" entry of the planner's efficiency table
(`swarm/plan/data/efficiency.json`), which `swarm plan` and the daemon use for probed CPU peers.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from swarm.hardware import Cluster  # noqa: E402
from swarm.hardware.catalog import GpuSpec  # noqa: E402
from swarm.hardware.cluster import Host  # noqa: E402
from swarm.hardware.probe import probe  # noqa: E402
from swarm.models import model_spec  # noqa: E402
from swarm.plan import cost as cost_model  # noqa: E402
from swarm.plan.cost import Efficiency, build_group_cost  # noqa: E402
from swarm.plan.parallel import Deployment  # noqa: E402
from swarm.wire.plan import Stage  # noqa: E402

MODEL = "smollm2-135m"
ENGINE_DTYPE_BYTES = 4  # the engine runs SmolLM2 in float32 on a CPU
PREFILL_TOKENS = (16, 64, 256, 512)
# (batch, context tokens per sequence): batch growth at short context, then long context at small batches
DECODE_POINTS = ((1, 128), (4, 128), (16, 128), (32, 256), (32, 32), (1, 2048), (4, 2048))
GRID = {  # coarse grid of the fit; the best point is then refined on a grid 4x finer around it
    "compute": np.linspace(0.3, 1.0, 8),
    "memory": np.linspace(0.3, 1.0, 8),
    "attention": np.geomspace(0.05, 1.0, 14),
    "layer_overhead_s": np.linspace(0.0, 1e-3, 11),
    "overlap": np.linspace(0.0, 1.0, 5),
}


def measure(engine, repeats: int) -> tuple[list[tuple], list[tuple]]:
    """(prefill rows (n, seconds), decode rows (batch, context total, seconds)), thread CPU seconds."""
    from peers.engine.sampling import SamplingParams
    rng = np.random.default_rng(0)
    vocab = engine.model_config.vocab_size
    prefill, decode, counter = [], [], iter(range(10**9))
    for n in PREFILL_TOKENS:
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            rid = f"p{next(counter)}"
            engine.add(rid, [int(t) for t in rng.integers(10, vocab - 10, n)])
            start = time.thread_time()
            engine.step()
            times.append(time.thread_time() - start)
            engine.abort(rid)
        prefill.append((n, statistics.median(times[1:])))
    for batch, context in DECODE_POINTS:
        ids = [f"d{next(counter)}" for _ in range(batch)]
        for rid in ids:  # every sequence stays for all the timed steps (no end-of-sequence token ends it)
            engine.add(rid, [int(t) for t in rng.integers(10, vocab - 10, context)],
                       params=SamplingParams(max_tokens=repeats + 2, ignore_eos=True))
        while any(engine.seqs[r].num_tokens <= context for r in ids if r in engine.seqs):
            engine.step()  # prefills, then the first decode
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            engine.step()
            times.append(time.thread_time() - start)
        decode.append((batch, batch * (context + 1), statistics.median(times)))
        for rid in ids:
            engine.abort(rid)
    return prefill, decode


def cpu_cost(efficiency: Efficiency, tflops: float, bandwidth_gbs: float):
    """The cost model of fp32 SmolLM2 on one 'GPU' with this CPU's measured peak figures."""
    spec = GpuSpec(name="CPU", tflops=tflops, memory_gb=64.0, memory_bandwidth_gbs=bandwidth_gbs,
                   pcie_gbs=10.0, nvlink_gbs=0.0, price_per_hour=0.0)
    cluster = Cluster(hosts=(Host("cpu", spec, (0,), 0.0, 100.0),), name="cpu")
    model = replace(model_spec(MODEL), dtype_bytes=ENGINE_DTYPE_BYTES)
    deployment = Deployment(("cpu/0",), "both", 1, 1, (Stage(("cpu/0",), (0, model.num_layers)),))
    return build_group_cost(cluster, model, {"CPU": efficiency}, deployment)


def predict(eff: Efficiency, data: dict) -> list[dict]:
    """One row per measured step: its measured and modelled seconds."""
    cost = cpu_cost(eff, data["tflops"], data["bandwidth_gbs"])
    rows = [{"step": f"prefill n={n}", "measured_s": s, "model_s": cost.prefill_s(n, 1)}
            for n, s in data["prefill"]]
    rows += [{"step": f"decode B={b} C={c}", "measured_s": s, "model_s": float(cost.decode_step_s(b, c))}
             for b, c, s in data["decode"]]
    return rows


def fit(data: dict, pinned: dict | None = None) -> tuple[Efficiency, float, list[dict]]:
    """Best (compute, memory, attention, overhead, overlap) on GRID, refined; its mean abs error and rows.

    `pinned` fixes some terms (name -> value), e.g. {"overlap": 1.0} for the plain roofline's max.
    """
    grid = {name: np.array([pinned[name]] * 2) if name in (pinned or {}) else values
            for name, values in GRID.items()}
    best = _search(data, _finer(grid, _search(data, grid)))
    rows = predict(best, data)
    return best, float(np.mean([abs(r["model_s"] / r["measured_s"] - 1) for r in rows])), rows


def _finer(grid: dict, centre: Efficiency) -> dict:
    """A grid one coarse step wide around `centre`, 4x finer (geometric for attention)."""
    fine = {}
    for name, values in grid.items():
        offsets = np.linspace(-0.5, 0.5, 9)
        at = getattr(centre, name)
        if name == "attention":
            candidates = at * float(values[1] / values[0]) ** offsets
        else:
            candidates = at + float(values[1] - values[0]) * offsets
        low, high = {"layer_overhead_s": (0.0, np.inf), "overlap": (0.0, 1.0)}.get(name, (1e-3, 1.0))
        fine[name] = np.unique(np.clip(candidates, low, high))
    return fine


def _search(data: dict, grid: dict) -> Efficiency:
    best_loss, best = np.inf, None
    for compute, memory, attention, overhead_s, overlap in itertools.product(*grid.values()):
        eff = Efficiency(round(float(compute), 4), round(float(memory), 4), 0.7, round(float(overhead_s), 7),
                         round(float(attention), 4), round(float(overlap), 4))
        loss = float(np.mean([(r["model_s"] / r["measured_s"] - 1) ** 2 for r in predict(eff, data)]))
        if loss < best_loss:
            best_loss, best = loss, eff
    return best


def measure_all(repeats: int) -> dict:
    """Step times of the engine and the probe's figures, with the load average around them."""
    import torch

    from peers.engine import Engine
    from peers.engine.config import EngineConfig

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    engine = Engine.load(None, EngineConfig(max_num_batched_tokens=4096))
    prefill, decode = measure(engine, repeats)
    profile = probe()
    return {"prefill": prefill, "decode": decode, "tflops": profile.tflops,
            "bandwidth_gbs": profile.memory_bandwidth_gbs, "load_average": [load_before, os.getloadavg()[0]],
            "num_cores": os.cpu_count(), "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_entry(eff: Efficiency, error: float, data: dict) -> Path:
    """Store `eff` as the "CPU" entry of the planner's efficiency table, with its provenance."""
    path = Path(cost_model.__file__).parent / cost_model.EFFICIENCY_DATA
    table = json.loads(path.read_text())
    table["gpus"]["CPU"] = {
        "compute": eff.compute, "memory": eff.memory, "network": eff.network,
        "layer_overhead_s": round(eff.layer_overhead_s, 7), "attention": eff.attention, "overlap": eff.overlap,
        "provenance": "python -m bench.calibrate_cpu --write: SmolLM2-135M fp32 on the real engine, one thread, "
                      "against the probe's one-core figures", "measured_at": data["measured_at"],
        "probe_tflops": round(data["tflops"], 4), "probe_bandwidth_gbs": round(data["bandwidth_gbs"], 2),
        "load_average": [round(x, 2) for x in data["load_average"]], "mean_abs_error": round(error, 4),
        "rows": len(data["prefill"]) + len(data["decode"])}
    path.write_text(json.dumps(table, indent=1) + "\n")
    cost_model.calibrated_efficiency.cache_clear()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per point instead of 15")
    parser.add_argument("--json", action="store_true", help="print the fit as JSON on the last line")
    parser.add_argument("--save", type=Path, help="write the measurements to this JSON file")
    parser.add_argument("--load", type=Path, help="fit the measurements of this JSON file (no measuring)")
    parser.add_argument("--write", action="store_true", help="store the fit in swarm/plan/data/efficiency.json")
    parser.add_argument("--ablate", action="store_true", help="also refit with attention and/or overlap at 1")
    args = parser.parse_args()
    data = json.loads(args.load.read_text()) if args.load else measure_all(3 if args.quick else 15)
    if args.save:
        args.save.write_text(json.dumps(data, indent=1) + "\n")
    eff, error, rows = fit(data)
    before, after = data["load_average"]
    print(f"measured {data['measured_at']}; load average (1 min) {before:.2f} before, {after:.2f} after, "
          f"on {data['num_cores']} cores; times are the thread's CPU time")
    print(f"CPU peak (probe, 1 core): {data['tflops']:.3f} TFLOPS fp32, {data['bandwidth_gbs']:.1f} GB/s")
    print(f"fit: compute {eff.compute:.3f}, memory {eff.memory:.3f}, attention {eff.attention:.3f}, "
          f"overlap {eff.overlap:.2f}, overhead {eff.layer_overhead_s * 1e6:.0f} us/layer; mean abs error {error:.1%}")
    print("| step | measured ms | model ms | error |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['measured_s'] * 1e3:.1f} | {r['model_s'] * 1e3:.1f} | "
              f"{r['model_s'] / r['measured_s'] - 1:+.0%} |")
    if args.ablate:
        for pinned in ({"attention": 1.0, "overlap": 1.0}, {"overlap": 1.0}, {"attention": 1.0}):
            pinned_eff, pinned_error, pinned_rows = fit(data, pinned)
            worst = max(abs(r["model_s"] / r["measured_s"] - 1) for r in pinned_rows)
            print(f"pinned {pinned}: mean abs error {pinned_error:.1%}, max {worst:.0%} ({pinned_eff})")
    if args.write:
        print(f"wrote the CPU entry of {write_entry(eff, error, data)}")
    if args.json:
        print(json.dumps({"compute": eff.compute, "memory": eff.memory, "attention": eff.attention,
                          "overlap": eff.overlap, "layer_overhead_s": eff.layer_overhead_s, "mean_abs_error": error,
                          "load_average": data["load_average"], "tflops": data["tflops"],
                          "bandwidth_gbs": data["bandwidth_gbs"]}))


if __name__ == "__main__":
    main()
