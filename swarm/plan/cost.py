"""The cost model: prefill and decode step time of one replica, its KV capacity, and KV transfer time.

How it works (a roofline per pipeline stage, as in DistServe's and ThunderServe's estimators). A stage
of `tp` GPUs holding `L` layers processes `n` new tokens (for `g` of which it computes logits, if it
holds the head) while reading `K` KV bytes per layer and doing `A` attention FLOPs per layer:

    compute_s = (n * F_layer * L + g * F_head + A * L / eff.attention) / (tp * tflops * 1e12 * eff.compute)
    memory_s  = (W_stage + K * L / eff.attention) / (tp * mem_bw * 1e9 * eff.memory)
    allreduce_s = 2 * L * (2 (tp-1)/tp * n * hidden * 2 B / link_Bps + lat)   # ring, 2 per layer (tp>1)
    send_s    = n * hidden * 2 B / link_Bps(stage -> next stage) + lat          # not after the last stage
    t_stage   = max(compute_s, memory_s) + (1 - eff.overlap) min(compute_s, memory_s)
                + allreduce_s + send_s + L * eff.layer_overhead_s

with F_layer = 2 x matmul params of a layer, F_head = 2 * vocab * hidden, W_stage the stage's weight
bytes (its layers plus the head on the last stage), link_Bps = gbps * 1e9 / 8 * eff.network.

  * prefill of n tokens in s sequences: g = s, A = 2 * hidden * n^2 / s (causal), K = n * kv_layer
    (the KV written). Latency = sum of stages; a pipeline accepts a new prefill every max-stage time
    (`prefill_interval_s`), which is what a prefill queue sees as service time. Prompts keep their
    order through the stages, so a short prompt right behind a long one (latencies t < T) finishes at
    T + t/pp rather than t: the estimator adds the expected (T - t)+ (pp - 1)/pp for the batch ahead,
    weighted by the chance that one is inside the pipeline (estimate.py). Capacity is unchanged: a
    saturated flow shop of equal-stage jobs still finishes one job per mean interval.
  * decode step of a batch of B sequences holding C KV tokens in all: n = g = B, A = 4 * hidden * C,
    K = (C + B) * kv_layer. Pipelines micro-batch: the batch is split in m = min(pp, B) micro-batches
    that circulate through the stages, so every sequence advances one token per
        step = max(sum_s t_s(B/m, C/m), m * max_s t_s(B/m, C/m))
    (the first term is one micro-batch's trip, the second the busiest stage). pp = 1 gives t(B, C).
  * memory: per GPU, MEMORY_UTILISATION of its memory, minus its share of the stage weights and an
    activation reserve, holds KV; the group's KV capacity is the minimum over stages (tokens).
  * KV on the wire: kv_bits 16 / 8 / 4 cost 16 / 8.5 / 4.5 bits per element (fp16 scale and minimum
    per group of 64), so 4-bit is 0.28x of fp16. Between two groups, each (prefill stage, decode stage)
    pair moves the KV of the layers they share over its hosts' link, all in parallel: the host pair
    with the largest share / bandwidth bounds the transfer (`kv_route`, as the simulator routes it).

All inputs may be numpy arrays (broadcast), so the estimator evaluates thousands of requests at once.
`Efficiency` is the fraction of peak a GPU type achieves. Two of its terms exist for CPUs and are neutral
(1) on GPUs: `attention` scales the rates further for the work on the KV cache (attention FLOPs, KV
reads), which runs below the matmul and weight-streaming rates where attention is not a fused kernel
(on one CPU thread: a gather of the paged cache, small batched matmuls and a softmax, op by op); and
`overlap` is how much of the shorter of compute and memory time hides under the longer (the roofline's
max is overlap 1; one CPU core running a model op by op streams weights and computes one after the
other, about 0). On GPUs both stay 1: Vidur's profiles, the GPU calibration's data, leave attention
out, and the roofline fits them within 6-9% (docs/results.md section 0). The calibrated figures per GPU
type are package
data (`swarm/plan/data/efficiency.json`, fitted to Vidur's measured profiles by `python -m sims.calibrate
--write`, provenance inside): `Problem(efficiency=None)` uses them, so `swarm plan`, the daemon and the
simulator share one table; GPU types it lacks get DEFAULT_EFFICIENCY.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from swarm.hardware import Cluster, GpuSpec, Host
from swarm.models import ModelSpec
from swarm.plan.errors import PlanError
from swarm.plan.problem import Problem

if TYPE_CHECKING:
    from swarm.plan.parallel import Deployment

MEMORY_UTILISATION = 0.9  # like vLLM's gpu_memory_utilization: the rest is CUDA context and fragmentation
ACTIVATION_TOKENS = 2048  # activation reserve: one prefill chunk of this many tokens
MIN_KV_TOKENS = 2048  # a group must hold at least one sequence this long to be deployable
INTRA_HOST_LATENCY_S = 10e-6
KV_WIRE_BITS = {16: 16.0, 8: 8.5, 4: 4.5}


@dataclass(frozen=True)
class Efficiency:
    """Fraction of peak that a GPU type achieves, plus a fixed per-layer cost (kernel launches).

    `attention` is the fraction of those rates that the work on the KV cache achieves (1: as fast as
    the matmuls and the weight reads); `overlap` the fraction of the shorter of a stage's compute and
    memory times that hides under the longer (1: the roofline's max; 0: their sum)."""

    compute: float
    memory: float
    network: float
    layer_overhead_s: float = 0.0
    attention: float = 1.0
    overlap: float = 1.0

    def __post_init__(self) -> None:
        for name in ("compute", "memory", "network", "attention"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise PlanError(f"efficiency {name} must be a fraction of peak in (0, 1], got {value!r}")
        if not 0 <= self.overlap <= 1:
            raise PlanError(f"efficiency overlap must be a fraction in [0, 1], got {self.overlap!r}")
        if self.layer_overhead_s < 0:
            raise PlanError(f"efficiency layer_overhead_s must be >= 0, got {self.layer_overhead_s!r}")


DEFAULT_EFFICIENCY = Efficiency(compute=0.55, memory=0.8, network=0.7)
EFFICIENCY_DATA = "data/efficiency.json"  # in the swarm.plan package


@functools.cache
def calibrated_efficiency() -> dict[str, Efficiency]:
    """Per GPU type name, the calibrated `Efficiency` of the package data (`EFFICIENCY_DATA`)."""
    text = resources.files("swarm.plan").joinpath(EFFICIENCY_DATA).read_text(encoding="utf-8")
    try:
        gpus = json.loads(text)["gpus"]
        return {name: Efficiency(compute=float(e["compute"]), memory=float(e["memory"]),
                                 network=float(e["network"]), layer_overhead_s=float(e["layer_overhead_s"]),
                                 attention=float(e["attention"]), overlap=float(e["overlap"]))
                for name, e in gpus.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"swarm/plan/{EFFICIENCY_DATA} is malformed ({exc!r}): regenerate it with "
                        "`python -m sims.calibrate --write`") from exc


class HostIndex:
    """Host lookups of one cluster by GPU id and by name (`Cluster.host_of` scans the host list)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.host_of: dict[str, Host] = {g: h for h in cluster.hosts for g in h.gpu_ids}
        self.by_name: dict[str, Host] = {h.name: h for h in cluster.hosts}

    def gpu(self, gpu_id: str) -> GpuSpec:
        return self.host_of[gpu_id].gpu

    def host_gbps(self, a: str, b: str) -> float:
        """`Cluster.host_gbps` without the scan."""
        if a == b:
            return self.by_name[a].intra_gbps
        return self.cluster.links.get(frozenset((a, b)), self.cluster.default_gbps)


_HOST_INDEXES: dict[int, tuple[weakref.ref, HostIndex]] = {}


def host_index(cluster: Cluster) -> HostIndex:
    """The (cached, while `cluster` lives) HostIndex of `cluster`."""
    key = id(cluster)
    entry = _HOST_INDEXES.get(key)
    if entry is None or entry[0]() is not cluster:
        entry = (weakref.ref(cluster, lambda _, key=key, cache=_HOST_INDEXES: cache.pop(key, None)), HostIndex(cluster))
        _HOST_INDEXES[key] = entry
    return entry[1]


def efficiency_of(efficiency: Mapping[str, Efficiency] | None, gpu_name: str) -> Efficiency:
    """The efficiency of a GPU type in `efficiency` ("default" key, then DEFAULT_EFFICIENCY, as fallbacks);
    `efficiency=None` is the package's calibrated table (`calibrated_efficiency`)."""
    if efficiency is None:
        efficiency = calibrated_efficiency()
    if not efficiency:
        return DEFAULT_EFFICIENCY
    return efficiency.get(gpu_name) or efficiency.get("default") or DEFAULT_EFFICIENCY


def activation_reserve_bytes(model: ModelSpec, tp: int) -> float:
    """Per-GPU memory kept for activations of one ACTIVATION_TOKENS-token prefill chunk."""
    per_token = 4 * model.hidden_size + 3 * model.intermediate_size / tp
    return ACTIVATION_TOKENS * per_token * model.dtype_bytes


@dataclass(frozen=True, eq=False)
class GroupCost:
    """Step times and KV capacity of one deployment; per-stage constants are (pp, 1) arrays."""

    model: ModelSpec
    tp: int
    pp: int
    num_layers: np.ndarray
    is_last: np.ndarray
    flops_per_s: np.ndarray
    bytes_per_s: np.ndarray
    attention: np.ndarray
    overlap: np.ndarray
    weight_bytes: np.ndarray
    overhead_s: np.ndarray
    allreduce_bps: np.ndarray
    send_bps: np.ndarray
    send_latency_s: np.ndarray
    max_kv_tokens: int

    @property
    def fits(self) -> bool:
        """Weights fit with room for at least one MIN_KV_TOKENS sequence."""
        return self.max_kv_tokens >= MIN_KV_TOKENS

    def stage_times_s(self, new_tokens, logit_tokens, attention_flops_layer, kv_bytes_layer) -> np.ndarray:
        """Per-stage time (pp, ...) for the given per-stage work; inputs broadcast against (1, ...)."""
        n, g, a, k = (np.asarray(x, dtype=np.float64)
                      for x in (new_tokens, logit_tokens, attention_flops_layer, kv_bytes_layer))
        shape = (self.pp,) + (1,) * max(n.ndim, g.ndim, a.ndim, k.ndim)
        per_token, per_logit, per_attention, weights_s, per_kv, per_hidden, fixed_s = (
            c.reshape(shape) for c in self._coefficients)
        compute_s = n * per_token + g * per_logit + a * per_attention
        memory_s = weights_s + k * per_kv
        busy_s = np.maximum(compute_s, memory_s)
        if self._has_serial_part:
            busy_s = busy_s + (1.0 - self.overlap.reshape(shape)) * np.minimum(compute_s, memory_s)
        return busy_s + (n * per_hidden + fixed_s)

    @cached_property
    def _has_serial_part(self) -> bool:
        """Whether some stage does not overlap compute with memory traffic fully (CPUs; GPUs do)."""
        return bool((self.overlap < 1.0).any())

    @cached_property
    def _coefficients(self) -> tuple[np.ndarray, ...]:
        """The module docstring's t_stage as max(n a + g b + A c, d + K e) + n f + h, per stage (pp,):
        computed once per deployment, so a call costs a dozen array operations."""
        model, tp, layers = self.model, self.tp, self.num_layers.ravel()
        flops, bandwidth, attention = self.flops_per_s.ravel(), self.bytes_per_s.ravel(), self.attention.ravel()
        hidden_bytes = model.hidden_size * model.dtype_bytes
        per_hidden = hidden_bytes / self.send_bps.ravel()
        fixed_s = self.send_latency_s.ravel() + self.overhead_s.ravel()
        if tp > 1:
            per_hidden = per_hidden + 2 * layers * 2 * (tp - 1) / tp * hidden_bytes / self.allreduce_bps.ravel()
            fixed_s = fixed_s + 2 * layers * INTRA_HOST_LATENCY_S
        return (_layer_flops(model) * layers / flops, self.is_last.ravel() * _head_flops(model) / flops,
                layers / (flops * attention), self.weight_bytes.ravel() / bandwidth, layers / (bandwidth * attention),
                per_hidden, fixed_s)

    def _prefill_stages(self, num_tokens, num_seqs) -> np.ndarray:
        n = np.asarray(num_tokens, dtype=np.float64)
        s = np.asarray(num_seqs, dtype=np.float64)
        attention = 2.0 * self.model.hidden_size * n * n / s
        return self.stage_times_s(n, s, attention, n * self.model.kv_bytes_per_token_layer)

    def prefill_s(self, num_tokens, num_seqs=1):
        """Latency of one prefill batch of `num_tokens` tokens in `num_seqs` equal sequences."""
        return _out(self._prefill_stages(num_tokens, num_seqs).sum(axis=0))

    def prefill_latency_and_interval_s(self, num_tokens, num_seqs=1) -> tuple:
        """Both `prefill_s` and `prefill_interval_s` from one pass over the stages."""
        stages = self._prefill_stages(num_tokens, num_seqs)
        return _out(stages.sum(axis=0)), _out(stages.max(axis=0))

    def prefill_interval_s(self, num_tokens, num_seqs=1):
        """Time between successive prefills the pipeline can accept (its busiest stage)."""
        return _out(self._prefill_stages(num_tokens, num_seqs).max(axis=0))

    def decode_step_s(self, batch_size, context_tokens):
        """Time for every sequence of a batch to get one token (`context_tokens`: KV tokens in all)."""
        b = np.asarray(batch_size, dtype=np.float64)
        c = np.asarray(context_tokens, dtype=np.float64)
        m = np.clip(b, 1.0, float(self.pp))  # micro-batches in flight
        mb, mc = b / m, c / m
        per_layer_kv = self.model.kv_bytes_per_token_layer
        stages = self.stage_times_s(mb, mb, 4.0 * self.model.hidden_size * mc, (mc + mb) * per_layer_kv)
        return _out(np.maximum(stages.sum(axis=0), m * stages.max(axis=0)))

    def max_decode_batch(self, tpot_s: float, context_per_seq_tokens: float) -> float:
        """Largest (fractional) batch whose step is within `tpot_s` and whose KV fits; 0 if none."""
        by_memory = self.max_kv_tokens / max(context_per_seq_tokens, 1.0)
        batches = np.concatenate(([0.0], np.geomspace(0.25, max(by_memory, 0.5), 96)))
        steps = self.decode_step_s(batches, batches * context_per_seq_tokens)
        ok = steps <= tpot_s
        if not ok[0]:
            return 0.0
        if ok.all():
            return float(min(batches[-1], by_memory))
        i = int(np.argmin(ok)) - 1  # last batch within the target
        lo, hi, s_lo, s_hi = batches[i], batches[i + 1], steps[i], steps[i + 1]
        return float(min(lo + (hi - lo) * (tpot_s - s_lo) / (s_hi - s_lo), by_memory))

    def decode_tokens_per_s(self, tpot_s: float, context_per_seq_tokens: float) -> float:
        """Decode throughput at the largest batch that keeps the step within `tpot_s`."""
        batch = self.max_decode_batch(tpot_s, context_per_seq_tokens)
        if batch <= 0:
            return 0.0
        return batch / float(self.decode_step_s(batch, batch * context_per_seq_tokens))


def build_group_cost(cluster: Cluster, model: ModelSpec, efficiency: Mapping[str, Efficiency] | None,
                     deployment: Deployment) -> GroupCost:
    """Precompute the per-stage constants of `deployment` (see the module docstring for the formulas)."""
    stages = deployment.stages
    tp, pp = deployment.tp, len(stages)
    index = host_index(cluster)
    hosts = [index.host_of[s.gpus[0]] for s in stages]
    gpus = [h.gpu for h in hosts]
    effs = [efficiency_of(efficiency, g.name) for g in gpus]
    num_layers = _col([s.layers[1] - s.layers[0] for s in stages])
    is_last = _col([0.0] * (pp - 1) + [1.0])
    head_bytes = model.vocab_size * model.hidden_size * model.dtype_bytes
    send_bps, send_lat = [], []
    for i in range(pp - 1):
        a, b = hosts[i].name, hosts[i + 1].name
        send_bps.append(index.host_gbps(a, b) * 1e9 / 8 * effs[i].network)
        send_lat.append(INTRA_HOST_LATENCY_S if a == b else cluster.latency_s)
    pairs = list(zip(gpus, effs, strict=True))
    return GroupCost(
        model=model, tp=tp, pp=pp, num_layers=num_layers, is_last=is_last,
        flops_per_s=_col([tp * g.tflops * 1e12 * e.compute for g, e in pairs]),
        bytes_per_s=_col([tp * g.memory_bandwidth_gbs * 1e9 * e.memory for g, e in pairs]),
        attention=_col([e.attention for e in effs]), overlap=_col([e.overlap for e in effs]),
        weight_bytes=num_layers * model.layer_bytes + is_last * head_bytes,
        overhead_s=_col([e.layer_overhead_s for e in effs]) * num_layers,
        allreduce_bps=_col([h.intra_gbps * 1e9 / 8 * e.network for h, e in zip(hosts, effs, strict=True)]),
        send_bps=_col(send_bps + [np.inf]), send_latency_s=_col(send_lat + [0.0]),
        max_kv_tokens=_kv_capacity(model, tp, gpus, stages))


def _kv_capacity(model: ModelSpec, tp: int, gpus, stages) -> int:
    """KV tokens the group holds: per stage, free memory after weights and activations, min over stages."""
    tokens = []
    for gpu, stage in zip(gpus, stages, strict=True):
        a, b = stage.layers
        free = (gpu.memory_bytes * MEMORY_UTILISATION - model.stage_weight_bytes(a, b) / tp
                - activation_reserve_bytes(model, tp))
        tokens.append(free * tp / (model.kv_bytes_per_token_layer * (b - a)))
    return max(0, int(min(tokens)))


def _col(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def _layer_flops(model: ModelSpec) -> float:
    return 2.0 * (model.params_per_layer - 2 * model.hidden_size)


def _head_flops(model: ModelSpec) -> float:
    return 2.0 * model.vocab_size * model.hidden_size


def _out(value: np.ndarray):
    return float(value) if np.ndim(value) == 0 else value


_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def group_cost(problem: Problem | tuple, deployment: Deployment) -> GroupCost:
    """The cost model of a deployment; `problem` is a Problem (cached) or (cluster, model, efficiency)."""
    if not isinstance(problem, Problem):
        cluster, model, efficiency = problem
        return build_group_cost(cluster, model, efficiency, deployment)
    cache = _COSTS.setdefault(problem, {})
    cost = cache.get(deployment)
    if cost is None:
        cost = cache[deployment] = build_group_cost(problem.cluster, problem.model, problem.efficiency,
                                                     deployment)
    return cost


def kv_wire_bytes(model: ModelSpec, num_tokens, kv_bits: int):
    """Bytes of a prompt's KV cache on the wire at `kv_bits` (scales and minima included)."""
    return np.asarray(num_tokens, dtype=np.float64) * model.kv_bytes_per_token * KV_WIRE_BITS[kv_bits] / 16.0


def kv_transfer_s(model: ModelSpec, num_tokens, gbps: float, kv_bits: int, latency_s: float = 0.0):
    """Seconds to send the KV of `num_tokens` prompt tokens over a `gbps` (Gbit/s) link."""
    return _out(kv_wire_bytes(model, num_tokens, kv_bits) * 8 / (gbps * 1e9) + latency_s)


@dataclass(frozen=True)
class KvRoute:
    """The host pair that bounds a KV transfer between two groups, and the share of bytes it carries."""

    src_host: str
    dst_host: str
    share: float  # fraction of the KV bytes crossing this host pair
    gbps: float  # the pair's link, after the sending GPU type's network efficiency
    latency_s: float

    def seconds_per_byte(self) -> float:
        """Link time one byte of the whole transfer costs (only `share` of the bytes cross this link)."""
        return self.share * 8 / (self.gbps * 1e9)


def kv_route(problem: Problem, prefill: Deployment, decode: Deployment) -> KvRoute:
    """The slowest host pair for KV from `prefill` to `decode` (ties: the largest pair of names).

    Each layer's KV goes from the prefill stage holding it to the decode stage holding it; all host
    pairs move their share in parallel, so the pair with the largest share / bandwidth decides.
    """
    cluster, num_layers = problem.cluster, problem.model.num_layers
    index = host_index(cluster)
    share: dict[tuple[str, str], float] = {}
    for ps in prefill.stages:
        src = index.host_of[ps.gpus[0]].name
        for ds in decode.stages:
            overlap = min(ps.layers[1], ds.layers[1]) - max(ps.layers[0], ds.layers[0])
            if overlap > 0:
                key = (src, index.host_of[ds.gpus[0]].name)
                share[key] = share.get(key, 0.0) + overlap / num_layers
    (src, dst), frac = max(share.items(), key=lambda kv: (kv[1] / index.host_gbps(*kv[0]), kv[0]))
    network = efficiency_of(problem.efficiency, index.by_name[src].gpu.name).network
    latency_s = INTRA_HOST_LATENCY_S if src == dst else cluster.latency_s
    return KvRoute(src, dst, frac, index.host_gbps(src, dst) * network, latency_s)


def kv_link(problem: Problem, prefill: Deployment, decode: Deployment) -> tuple[float, float]:
    """(effective Gbit/s of the whole transfer, latency s) from `prefill` to `decode` (see `kv_route`)."""
    route = kv_route(problem, prefill, decode)
    return route.gbps / route.share, route.latency_s
