"""Calibration of the cost model's per-GPU `Efficiency` against Vidur's measured operator profiles.

How it works: Vidur (MLSys'24) profiled every non-attention operator of a Llama-2-7B layer on A100,
H100 and A40 at many token counts and TP degrees (sims/data/vidur, MIT). The measured layer time is the
sum of those operators (QKV/O projections, MLP up/act/down, layer norms, RoPE, residual add). The cost
model predicts a layer as (swarm/plan/cost.py)

    t(n, tp) = max(n * F_layer / (tp * tflops * compute), W_layer / (tp * mem_bw * memory)) + overhead

and (compute, memory, overhead) are fitted per GPU by grid search minimising the mean squared relative
error over all (n, tp) rows. GPUs Vidur did not profile borrow the fit of the same silicon: the A6000,
A5000 and RTX 3090 Ti are GA102 chips like the A40; the A100-40G is an A100; the H200 an H100.

The fits are stored as the planner's package data (`swarm/plan/data/efficiency.json`, read by
`swarm.plan.cost.calibrated_efficiency`), which the planner, the daemon and these experiments all use;
`python -m sims.calibrate --write` refits and rewrites it, `python -m sims.calibrate` prints the fits.
The CPU-only terms of `Efficiency` (attention, overlap) stay at their neutral 1 on GPUs, and entries not
fitted here (the "CPU" one, fitted by `python -m bench.calibrate_cpu --write` against the real engine)
are kept as they are.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swarm.hardware import gpu_spec
from swarm.models import model_spec
from swarm.plan import cost
from swarm.plan.cost import DEFAULT_EFFICIENCY, Efficiency

DATA = Path(__file__).parent / "data" / "vidur"
PROFILED = {"a100": "A100-80G", "h100": "H100", "a40": "A40"}
SAME_SILICON = {
    "A100-80G": "a100",
    "A100-40G": "a100",
    "H100": "h100",
    "H200": "h100",
    "A40": "a40",
    "A6000": "a40",
    "A5000": "a40",
    "RTX3090Ti": "a40",
}
OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
GRID_COMPUTE = np.linspace(0.2, 1.0, 81)
GRID_MEMORY = np.linspace(0.2, 1.0, 81)
GRID_OVERHEAD_S = np.linspace(0.0, 150e-6, 31)


@dataclass(frozen=True)
class Fit:
    gpu: str
    efficiency: Efficiency
    num_rows: int
    mean_abs_error: float  # relative
    p90_abs_error: float
    default_mean_abs_error: float  # the uncalibrated DEFAULT_EFFICIENCY on the same rows


def load_profile(profile: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(num_tokens, tp, measured layer seconds) of a Vidur Llama-2-7B MLP profile ('a100', 'h100', 'a40')."""
    tokens, tps, seconds = [], [], []
    with (DATA / f"{profile}_Llama-2-7b-hf_mlp.csv").open() as f:
        for row in csv.DictReader(f):
            tokens.append(float(row["num_tokens"]))
            tps.append(float(row["num_tensor_parallel_workers"]))
            seconds.append(sum(float(row[f"time_stats.{op}.median"]) for op in OPS) / 1e3)  # ms -> s
    return np.array(tokens), np.array(tps), np.array(seconds)


def predict_s(gpu: str, tokens, tp, compute, memory, overhead_s):
    """The cost model's time for one Llama-2-7B layer (no attention kernel), broadcasting the factors."""
    model, spec = model_spec("llama-7b"), gpu_spec(gpu)
    flops = tokens * 2.0 * (model.params_per_layer - 2 * model.hidden_size)
    compute_s = flops / (tp * spec.tflops * 1e12 * compute)
    memory_s = model.layer_bytes / (tp * spec.memory_bandwidth_gbs * 1e9 * memory)
    return np.maximum(compute_s, memory_s) + overhead_s


