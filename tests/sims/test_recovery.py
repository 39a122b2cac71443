"""Installing a re-plan: break before make (the changed replicas stop for the whole reload) against make
before break (the old plan serves while the new weights are staged; only the cut-over pauses)."""

from __future__ import annotations

import numpy as np
import pytest

from sims import recovery
from sims.cluster_sim import ClusterSim
from sims.ledger import DONE
from sims.workloads import resample
from swarm.plan.evaluate import evaluate


def _run(problem, plan, new_plan, *, make_before_break: bool):
    ledger = resample(problem.workload, 3.0, 120.0, seed=3)
    sim = ClusterSim(problem, plan, ledger, seed=0)
    replanned = recovery.Replanned(new_plan, planner_s=0.5, reload_s=60.0, kind="full", cutover_s=2.0)
    ready_s = recovery.install(sim, 30.0, replanned, make_before_break=make_before_break)
    sim.run()
    return ledger, sim, ready_s


def test_make_before_break_keeps_serving_during_the_reload(problem, wide_plan):
    ids = problem.cluster.gpu_ids  # host a's two GPUs become one prefill group: a new layout to load
    new_plan = evaluate(problem, [(ids[0:2], "prefill"), ([ids[2]], "decode"), ([ids[3]], "decode")]).plan
    before, before_sim, before_ready = _run(problem, wide_plan, new_plan, make_before_break=False)
    after, after_sim, after_ready = _run(problem, wide_plan, new_plan, make_before_break=True)
    assert before_ready == after_ready == pytest.approx(90.5)
    assert [t for t, line in after_sim.log if line.startswith("install")] == [pytest.approx(88.5)]
    assert [t for t, line in before_sim.log if line.startswith("install")] == [pytest.approx(30.5)]
    assert (before.state == DONE).all() and (after.state == DONE).all()
    during = (after.arrival_s >= 35.0) & (after.arrival_s < 80.0)
    assert np.median(after.done_s[during] - after.arrival_s[during]) < np.median(
        before.done_s[during] - before.arrival_s[during]
    )


def test_a_notice_defers_the_install_and_a_lightweight_replan_has_no_cutover(problem, wide_plan):
    ledger = resample(problem.workload, 2.0, 60.0, seed=3)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    same = recovery.Replanned(wide_plan.with_epoch(1), planner_s=0.1, reload_s=0.0, kind="lightweight")
    assert recovery.install(sim, 10.0, same, make_before_break=True, not_before_s=35.0) == 35.0
    assert recovery.cutover_time_s([]) == 0.0
