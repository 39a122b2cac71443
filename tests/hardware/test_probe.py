import sys

import pytest

from swarm.errors import HardwareError
from swarm.hardware import declared_profile, parse_declared, probe
from swarm.hardware.probe import measure_cpu_core_isolated


def test_declared_profile_is_emulated_catalog_figures():
    profile = declared_profile("RTX3090Tix2", peer_id="p", host="h")
    assert (profile.gpu, profile.num_gpus, profile.is_emulated, profile.device) == ("RTX3090Ti", 2, True, "cpu")
    assert profile.memory_bandwidth_gbs == 1008


@pytest.mark.parametrize("text, expected", [("A40", ("A40", 1)), ("A40x4", ("A40", 4)), ("rtx 3090 ti*2", ("RTX3090Ti", 2))])
def test_parse_declared(text, expected):
    assert parse_declared(text) == expected


@pytest.mark.parametrize("text", ["A40x0", "A40x65", "Z80"])
def test_bad_declarations_are_refused(text):
    with pytest.raises(HardwareError):
        parse_declared(text)


def test_probe_on_this_machine_gives_a_valid_profile():
    profile = probe(peer_id="p", host="h")
    assert profile.num_gpus >= 1 and profile.tflops > 0 and profile.memory_gb > 0
    assert profile.device in ("cpu", "cuda")


def test_cpu_probe_measures_one_core_in_a_separate_interpreter():
    tflops, bandwidth_gbs = measure_cpu_core_isolated()
    assert tflops > 0 and bandwidth_gbs > 0


def test_a_failing_cpu_probe_says_why(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(HardwareError, match="CPU probe failed"):
        measure_cpu_core_isolated()
