"""The failure detector replayed over heartbeat arrival times: false departures and time to notice."""

import numpy as np
import pytest

from sims.detection import HEARTBEAT_S, TICK_S, load_arrivals, replay
from sims.errors import SimError
from swarm.proto.membership import MembershipConfig


def steady(start_s: float, end_s: float) -> np.ndarray:
    return np.arange(start_s, end_s, HEARTBEAT_S)


def test_a_stall_longer_than_the_timeout_is_a_false_departure_and_a_shorter_one_is_not():
    stalled = np.concatenate([steady(0.25, 30.0), steady(32.0, 60.0)])  # one 2.25 s gap at 29.75 s
    arrivals = {"a": steady(0.0, 60.0), "b": stalled}
    fixed = replay(arrivals, MembershipConfig(gap_window=0), num_failures=3)
    adaptive = replay(arrivals, MembershipConfig(), num_failures=3)
    assert fixed.false_departures == 0  # 2.25 s < 2.5 s
    assert adaptive.false_departures == 1  # on time for 10 s before: timeout 1.5 s
    assert fixed.peer_hours == pytest.approx(2 * arrivals["b"][-1] / 3600, rel=0.02)
    assert fixed.closest_call == pytest.approx(2.25 / 2.5) and adaptive.closest_call == pytest.approx(1.5)


def test_steady_heartbeats_are_noticed_faster_by_the_adaptive_timeout():
    arrivals = {"a": steady(0.0, 120.0)}
    fixed = replay(arrivals, MembershipConfig(gap_window=0), num_failures=20)
    adaptive = replay(arrivals, MembershipConfig(), num_failures=20)
    assert fixed.false_departures == adaptive.false_departures == 0
    assert min(fixed.detection_s) > 2.5 - HEARTBEAT_S and max(fixed.detection_s) <= 2.5 + TICK_S + 1e-9
    assert min(adaptive.detection_s) > 1.5 - HEARTBEAT_S and max(adaptive.detection_s) <= 1.5 + TICK_S + 1e-9


def test_unknown_recording_names_the_known_ones():
    with pytest.raises(SimError, match="bench_heartbeats"):
        load_arrivals("no-such-recording")


def test_on_heartbeats_recorded_on_a_loaded_box_the_default_detector_has_no_false_departure():
    arrivals = load_arrivals("loaded-8-peers")  # 8 daemons on 2 busy cores, load average 14
    result = replay(arrivals, MembershipConfig(), num_failures=5)
    assert result.false_departures == 0
    assert max(result.detection_s) < 3.0
