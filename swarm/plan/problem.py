"""The planning problem: cluster, model, workload, SLO targets and the rate to plan for.

`Problem` is immutable and compared by identity, so planner caches can be keyed on it (weakly); the
(prompt, output) length sample the estimator uses is drawn once per problem with a fixed seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from swarm.hardware import Cluster, gpu_spec
from swarm.models import ModelSpec
from swarm.plan.errors import PlanError
from swarm.workloads import Workload

if TYPE_CHECKING:
    from swarm.plan.cost import Efficiency

KV_BITS = (4, 8, 16)
NUM_LENGTH_SAMPLES = 2_000
LENGTH_SEED = 0
# Base SLO = these multiples of an ideal single-request time on one A100-80G (see `base_slo`).
BASE_TTFT_FACTOR = 5.0
BASE_TPOT_FACTOR = 4.0
_REFERENCE_GPU = "A100-80G"
_REFERENCE_COMPUTE_EFFICIENCY = 0.55
_REFERENCE_MEMORY_EFFICIENCY = 0.8


@dataclass(frozen=True)
class Slo:
    """Latency targets: time to first token, time per output token, and the share that must meet both."""

    ttft_s: float
    tpot_s: float
    attainment: float = 0.9

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise PlanError(f"SLO {name} must be a positive number of seconds, got {value!r}")
        if not 0 < self.attainment <= 1:
            raise PlanError(f"SLO attainment must be in (0, 1], got {self.attainment!r} (e.g. 0.9 for 90%)")

    def scaled(self, factor: float) -> Slo:
        """Both latency targets times `factor` (the "SLO scale" of DistServe and ThunderServe)."""
        return replace(self, ttft_s=self.ttft_s * factor, tpot_s=self.tpot_s * factor)


def base_slo(model: ModelSpec, workload: Workload) -> Slo:
    """The SLO at scale 1.0, DistServe/ThunderServe style: a fixed multiple of the ideal latency.

    TTFT: BASE_TTFT_FACTOR x the roofline prefill time of the workload's mean prompt on one A100-80G;
    TPOT: BASE_TPOT_FACTOR x the roofline batch-1 decode step there (weights plus the mean context's
    KV read once). Both include the A100's calibrated fixed cost per layer (`cost.calibrated_efficiency`),
    as every step time of the cost model does: without it a small model's SLO would be shorter than any
    GPU's per-layer launch overhead, and no plan could meet it. The reference ignores whether the model
    fits one A100: it is only a yardstick.
    """
    from swarm.plan.cost import DEFAULT_EFFICIENCY, calibrated_efficiency

    ref = gpu_spec(_REFERENCE_GPU)
    flops_per_s = ref.tflops * 1e12 * _REFERENCE_COMPUTE_EFFICIENCY
    bytes_per_s = ref.memory_bandwidth_gbs * 1e9 * _REFERENCE_MEMORY_EFFICIENCY
    fixed_s = model.num_layers * calibrated_efficiency().get(_REFERENCE_GPU, DEFAULT_EFFICIENCY).layer_overhead_s
    prompt = workload.mean_prompt_tokens
    prefill_flops = prompt * model.flops_per_token + model.attention_flops(prompt, prompt) / 2
    prefill_s = max(prefill_flops / flops_per_s, model.weight_bytes / bytes_per_s) + fixed_s
    context = prompt + workload.mean_output_tokens / 2
    decode_s = (model.weight_bytes + context * model.kv_bytes_per_token) / bytes_per_s + fixed_s
    return Slo(ttft_s=BASE_TTFT_FACTOR * prefill_s, tpot_s=BASE_TPOT_FACTOR * decode_s)


@dataclass(frozen=True, eq=False)
class Problem:
    """What to plan: serve `model` on `cluster` for `workload` at `rate_rps` within `slo`."""

    cluster: Cluster
    model: ModelSpec
    workload: Workload
    slo: Slo
    rate_rps: float
    kv_bits: int = 4  # KV format on the prefill->decode wire (16 = uncompressed)
    orchestrate: bool = True  # False = uniform routing (the ablation baseline)
    efficiency: dict[str, Efficiency] | None = None  # per GPU type; None = the calibrated package data ({}: defaults)

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_rps, int | float) and math.isfinite(self.rate_rps) and self.rate_rps > 0):
            raise PlanError(f"rate_rps must be a positive number of requests per second, got {self.rate_rps!r}")
        if self.kv_bits not in KV_BITS:
            raise PlanError(f"kv_bits must be one of {KV_BITS} (16 = uncompressed), got {self.kv_bits!r}")
        if self.cluster.num_gpus == 0:
            raise PlanError(f"cluster {self.cluster.name!r} has no GPUs left to plan on")

    @cached_property
    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(prompt_tokens, output_tokens) float arrays: NUM_LENGTH_SAMPLES pairs, fixed seed, read-only."""
        prompts, outputs = self.workload.lengths_sample(NUM_LENGTH_SAMPLES, seed=LENGTH_SEED)
        prompts, outputs = prompts.astype(np.float64), outputs.astype(np.float64)
        prompts.flags.writeable = False
        outputs.flags.writeable = False
        return prompts, outputs

    @cached_property
    def mean_prompt_tokens(self) -> float:
        return float(self.lengths[0].mean())

    @cached_property
    def decode_context_tokens(self) -> float:
        """Mean KV tokens of a sequence while it decodes, weighted by time in the batch: E[o(p+o/2)]/E[o]."""
        prompts, outputs = self.lengths
        return float((outputs * (prompts + outputs / 2)).sum() / outputs.sum())

    @cached_property
    def decode_context_variance(self) -> float:
        """Time-weighted variance of one decoding sequence's KV tokens (its context grows p -> p + o)."""
        prompts, outputs = self.lengths
        mean = self.decode_context_tokens
        second = (outputs * ((prompts + outputs / 2) ** 2 + outputs ** 2 / 12)).sum() / outputs.sum()
        return float(max(second - mean * mean, 0.0))

    @cached_property
    def gpu_order(self) -> dict[str, int]:
        """Each GPU id's position in the cluster (the canonical order of GPUs everywhere in the plan)."""
        return {gpu_id: i for i, gpu_id in enumerate(self.cluster.gpu_ids)}

    def with_rate(self, rate_rps: float) -> Problem:
        return replace(self, rate_rps=rate_rps)

    def with_cluster(self, cluster: Cluster) -> Problem:
        return replace(self, cluster=cluster)
