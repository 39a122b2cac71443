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


def _trace(problem, plan, seed):
    ledger = resample(problem.workload, 4.0, 60.0, seed=1)
    sim = ClusterSim(problem, plan, ledger, seed=seed, record=True)
    sim.run()
    return sim.sim.trace, ledger.done_s.copy()


def test_same_seed_gives_the_same_event_trace(problem, wide_plan):
    trace_a, done_a = _trace(problem, wide_plan, seed=7)
    trace_b, done_b = _trace(problem, wide_plan, seed=7)
    assert len(trace_a) > 100
    assert trace_a == trace_b
    assert (done_a == done_b).all()


def test_another_seed_routes_differently(problem, wide_plan):
    trace_a, _ = _trace(problem, wide_plan, seed=7)
    trace_b, _ = _trace(problem, wide_plan, seed=8)
    assert trace_a != trace_b
