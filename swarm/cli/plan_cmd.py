"""`swarm plan`: plan a deployment offline and explain it (a table of groups, predicted TTFT/TPOT/goodput).

    swarm plan --cluster cloud-32 --model llama-30b --workload azure-conv [--rate R] [--slo-scale X]
               [--ttft S --tpot S] [--budget-s T] [--seed N] [--kv-bits 4] [--colocated] [--json OUT]

With `--json -` the plan JSON goes to stdout and the table to stderr, so the output pipes cleanly.
"""

from __future__ import annotations

import argparse
import sys

from swarm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", required=True, help="a cluster TOML file or a built-in name (e.g. cloud-32)")
    parser.add_argument("--model", required=True, help="a model name (e.g. llama-30b) or a folder with config.json")
    parser.add_argument("--workload", required=True,
                        help="azure-code, azure-conv, mooncake-conv, or a CSV (arrival_s,prompt_tokens,output_tokens)")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests/s to plan for (default: the workload's mean rate)")
    parser.add_argument("--ttft", type=float, default=None, help="TTFT target in seconds (with --tpot)")
    parser.add_argument("--tpot", type=float, default=None, help="TPOT target in seconds (with --ttft)")
    parser.add_argument("--slo-scale", type=float, default=None,
                        help="multiply the base SLO (DistServe/ThunderServe style) by this factor (default 1)")
    parser.add_argument("--budget-s", type=float, default=2.0, help="planning time budget in seconds (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="search seed: the same seed gives the same plan")
    parser.add_argument("--kv-bits", type=int, choices=(16, 8, 4), default=4,
                        help="KV format on the prefill->decode wire (16 = uncompressed; default 4)")
    parser.add_argument("--colocated", action="store_true",
                        help="plan colocated replicas (each prefills and decodes) instead of disaggregated ones")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the plan JSON to OUT ('-' = stdout)")


def run(args: argparse.Namespace) -> int:
    from swarm.plan.errors import InfeasibleError
    from swarm.plan.search import plan

    for flag, value in (("--rate", args.rate), ("--budget-s", args.budget_s)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be a positive number, got {value!r}")
    problem = build_problem(args)
    roles = ("both",) if args.colocated else ("prefill", "decode")
    result = plan(problem, budget_s=args.budget_s, seed=args.seed, allowed_roles=roles)
    best = result.best
    if best.goodput_rps <= 0:
        raise InfeasibleError(
            f"no plan meets the SLO (TTFT {problem.slo.ttft_s:.3g} s, TPOT {problem.slo.tpot_s:.3g} s for "
            f"{problem.slo.attainment:.0%} of requests) even at a low rate; at {problem.rate_rps:.3g} req/s the best "
            f"plan found predicts TTFT p90 {_seconds(best.ttft_p90_s)}, TPOT p90 {_seconds(best.tpot_p90_s)}. "
            "Relax it with --slo-scale (e.g. 2) or larger --ttft/--tpot")
    out = sys.stderr if args.json == "-" else sys.stdout
    print(render(problem, result), file=out)
    if args.json == "-":
        print(best.plan.to_json())
    elif args.json:
        _write(args.json, best.plan.to_json() + "\n")
        print(f"plan written to {args.json}", file=out)
    return 0


def build_problem(args: argparse.Namespace):
    """The Problem from the command line: cluster, model, workload, rate and SLO."""
    from swarm.hardware import load_cluster
    from swarm.models import model_spec
    from swarm.plan.problem import Problem, base_slo
    from swarm.workloads import load_workload

    cluster = load_cluster(args.cluster)
    model = model_spec(args.model)
    workload = load_workload(args.workload)
    return Problem(cluster, model, workload, _slo(args, model, workload, base_slo),
                   rate_rps=workload.rate_rps if args.rate is None else args.rate, kv_bits=args.kv_bits)


def _slo(args: argparse.Namespace, model, workload, base_slo):
    from swarm.plan.problem import Slo

    if (args.ttft is None) != (args.tpot is None):
        raise ConfigError("give both --ttft and --tpot (seconds), or neither (then the base SLO is used)")
    if args.ttft is not None:
        if args.slo_scale is not None:
            raise ConfigError("--slo-scale scales the base SLO; it cannot be combined with --ttft/--tpot")
        return Slo(ttft_s=args.ttft, tpot_s=args.tpot)
    scale = 1.0 if args.slo_scale is None else args.slo_scale
    if not scale > 0:
        raise ConfigError(f"--slo-scale must be a positive factor (e.g. 1.5), got {scale!r}")
    return base_slo(model, workload).scaled(scale)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ConfigError(f"cannot write the plan to {path!r}: {e.strerror}; give a writable path or '-'") from None


def render(problem, result) -> str:
    """The deployment table and the predicted figures, as printed by `swarm plan`."""
    best = result.best
    plan, cluster, slo = best.plan, problem.cluster, problem.slo
    shares = _shares(plan)
    rows = [("group", "role", "GPUs (pipeline order)", "types", "TPxPP", "layers per stage", "share")]
    for g in plan.groups:
        layers = " ".join(f"{s.layers[0]}-{s.layers[1]}" for s in g.stages)
        rows.append((str(g.id), g.role, _gpu_ranges(g.gpu_ids), _types(g.gpu_ids, cluster), f"{g.tp}x{g.pp}",
                     layers, f"{shares.get(g.id, 0.0):.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    used = len(plan.gpu_ids)
    lines += [
        "",
        f"{problem.model.name} on {cluster.name} ({used} of {cluster.num_gpus} GPUs in {len(plan.groups)} replicas, "
        f"${cluster.price_per_hour:.2f}/hour), workload {problem.workload.name} at {problem.rate_rps:.3g} req/s",
        f"predicted: goodput {best.goodput_rps:.3g} req/s; at {problem.rate_rps:.3g} req/s "
        f"{best.slo_attainment:.1%} of requests meet the SLO (target {slo.attainment:.0%})",
        f"           TTFT p90 {_seconds(best.ttft_p90_s)} (SLO {slo.ttft_s:.3g} s), "
        f"TPOT p90 {_seconds(best.tpot_p90_s)} (SLO {slo.tpot_s:.3g} s), KV on the wire at {problem.kv_bits} bits",
        f"searched {result.num_evaluations} groupings in {result.elapsed_s:.2f} s "
        f"(best found after {result.time_to_best_s:.2f} s)",
    ]
    return "\n".join(lines)


def _shares(plan) -> dict[int, float]:
    """Share of requests each group serves: prefill shares, and KV received for decode groups."""
    shares = dict(plan.routing.prefill)
    for _, d, share in plan.routing.kv:
        if plan.group(d).role == "decode":
            shares[d] = shares.get(d, 0.0) + share
    return shares


def _gpu_ranges(gpus) -> str:
    """'a40-0/0-3 a6000-1/0,2' style: GPUs grouped by host in order, indices compressed into ranges."""
    by_host: dict[str, list[int]] = {}
    for gpu in gpus:
        host, _, index = gpu.rpartition("/")
        by_host.setdefault(host, []).append(int(index))
    parts = []
    for host, indices in by_host.items():
        runs, start = [], indices[0]
        for prev, cur in zip(indices, indices[1:] + [None], strict=True):
            if cur != prev + 1:
                runs.append(str(start) if start == prev else f"{start}-{prev}")
                start = cur
        parts.append(f"{host}/{','.join(runs)}")
    return " ".join(parts)


def _types(gpus, cluster) -> str:
    """'6xA6000+6xA40': GPU types of a group with their counts, in order of first appearance."""
    counts: dict[str, int] = {}
    for gpu in gpus:
        name = cluster.gpu(gpu).name
        counts[name] = counts.get(name, 0) + 1
    return "+".join(f"{n}x{name}" for name, n in counts.items())


def _seconds(value: float) -> str:
    return "unbounded" if not value < 1e5 else f"{value:.3g} s"
