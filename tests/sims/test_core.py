"""The event core: ordering, tie-break, cancellation, and whole-run determinism."""

from __future__ import annotations

import pytest

from sims.cluster_sim import ClusterSim
from sims.core import Simulator
from sims.errors import SimError
from sims.workloads import resample


def test_equal_times_run_in_scheduling_order():
    sim, seen = Simulator(), []
    for name in "abc":
        sim.at(1.0, seen.append, name)
    sim.at(0.5, seen.append, "first")
    sim.run()
    assert seen == ["first", "a", "b", "c"]
    assert sim.now_s == 1.0


def test_cancelled_event_never_runs():
    sim, seen = Simulator(), []
    handle = sim.at(1.0, seen.append, "x")
    sim.at(2.0, seen.append, "y")
    Simulator.cancel(handle)
    sim.run()
    assert seen == ["y"]


def test_scheduling_in_the_past_is_refused():
    sim = Simulator()
    sim.at(2.0, lambda: None)
    sim.run()
    with pytest.raises(SimError):
        sim.at(1.0, lambda: None)


def test_run_until_stops_before_later_events():
    sim, seen = Simulator(), []
    sim.at(1.0, seen.append, 1)
    sim.at(3.0, seen.append, 3)
    sim.run(until_s=2.0)
    assert seen == [1] and sim.now_s == 2.0


def _trace(problem, plan, seed, routing="load"):
    ledger = resample(problem.workload, 4.0, 60.0, seed=1)
    sim = ClusterSim(problem, plan, ledger, seed=seed, routing=routing, record=True)
    sim.run()
    return sim.sim.trace, ledger.done_s.copy()


@pytest.mark.parametrize("routing", ["load", "random"])
def test_same_seed_gives_the_same_event_trace(problem, wide_plan, routing):
    trace_a, done_a = _trace(problem, wide_plan, 7, routing)
    trace_b, done_b = _trace(problem, wide_plan, 7, routing)
    assert len(trace_a) > 100
    assert trace_a == trace_b
    assert (done_a == done_b).all()


def test_another_seed_draws_other_routes(problem, wide_plan):
    trace_a, _ = _trace(problem, wide_plan, 7, "random")
    trace_b, _ = _trace(problem, wide_plan, 8, "random")
    assert trace_a != trace_b


def test_load_routing_spreads_requests_over_equal_replicas(problem, wide_plan):
    ledger = resample(problem.workload, 8.0, 60.0, seed=2)
    sim = ClusterSim(problem, wide_plan, ledger, seed=0)
    served = {}
    for gid, replica in sim.replicas.items():
        if replica.role == "decode":
            replica.on_finished = lambda rid, gid=gid: served.__setitem__(gid, served.get(gid, 0) + 1)
    sim.run()
    counts = sorted(served.values())
    assert len(counts) == 2 and counts[0] > 0.35 * sum(counts)
