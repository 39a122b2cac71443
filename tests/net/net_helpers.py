"""Helpers shared by the networking tests (imported by name: tests/net is on sys.path under pytest)."""

from swarm.wire.hardware import HardwareProfile


def profile(peer_id: str, host: str = "box") -> HardwareProfile:
    """An emulated A40 profile for `peer_id`."""
    return HardwareProfile(peer_id=peer_id, host=host, gpu="A40", num_gpus=1, tflops=150.0, memory_gb=48.0,
                           memory_bandwidth_gbs=696.0, is_emulated=True)