@functools.cache
def fit(profile: str) -> Fit:
    """Grid-search (compute, memory, overhead) for one profiled GPU."""
    gpu = PROFILED[profile]
    tokens, tp, measured = load_profile(profile)
    c, m = GRID_COMPUTE[:, None, None], GRID_MEMORY[None, :, None]
    best_loss, best = np.inf, None
    for k, overhead_s in enumerate(GRID_OVERHEAD_S):  # one (compute, memory, rows) slab at a time
        loss = ((predict_s(gpu, tokens, tp, c, m, overhead_s) / measured - 1.0) ** 2).mean(axis=-1)
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        if loss[i, j] < best_loss:
            best_loss, best = loss[i, j], (i, j, k)
    i, j, k = best
    errors = np.abs(
        predict_s(gpu, tokens, tp, GRID_COMPUTE[i], GRID_MEMORY[j], GRID_OVERHEAD_S[k]) / measured - 1
    )
    default = np.abs(
        predict_s(
            gpu,
            tokens,
            tp,
            DEFAULT_EFFICIENCY.compute,
            DEFAULT_EFFICIENCY.memory,
            DEFAULT_EFFICIENCY.layer_overhead_s,
        )
        / measured
        - 1.0
    )
    efficiency = Efficiency(
        compute=round(float(GRID_COMPUTE[i]), 3),
        memory=round(float(GRID_MEMORY[j]), 3),
        network=DEFAULT_EFFICIENCY.network,
        layer_overhead_s=round(float(GRID_OVERHEAD_S[k]), 7),
    )
    return Fit(
        gpu,
        efficiency,
        len(measured),
        float(errors.mean()),
        float(np.percentile(errors, 90)),
        float(default.mean()),
    )


def calibrated_efficiency() -> dict[str, Efficiency]:
    """Per GPU type name, the calibrated efficiency: the planner's package data (what `write_data` wrote)."""
    return cost.calibrated_efficiency()


def write_data(path: Path | None = None) -> Path:
    """Refit every GPU type (same-silicon fits for unprofiled GPUs) and write the planner's package data."""
    path = path or Path(cost.__file__).parent / cost.EFFICIENCY_DATA
    gpus = {name: entry for name, entry in _stored_entries(path).items() if name not in SAME_SILICON}
    for gpu, profile in SAME_SILICON.items():
        f = fit(profile)
        e = f.efficiency
        gpus[gpu] = {"compute": e.compute, "memory": e.memory, "network": e.network,
                     "layer_overhead_s": e.layer_overhead_s, "attention": e.attention, "overlap": e.overlap,
                     "profile": PROFILED[profile], "mean_abs_error": round(f.mean_abs_error, 4), "rows": f.num_rows}
    provenance = (
        "Fitted by `python -m sims.calibrate --write` (sims/calibrate.py): grid search of (compute, memory, "
        "layer_overhead_s) minimising the mean squared relative error of the cost model's Llama-2-7B layer "
        "time against Vidur's measured operator profiles (sims/data/vidur, MIT; all rows of token counts 1 "
        "to 4096+ and TP 1/2/4). GPUs Vidur did not profile borrow the fit of the same silicon (profile "
        "field). network is the cost model's default (not fitted); attention and overlap are 1 (the roofline) on "
        "GPUs. Entries with another provenance field (CPU) were fitted elsewhere and are kept by the refit.")
    path.write_text(json.dumps({"provenance": provenance, "gpus": gpus}, indent=1) + "\n")
    cost.calibrated_efficiency.cache_clear()
    return path


def _stored_entries(path: Path) -> dict:
    """The entries of the efficiency file at `path` ({} if there is none yet)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text())["gpus"]


def report() -> str:
    """A markdown table of the fits (what docs/results.md records)."""
    lines = [
        "| GPU | compute | memory | overhead per layer | rows | mean abs error | p90 abs error | "
        "uncalibrated mean error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for profile in PROFILED:
        f = fit(profile)
        e = f.efficiency
        lines.append(
            f"| {f.gpu} | {e.compute:.2f} | {e.memory:.2f} | {e.layer_overhead_s * 1e6:.0f} us | "
            f"{f.num_rows} | {f.mean_abs_error:.1%} | {f.p90_abs_error:.1%} | "
            f"{f.default_mean_abs_error:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sims.calibrate", description="Fit the cost model to Vidur.")
    parser.add_argument("--write", action="store_true", help="rewrite swarm/plan/data/efficiency.json")
    args = parser.parse_args(argv)
    print(report())
    if args.write:
        print(f"wrote {write_data()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
