"""`HardwareProfile`: what a peer tells the swarm about its GPUs, as a versioned wire record."""

from __future__ import annotations

from dataclasses import dataclass, field

from swarm.errors import WireError
from swarm.wire.codec import message

MAX_GPUS_PER_PEER = 64


@message(1)
@dataclass(frozen=True)
class HardwareProfile:
    """One peer's hardware. Bandwidths in GB/s; `is_emulated` when a CPU box declares a GPU profile."""

    peer_id: str
    host: str
    gpu: str
    num_gpus: int
    tflops: float
    memory_gb: float
    memory_bandwidth_gbs: float
    price_per_gpu_hour: float = 0.0
    is_emulated: bool = False
    device: str = "cpu"  # what the engine actually runs on: "cpu" or "cuda"
    measured: dict[str, float] = field(default_factory=dict)  # e.g. "decode_tokens_per_s"
    zone: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.num_gpus <= MAX_GPUS_PER_PEER:
            raise WireError(f"HardwareProfile.num_gpus must be 1..{MAX_GPUS_PER_PEER}, got {self.num_gpus}")
        for name in ("tflops", "memory_gb", "memory_bandwidth_gbs"):
            value = getattr(self, name)
            if not 0 < value < 1e7:
                raise WireError(f"HardwareProfile.{name} must be positive and finite, got {value}")
        if not 0 <= self.price_per_gpu_hour < 1e4:
            raise WireError(f"HardwareProfile.price_per_gpu_hour must be 0..10000, got {self.price_per_gpu_hour}")
        if self.device not in ("cpu", "cuda"):
            raise WireError(f"HardwareProfile.device must be 'cpu' or 'cuda', got {self.device!r}")
        if not self.host or "/" in self.host:
            raise WireError(f"HardwareProfile.host must be a non-empty name without '/', got {self.host!r}")
