"""KV kernel throughput: quantise+pack and unpack+dequantise, and the whole blob encode/decode, in GB/s.

GB/s counts fp16 bytes of K and V (what the op replaces on the wire), median of several runs, on the
CPU always and on CUDA when present (the Triton kernels when triton is installed, else torch ops).
On a shared, noisy machine compare the ratios: each op's speed over a plain fp16 copy of the same
tensors measured in the same run. On the CPU the "per CPU-second" figures divide by the process's CPU
time instead of the wall clock: what the op costs a core, whatever the neighbours take of it.

    python -m bench.bench_kv [--quick] [--json]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from kernels import KvExpectation, KvFormat, decode_kv_blob, dequantize, encode_kv_blob, quantize
from kernels.quant import has_triton

NUM_LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64  # SmolLM2-135M's KV shape
FORMATS = {"4-bit default": KvFormat(), "8-bit": KvFormat(bits=8, group_size=32, key_axis="token")}


def run_seconds(
    fn: Callable[[], object],
    num_runs: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    fn()  # warm-up (and Triton compilation)
    sync()
    times = []
    for _ in range(num_runs):
        started = clock()
        fn()
        sync()
        times.append(clock() - started)
    return times


def median_seconds(fn: Callable[[], object], num_runs: int, sync: Callable[[], None]) -> float:
    return statistics.median(run_seconds(fn, num_runs, sync))


def measure(device: str, num_tokens: int, num_runs: int) -> dict[str, float]:
    """GB/s of each op on `device` for one sequence of `num_tokens` tokens over all layers."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (NUM_LAYERS, KV_HEADS, num_tokens, HEAD_DIM)
    keys = torch.randn(shape, generator=gen, device=device).half()  # (layers, kv_heads, tokens, head_dim)
    values = torch.randn(shape, generator=gen, device=device).half()
    fp16_bytes = 2 * keys.numel() * 2
    copy = lambda: (keys.clone(), values.clone())  # noqa: E731
    copy_s = median_seconds(copy, num_runs, sync)
    figures = {f"{device} fp16 copy GB/s (baseline)": fp16_bytes / copy_s / 1e9}
    if device == "cpu":
        copy_cpu_s = statistics.median(run_seconds(copy, num_runs, sync, time.process_time))
        figures["cpu fp16 copy GB/s per CPU-second"] = fp16_bytes / copy_cpu_s / 1e9
    for name, fmt in FORMATS.items():
        qk = quantize(keys, fmt.bits, fmt.group_size, fmt.key_axis)
        qv = quantize(values, fmt.bits, fmt.values_group_size, "token")

        def pack(fmt=fmt):
            quantize(keys, fmt.bits, fmt.group_size, fmt.key_axis)
            quantize(values, fmt.bits, fmt.values_group_size, "token")

        def unpack(qk=qk, qv=qv):
            dequantize(qk, torch.float16)
            dequantize(qv, torch.float16)

        pack_times = run_seconds(pack, num_runs, sync)
        unpack_times = run_seconds(unpack, num_runs, sync)
        pack_s, unpack_s = statistics.median(pack_times), statistics.median(unpack_times)
        figures[f"{device} {name} quantise+pack GB/s"] = fp16_bytes / pack_s / 1e9
        figures[f"{device} {name} unpack+dequantise GB/s"] = fp16_bytes / unpack_s / 1e9
        # The least-disturbed run: on a shared machine the median mostly measures the neighbours.
        figures[f"{device} {name} quantise+pack GB/s, best run"] = fp16_bytes / min(pack_times) / 1e9
        figures[f"{device} {name} unpack+dequantise GB/s, best run"] = fp16_bytes / min(unpack_times) / 1e9
        figures[f"{device} {name} quantise+pack / copy"] = copy_s / pack_s
        figures[f"{device} {name} unpack+dequantise / copy"] = copy_s / unpack_s
        if device == "cpu":  # CPU time of all the process's threads: the cost to the machine, not the wait
            for op, fn in (("quantise+pack", pack), ("unpack+dequantise", unpack)):
                cpu_s = statistics.median(run_seconds(fn, num_runs, sync, time.process_time))
                figures[f"cpu {name} {op} GB/s per CPU-second"] = fp16_bytes / cpu_s / 1e9
        if device == "cpu":
            figures.update(blob_figures(name, fmt, keys, values, fp16_bytes, num_runs))
    return figures


def blob_figures(name, fmt, keys, values, fp16_bytes, num_runs) -> dict[str, float]:
    """The whole wire path on the CPU: stacking, quantising, crc32, copies; and the checked decode."""
    key_list, value_list = list(keys.unbind(0)), list(values.unbind(0))
    blob = encode_kv_blob(key_list, value_list, fmt, model_fingerprint="bench", first_layer=0)
    expected = KvExpectation("bench", 0, NUM_LAYERS, KV_HEADS, HEAD_DIM)
    no_sync = lambda: None  # noqa: E731

    def encode():
        encode_kv_blob(key_list, value_list, fmt, model_fingerprint="bench", first_layer=0)

    def decode():
        decode_kv_blob(blob, expected, dtype=torch.float16)

    return {
        f"cpu {name} encode_kv_blob GB/s": fp16_bytes / median_seconds(encode, num_runs, no_sync) / 1e9,
        f"cpu {name} decode_kv_blob GB/s": fp16_bytes / median_seconds(decode, num_runs, no_sync) / 1e9,
        f"{name} wire size vs fp16": len(blob) / fp16_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 tokens, 3 runs")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object of figures on the last line"
    )
    parser.add_argument("--tokens", type=int, default=2048, help="tokens in the sequence (default 2048)")
    args = parser.parse_args(argv)
    num_tokens, num_runs = (256, 3) if args.quick else (args.tokens, 9)
    figures: dict[str, object] = {
        "tokens": num_tokens,
        "shape": f"{NUM_LAYERS} layers x {KV_HEADS} kv heads x {num_tokens} tokens x {HEAD_DIM}",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "triton": has_triton(),
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        figures.update(measure(device, num_tokens, num_runs))
    if torch.cuda.is_available():
        figures["gpu"] = torch.cuda.get_device_name()
    table = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON line
    for key, value in figures.items():
        print(f"{key:48s} {value:.3f}" if isinstance(value, float) else f"{key:48s} {value}", file=table)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
