"""What this machine has: its GPUs through NVML, a measured CPU profile otherwise, or a declared one.

A CPU box may *declare* a GPU profile (`--profile A40` or `--profile RTX3090Tix2`) to emulate a
heterogeneous cluster; the profile then says `is_emulated=True` and `device="cpu"`.

A CPU is measured as one core, as local swarms run CPU peers (`torch_threads` 1 each): a float32 matmul
for the compute rate and a float32 matrix-vector product over a matrix larger than the caches for the
memory bandwidth, which is how a decode step streams its weights (a buffer copy, measured before, read
a seventh of that by the wall clock: each copy's fresh buffer is page-faulted in). Both run in a fresh
interpreter with one BLAS thread (the BLAS thread count cannot be changed once numpy is loaded) and
are timed by the process's CPU time, medians of a few repeats, so that other processes sharing the
cores slow the probe down less than they would a wall clock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

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


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROBE_TIMEOUT_S = 60.0


def _probe_cpu(peer_id: str, host: str) -> HardwareProfile:
    """A CPU measured as one core (`measure_cpu_core` in a one-BLAS-thread interpreter), within a second."""
    tflops, bandwidth_gbs = measure_cpu_core_isolated()
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return HardwareProfile(peer_id=peer_id, host=host, gpu="CPU", num_gpus=1, tflops=max(tflops, 1e-3),
                           memory_gb=memory_gb, memory_bandwidth_gbs=max(bandwidth_gbs, 0.1), device="cpu")


def measure_cpu_core_isolated() -> tuple[float, float]:
    """`measure_cpu_core` in a fresh interpreter with one BLAS thread: (TFLOPS fp32, GB/s).

    Raises:
        HardwareError: the measuring interpreter failed or timed out (its stderr is in the message).
    """
    code = "import json; from swarm.hardware.probe import measure_cpu_core; print(json.dumps(measure_cpu_core()))"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    search_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **ONE_THREAD_ENV, "PYTHONPATH": search_path}  # this swarm, wherever the cwd is
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HardwareError(f"the CPU probe took over {PROBE_TIMEOUT_S:.0f} s; is the machine swapping? "
                            "Declare the hardware with --profile instead") from exc
    if done.returncode != 0:
        raise HardwareError(f"the CPU probe failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    tflops, bandwidth_gbs = json.loads(done.stdout.splitlines()[-1])
    return float(tflops), float(bandwidth_gbs)


def measure_cpu_core(repeats: int = 7) -> tuple[float, float]:
    """(float32 matmul TFLOPS, GB/s streamed by a float32 matrix-vector product) of this process.

    One core's figures only if BLAS runs one thread (`measure_cpu_core_isolated` makes sure): the
    time is the process's CPU time, which counts every BLAS thread.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512), dtype=np.float32)
    tflops = 2 * 512**3 / _median_cpu_s(lambda: a @ a, repeats) / 1e12
    matrix = np.ones((4096, 4096), dtype=np.float32)  # 64 MiB, twice a large L3: streamed from memory
    vector = rng.standard_normal(4096, dtype=np.float32)
    bandwidth_gbs = matrix.nbytes / _median_cpu_s(lambda: matrix @ vector, repeats) / 1e9
    return tflops, bandwidth_gbs


def _median_cpu_s(work: Callable[[], object], repeats: int) -> float:
    """Median process CPU seconds of `work` over `repeats` runs after one warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return max(statistics.median(times), 1e-9)
