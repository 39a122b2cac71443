"""Spot traces, workloads, calibration and recovery-time helpers."""

from __future__ import annotations

import numpy as np
import pytest

from sims import calibrate, spot
from sims.errors import TraceError
from sims.ledger import DONE, Ledger
from sims.recovery import recovery_time_s
from sims.workloads import replay, shifted
from swarm.workloads import load_workload


def test_spotserve_segment_as_matches_its_file():
    events = spot.spotserve_segment("As")
    assert events[0].time_s == 0 and len(events[0].nodes) == 7
    assert [e.op for e in events] == ["add", "add", "add", "remove", "add", "remove"]
    assert events[-1].time_s == 1200.0 and events[-1].nodes == ("node-3", "node-10")


def test_node_hours_integrate_the_alive_count():
    events = [spot.SpotEvent(0.0, "add", ("a", "b")), spot.SpotEvent(1800.0, "remove", ("a",))]
    assert spot.node_hours(events, 3600.0) == pytest.approx(1.0 + 0.5)


def test_full_g4dn_trace_never_exceeds_its_documented_peak():
    timeline = spot.alive_over_time(spot.spotserve_full())
    assert max(len(alive) for _, alive in timeline) == 24
    assert timeline[-1][0] == pytest.approx((38_760_000 - 480_000) / 1000)


def test_skypilot_counts_become_adds_and_removes():
    events = spot.skypilot_availability("us-east-2b", max_ticks=30)
    alive = spot.alive_over_time(events)
    assert [len(a) for _, a in alive][:4] == [3, 7, 9, 7]  # the file's first distinct counts


def test_unknown_trace_is_a_trace_error():
    with pytest.raises(TraceError):
        spot.spotserve_segment("Zs")


def test_shift_changes_the_length_distribution_at_the_given_time():
    code, conv = load_workload("azure-code"), load_workload("azure-conv")
    ledger = shifted(code, conv, 300.0, 5.0, 600.0, seed=0)
    before = ledger.arrival_s < 300.0
    assert ledger.output_tokens[before].mean() < 60 < ledger.output_tokens[~before].mean()


def test_replay_keeps_the_trace_order_and_scales_time():
    w = load_workload("azure-code")
    ledger = replay(w, rate_rps=2 * w.rate_rps, duration_s=100.0)
    assert np.all(np.diff(ledger.arrival_s) >= 0) and ledger.arrival_s[-1] < 100.0
    assert len(ledger) == int((w.arrival_s / 2 < 100.0).sum())


def test_calibration_fits_vidur_within_fifteen_percent():
    fit = calibrate.fit("a40")
    assert fit.mean_abs_error < 0.15
    assert fit.mean_abs_error < fit.default_mean_abs_error
    assert calibrate.calibrated_efficiency()["RTX3090Ti"] == fit.efficiency


def test_the_planners_efficiency_data_is_the_fit_of_every_gpu_type():
    from swarm.plan.cost import efficiency_of

    stored = calibrate.calibrated_efficiency()
    fitted = {gpu: calibrate.fit(profile).efficiency for gpu, profile in calibrate.SAME_SILICON.items()}
    assert {gpu: stored[gpu] for gpu in fitted} == fitted
    assert set(stored) - set(fitted) <= {"CPU"}  # bench.calibrate_cpu's fit against the real engine
    assert all(e.attention == e.overlap == 1.0 for e in fitted.values())  # GPUs keep the roofline
    assert efficiency_of(None, "A40") == stored["A40"]  # a Problem without efficiency uses the package data


def _ledger(ok_pattern: list[bool], spacing_s: float = 1.0) -> Ledger:
    n = len(ok_pattern)
    ledger = Ledger(np.arange(n) * spacing_s, np.full(n, 10), np.full(n, 2))
    for i, ok in enumerate(ok_pattern):
        ledger.first_token_s[i] = ledger.arrival_s[i] + (0.1 if ok else 10.0)
        ledger.done_s[i] = ledger.first_token_s[i] + 0.1
        ledger.state[i] = DONE
    return ledger


def test_recovery_time_is_after_the_last_bad_window():
    pattern = [True] * 60 + [False] * 20 + [True] * 60
    ledger = _ledger(pattern)
    seconds, baseline = recovery_time_s(ledger, 1.0, 1.0, 60.0, window_s=10.0)
    assert baseline == 1.0
    # from t = 79 a 10 s window holds at most one miss in ten: 90% of the baseline
    assert seconds == pytest.approx(19.0)


def test_recovery_is_infinite_if_attainment_never_returns():
    ledger = _ledger([True] * 60 + [False] * 60)
    assert recovery_time_s(ledger, 1.0, 1.0, 60.0, window_s=10.0)[0] == float("inf")


def test_recovery_against_a_reference_ignores_the_workloads_own_dips():
    arrival = np.arange(0.0, 40.0, 1.0)
    ledger = Ledger(arrival, np.full(40, 10), np.full(40, 2))
    ledger.state[:] = DONE
    ledger.first_token_s[:] = arrival + 0.1
    ledger.done_s[:] = arrival + 0.2
    ledger.first_token_s[[12, 13, 30, 31]] += 10.0  # misses at 12-13 (the event) and 30-31 (the workload)
    reference = Ledger(arrival, np.full(40, 10), np.full(40, 2))
    reference.state[:] = DONE
    reference.first_token_s[:], reference.done_s[:] = ledger.first_token_s, ledger.done_s
    reference.first_token_s[[12, 13]] = arrival[[12, 13]] + 0.1  # without the event only 30-31 miss
    kwargs = {"window_s": 5.0, "end_s": 40.0}
    assert recovery_time_s(ledger, 1.0, 1.0, 10.0, **kwargs)[0] == pytest.approx(22.0)  # 30-31 look bad
    assert recovery_time_s(ledger, 1.0, 1.0, 10.0, reference=reference, **kwargs)[0] == pytest.approx(4.0)
    assert recovery_time_s(ledger, 1.0, 1.0, 10.0, first=True, **kwargs)[0] == pytest.approx(4.0)
