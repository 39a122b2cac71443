"""The GPU catalog: datasheet figures and prices of rentable GPU types, from package data."""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

from swarm.errors import HardwareError


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type. Bandwidths are in gigaBYTES per second."""

    name: str
    tflops: float  # dense FP16/BF16 tensor-core peak
    memory_gb: float
    memory_bandwidth_gbs: float
    pcie_gbs: float  # per direction, x16
    nvlink_gbs: float  # 0 when the card has no NVLink
    price_per_hour: float
    architecture: str = ""
    has_bf16: bool = True

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1e9)

    def __post_init__(self) -> None:
        for field in ("tflops", "memory_gb", "memory_bandwidth_gbs", "pcie_gbs"):
            value = getattr(self, field)
            if not value > 0:
                raise HardwareError(f"GPU {self.name!r}: {field} must be positive, got {value!r}")
        if self.nvlink_gbs < 0 or self.price_per_hour < 0:
            raise HardwareError(f"GPU {self.name!r}: nvlink_gbs and price_per_hour must be >= 0")


def _key(name: str) -> str:
    """Normalise a GPU name for lookup: 'RTX 3090 Ti' == 'rtx3090ti' == '3090Ti'."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return key.removeprefix("nvidia").removeprefix("geforce")


# Names people use that are not the catalog's own spelling.
_ALIASES = {"a100": "A100-80G", "a10080gb": "A100-80G", "a10040gb": "A100-40G", "3090ti": "RTX3090Ti",
            "4090": "RTX4090", "rtxa6000": "A6000", "rtxa5000": "A5000", "h100sxm": "H100"}


@functools.cache
def catalog() -> dict[str, GpuSpec]:
    """Every GPU type of the bundled catalog, by its canonical name."""
    text = resources.files("swarm.hardware").joinpath("data/gpus.csv").read_text(encoding="utf-8")
    specs = {}
    for row in csv.DictReader(text.splitlines()):
        specs[row["gpu"]] = GpuSpec(
            name=row["gpu"],
            tflops=float(row["peak_dense_fp16_bf16_tflops"]),
            memory_gb=float(row["memory_gb"]),
            memory_bandwidth_gbs=float(row["mem_bandwidth_gbps"]),
            pcie_gbs=float(row["pcie_x16_gbps_per_direction"]),
            nvlink_gbs=float(row["nvlink_gbps_bidirectional"] or 0),
            price_per_hour=float(row["price_usd_per_gpu_hr"]),
            architecture=row["architecture"],
            has_bf16=row["bf16_supported"].strip().lower() == "yes",
        )
    return specs


def gpu_spec(name: str) -> GpuSpec:
    """The catalog entry for `name`, forgiving of case, spaces and vendor prefixes."""
    by_key = {_key(n): spec for n, spec in catalog().items()}
    key = _key(name)
    if key in by_key:
        return by_key[key]
    if key in _ALIASES:
        return catalog()[_ALIASES[key]]
    known = ", ".join(catalog())
    raise HardwareError(f"unknown GPU {name!r}: use one of {known}, or define it in a [gpu.NAME] table")
