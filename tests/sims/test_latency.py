"""A lone request's simulated latency is exactly what the cost model says."""

from __future__ import annotations

import numpy as np
import pytest

from sims.ledger import DONE, Ledger
from sims.run import simulate
from swarm.plan import Deployment, group_cost, kv_transfer_s
from swarm.plan.cost import kv_link


@pytest.mark.parametrize("kv_bits", [4, 16])
def test_single_request_latency_equals_the_cost_model(problem, split_plan, kv_bits):
    from dataclasses import replace

    problem = replace(problem, kv_bits=kv_bits)
    prompt, output = 1500, 40
    ledger = Ledger(np.array([0.0]), np.array([prompt]), np.array([output]))
    simulate(problem, split_plan, ledger)
    prefill, decode = (Deployment.from_group(g) for g in split_plan.groups)
    assert prefill.role == "prefill" and decode.role == "decode"
    prefill_s = group_cost(problem, prefill).prefill_s(prompt, 1)
    gbps, latency_s = kv_link(problem, prefill, decode)
    kv_s = kv_transfer_s(problem.model, prompt, gbps, kv_bits, latency_s)
    steps = np.arange(output - 1)  # the first token comes from the prefill
    decode_s = float(np.sum(group_cost(problem, decode).decode_step_s(1, prompt + 1 + steps)))
    assert ledger.state[0] == DONE
    assert ledger.first_token_s[0] == pytest.approx(prefill_s, rel=1e-9)
    assert ledger.kv_s[0] == pytest.approx(kv_s, rel=1e-9)
    assert ledger.done_s[0] == pytest.approx(prefill_s + kv_s + decode_s, rel=1e-9)


def test_four_bit_kv_moves_faster_than_sixteen(problem, split_plan):
    from dataclasses import replace

    times = {}
    for bits in (4, 16):
        ledger = Ledger(np.array([0.0]), np.array([2000]), np.array([2]))
        simulate(replace(problem, kv_bits=bits), split_plan, ledger)
        times[bits] = ledger.kv_s[0]
    assert times[4] < 0.35 * times[16]


def test_colocated_request_has_no_kv_transfer(problem, colocated_plan):
    ledger = Ledger(np.array([0.0]), np.array([800]), np.array([10]))
    simulate(problem, colocated_plan, ledger)
    both = Deployment.from_group(colocated_plan.groups[0])
    cost = group_cost(problem, both)
    assert ledger.kv_s[0] == 0.0
    expected = cost.prefill_s(800, 1) + float(np.sum(cost.decode_step_s(1, 801 + np.arange(9))))
    assert ledger.done_s[0] == pytest.approx(expected, rel=1e-9)
