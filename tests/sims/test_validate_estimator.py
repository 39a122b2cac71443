"""The estimator against the simulator on one small plan (`sims.validate_estimator`)."""

from __future__ import annotations

import math

import pytest

from sims.validate_estimator import compare
from swarm.plan.evaluate import evaluate


@pytest.fixture(scope="module")
def rows_by_rate(problem):
    ids = problem.cluster.gpu_ids
    found = evaluate(problem, [([ids[0]], "prefill"), ([ids[2]], "prefill"), ([ids[1]], "decode"),
                               ([ids[3]], "decode")])
    goodput = found.goodput_rps
    rows = compare(problem, found.plan, [0.5 * goodput, 2.0 * goodput], duration_s=60.0, seed=0)
    return goodput, {rate: [r for r in rows if r["rate_rps"] == rate] for rate in (0.5 * goodput, 2.0 * goodput)}


def test_rows_cover_every_group_and_every_request(rows_by_rate):
    _, by_rate = rows_by_rate
    for rows in by_rate.values():
        kinds = [r["kind"] for r in rows]
        assert kinds.count("all") == 1 and kinds.count("prefill") == 2 and kinds.count("decode") == 2
        for side in ("prefill", "decode"):
            assert sum(r["share_sim"] for r in rows if r["kind"] == side) == pytest.approx(1.0)
            assert sum(r["share_pred"] for r in rows if r["kind"] == side) == pytest.approx(1.0)


def test_estimator_and_simulator_agree_below_and_above_the_goodput(rows_by_rate):
    """Half the predicted goodput meets the SLO in both, twice it in neither; at half the goodput the
    median TTFT and TPOT agree within 30%."""
    goodput, by_rate = rows_by_rate
    low, high = (by_rate[r][0] for r in sorted(by_rate))
    assert low["attainment_pred"] >= 0.9 and low["attainment_sim"] >= 0.9
    assert high["attainment_pred"] < 0.9 and high["attainment_sim"] < 0.9
    for name in ("ttft_p50", "tpot_p50"):
        predicted, simulated = low[f"{name}_pred"], low[f"{name}_sim"]
        assert math.isfinite(predicted) and predicted == pytest.approx(simulated, rel=0.3)


def test_the_estimator_admits_decode_sequences_at_the_simulated_engine_watermark():
    """The estimator's KV admission limit is the share of memory the simulated engine admits to."""
    from sims.replica import WATERMARK
    from swarm.plan.profiles import KV_ADMIT_SHARE

    assert KV_ADMIT_SHARE == WATERMARK
