"""What this machine has: its GPUs through NVML, a measured CPU profile otherwise, or a declared one.

A CPU box may *declare* a GPU profile (`--profile A40` or `--profile RTX3090Tix2`) to emulate a
heterogeneous cluster; the profile then says `is_emulated=True` and `device="cpu"`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time

import numpy as np

from swarm.errors import HardwareError
from swarm.hardware.catalog import gpu_spec
from swarm.wire.hardware import MAX_GPUS_PER_PEER, HardwareProfile

log = logging.getLogger(__name__)
_DECLARED = re.compile(r"^(?P<gpu>.+?)(?:[xX\*](?P<count>\d+))?$")


def parse_declared(text: str) -> tuple[str, int]:
    """'A40' -> ('A40', 1); 'RTX3090Tix4' -> ('RTX3090Ti', 4). The GPU must be in the catalog."""
    match = _DECLARED.match(text.strip())
    if not match:
        raise HardwareError(f"profile {text!r}: expected GPU[xN], e.g. A40 or RTX3090Tix2")
    count = int(match["count"] or 1)
    if not 1 <= count <= MAX_GPUS_PER_PEER:
        raise HardwareError(f"profile {text!r}: GPU count must be 1..{MAX_GPUS_PER_PEER}")
    return gpu_spec(match["gpu"]).name, count


def declared_profile(text: str, *, peer_id: str = "", host: str = "") -> HardwareProfile:
    """The profile of an emulated GPU box: catalog figures, engine on the CPU."""
    name, count = parse_declared(text)
    spec = gpu_spec(name)
    return HardwareProfile(peer_id=peer_id, host=host or socket.gethostname(), gpu=spec.name, num_gpus=count,
                           tflops=spec.tflops, memory_gb=spec.memory_gb,
                           memory_bandwidth_gbs=spec.memory_bandwidth_gbs,
                           price_per_gpu_hour=spec.price_per_hour, is_emulated=True, device="cpu")


def probe(*, peer_id: str = "", host: str = "") -> HardwareProfile:
    """This machine's real hardware: NVML GPUs if any, else a measured CPU profile."""
    host = host or socket.gethostname()
    return _probe_nvml(peer_id, host) or _probe_cpu(peer_id, host)


def _probe_nvml(peer_id: str, host: str) -> HardwareProfile | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.debug("no NVIDIA driver (%s); probing the CPU instead", e)
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        memory_gb = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9
    finally:
        pynvml.nvmlShutdown()
    try:
        spec = gpu_spec(_catalog_name(name, memory_gb))
    except HardwareError:
        log.warning("GPU %r is not in the catalog; declare it with --profile for accurate planning", name)
        return HardwareProfile(peer_id=peer_id, host=host, gpu=name, num_gpus=count, tflops=50.0,
                               memory_gb=memory_gb, memory_bandwidth_gbs=500.0, device="cuda")
    return HardwareProfile(peer_id=peer_id, host=host, gpu=spec.name, num_gpus=count, tflops=spec.tflops,
                           memory_gb=memory_gb, memory_bandwidth_gbs=spec.memory_bandwidth_gbs,
                           price_per_gpu_hour=spec.price_per_hour, device="cuda")


def _catalog_name(nvml_name: str, memory_gb: float) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100-80G'; 'NVIDIA GeForce RTX 3090 Ti' -> 'RTX 3090 Ti'."""
    name = nvml_name.replace("NVIDIA", "").replace("GeForce", "").strip()
    if name.startswith("A100"):
        return "A100-80G" if memory_gb > 60 else "A100-40G"
    for known in ("H200", "H100", "L40S", "RTX A6000", "RTX A5000", "A40", "L4", "T4", "V100"):
        if known in name:
            return known
    return name


def _probe_cpu(peer_id: str, host: str) -> HardwareProfile:
    """A CPU measured in a fraction of a second: float32 matmul rate and memory copy bandwidth."""
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(8):
        a @ a
    tflops = 8 * 2 * 512**3 / (time.perf_counter() - start) / 1e12
    buf = np.ones(16 << 20, dtype=np.float32)  # 64 MiB
    start = time.perf_counter()
    for _ in range(4):
        buf.copy()
    bandwidth_gbs = 4 * 2 * buf.nbytes / (time.perf_counter() - start) / 1e9
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return HardwareProfile(peer_id=peer_id, host=host, gpu="CPU", num_gpus=1, tflops=max(tflops, 1e-3),
                           memory_gb=memory_gb, memory_bandwidth_gbs=max(bandwidth_gbs, 0.1), device="cpu")
