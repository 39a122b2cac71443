"""A pipeline-parallel prefill replica is a flow shop: stages overlap across batches, in order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sims.core import Simulator
from sims.ledger import Ledger
from sims.replica import PrefillReplica, stage_times_s
from swarm.plan import Deployment, group_cost
from swarm.wire.plan import Stage


@dataclass
class FakeCost:
    """Stage times proportional to the batch's tokens (seconds per 1000 tokens, per stage)."""

    per_1k_s: tuple[float, ...]
    max_kv_tokens: int = 100_000

    @property
    def pp(self) -> int:
        return len(self.per_1k_s)

    def _prefill_stages(self, num_tokens, num_seqs):
        return np.array([t * num_tokens / 1000 for t in self.per_1k_s])


def _run(per_1k_s, prompts, arrivals=None):
    sim = Simulator()
    n = len(prompts)
    ledger = Ledger(
        np.zeros(n) if arrivals is None else np.array(arrivals), np.array(prompts), np.ones(n, int)
    )
    replica = PrefillReplica(sim, 0, FakeCost(per_1k_s), ledger, lambda r, b: None)
    for rid in range(n):
        sim.at(float(ledger.arrival_s[rid]), replica.submit, rid)
    sim.run()
    return ledger.first_token_s, replica


def test_saturated_pipeline_finishes_one_batch_per_busiest_stage():
    done_s, replica = _run((1.0, 3.0), [4000] * 4)  # one 4000-token prompt per batch
    assert list(done_s) == pytest.approx([16.0, 28.0, 40.0, 52.0])  # 4 + 12, then every 12 s
    assert replica.busy_s == pytest.approx(48.0)  # the busiest stage


def test_a_lone_batch_takes_the_sum_of_its_stages():
    done_s, _ = _run((1.0, 3.0, 2.0), [1000])
    assert done_s[0] == pytest.approx(6.0)


def test_short_prompt_waits_behind_a_long_one_at_each_stage():
    # long: stages 4 s, 4 s (leaves at 8); short enters stage 0 at 4, ends stage 1 at 8 + 0.5
    done_s, _ = _run((1.0, 1.0), [4000, 500], arrivals=[0.0, 0.1])
    assert list(done_s) == pytest.approx([8.0, 8.5])


def test_stage_times_add_up_to_the_cost_model(problem):
    ids = problem.cluster.gpu_ids
    stages = (Stage((ids[0],), (0, 16)), Stage((ids[2],), (16, 32)))  # across the 10 Gbit/s link
    cost = group_cost(problem, Deployment((ids[0], ids[2]), "prefill", 1, 2, stages))
    assert cost.pp == 2
    assert sum(stage_times_s(cost, 3000, 2)) == pytest.approx(float(cost.prefill_s(3000, 2)), rel=1e-12)
    assert max(stage_times_s(cost, 3000, 2)) == pytest.approx(
        float(cost.prefill_interval_s(3000, 2)), rel=1e-12
    )


def test_silent_failure_is_noticed_by_the_membership_timeouts():
    from sims.detection import HEARTBEAT_S, TICK_S, detected_at_s
    from swarm.proto.membership import MembershipConfig

    cfg, hosts = MembershipConfig(), ["a", "b", "c"]
    on_time_s = cfg.dead_after_for([HEARTBEAT_S] * cfg.gap_window)  # heartbeats on time: 3 x 0.5 s
    assert on_time_s == pytest.approx(1.5)
    for seed in range(4):
        silent_s = detected_at_s(hosts, ["b"], 60.0, how="silent", seed=seed) - 60.0
        assert on_time_s - HEARTBEAT_S < silent_s <= on_time_s + TICK_S + 1e-9
        killed_s = detected_at_s(hosts, ["b"], 60.0, how="killed", seed=seed) - 60.0
        assert cfg.disconnect_grace_s <= killed_s <= cfg.disconnect_grace_s + TICK_S + 1e-9


def test_detector_uses_the_daemons_heartbeat_and_tick():
    from sims.detection import HEARTBEAT_S, TICK_S
    from swarm.net.liveness import LivenessConfig

    config = LivenessConfig()
    assert (config.heartbeat_interval_s, config.tick_s) == (HEARTBEAT_S, TICK_S)
