"""Engine throughput with SmolLM2-135M on this CPU, against transformers' `generate` in the same run.

For 1, 8, 32 and 64 concurrent requests (chat prompts; greedy, eos ignored; mixed output lengths of a
quarter, half, three quarters and all of max_tokens, plus one row at 32 with equal lengths):
our engine (all requests added at once, continuous batching over the paged KV cache) vs transformers
`generate` one request at a time and batched (left-padded, one `generate` call). Figures are output
tokens per second, the median of several runs, and the ratios ours / baseline.

    python -m bench.bench_engine [--quick] [--json] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

PROMPTS = [
    "Explain why the sky is blue to a ten-year-old, in a few sentences.",
    "Write a short poem about the sea at night.",
    "List three advantages of peer-to-peer networks over client-server designs.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the plot of Romeo and Juliet.",
    "Give me a recipe for a simple tomato soup.",
    "How does a hash table handle collisions?",
    "Describe the water cycle step by step.",
]


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    """`count` chat prompts of varied lengths (the list above, cycled, each with its index appended)."""
    return [tokenizer.encode_chat([{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}])
            for i in range(count)]


def output_lengths(count: int, max_tokens: int, is_mixed: bool) -> list[int]:
    """New tokens per request: all `max_tokens`, or (mixed) a quarter, half, three quarters and all of it."""
    return [max_tokens * (1 + i % 4) // 4 if is_mixed else max_tokens for i in range(count)]


def run_engine(engine, prompts: list[list[int]], lengths: list[int]) -> float:
    """Output tokens per second of our engine serving all prompts at once."""
    from peers.engine import SamplingParams

    start = time.perf_counter()
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        engine.add(f"b{i}", p, params=SamplingParams(max_tokens=n, ignore_eos=True))
    num_tokens = 0
    while engine.has_work():
        num_tokens += sum(len(e.token_ids) for e in engine.step())
    assert num_tokens == sum(lengths)
    return num_tokens / (time.perf_counter() - start)


def run_hf(model, prompts: list[list[int]], lengths: list[int], pad_id: int) -> float:
    """Useful output tokens per second of one transformers `generate` call on the left-padded batch
    (it runs until the longest request is done; only the tokens each request asked for count)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max(lengths), do_sample=False, pad_token_id=pad_id)
    assert out.shape[1] - width == max(lengths)
    return sum(lengths) / (time.perf_counter() - start)


def run_hf_one_at_a_time(model, prompts: list[list[int]], lengths: list[int], pad_id: int) -> float:
    start = time.perf_counter()
    for p, n in zip(prompts, lengths, strict=True):
        run_hf(model, [p], [n], pad_id)
    return sum(lengths) / (time.perf_counter() - start)


def measure(quick: bool, dtype: str) -> dict:
    """Runs of ours, batched generate and one-at-a-time generate (two requests) back to back,
    per concurrency, so each ratio compares figures taken under the same load; medians of each."""
    from transformers import AutoModelForCausalLM

    from peers.engine import Engine, EngineConfig
    from swarm import modelstore

    folder = modelstore.resolve_model(None)
    concurrencies = [1, 8, 32] if quick else [1, 8, 32, 64]
    max_tokens, num_runs = (16, 1) if quick else (64, 3)
    engine = Engine.load(folder, EngineConfig(dtype=dtype, kv_cache_bytes=1 << 30))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    hf.generation_config.eos_token_id = None  # the same work as the engine's ignore_eos
    pad_id = 2
    prompts = prompt_ids(engine.codec, max(concurrencies))
    run_engine(engine, prompts[:2], [4, 4])  # warm-up both
    run_hf(hf, prompts[:2], [4, 4], pad_id)
    rows = []
    for n, is_mixed in [(n, True) for n in concurrencies] + ([] if quick else [(32, False)]):
        lengths = output_lengths(n, max_tokens, is_mixed)
        mean_length = round(sum(lengths) / n)  # one-at-a-time: two requests of the row's mean output length
        runs = [(run_engine(engine, prompts[:n], lengths), run_hf(hf, prompts[:n], lengths, pad_id),
                 run_hf_one_at_a_time(hf, prompts[:2], [mean_length] * 2, pad_id)) for _ in range(num_runs)]
        rows.append({"concurrent": n, "output_lengths": "mixed" if is_mixed else "equal",
                     "ours_tok_s": _median(r[0] for r in runs), "hf_batched_tok_s": _median(r[1] for r in runs),
                     "hf_one_at_a_time_tok_s": _median(r[2] for r in runs),
                     "ours_over_one_at_a_time": _median((r[0] / r[2] for r in runs), 2),
                     "ours_over_hf_batched": _median((r[0] / r[1] for r in runs), 2)})
    return {"bench": "engine", "model": modelstore.DEFAULT_MODEL, "dtype": dtype, "max_tokens": max_tokens,
            "num_runs": num_runs, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "rows": rows}


def _median(values, digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, concurrencies and runs (about a minute)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weights and activations, the same on both sides (default bfloat16)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from swarm.errors import ModelError

    try:
        figures = measure(args.quick, args.dtype)
    except ModelError as e:
        print(json.dumps({"bench": "engine", "skipped": str(e)}))
        return 0
    if not args.json:
        _print_table(figures)
    print(json.dumps(figures))
    return 0


def _print_table(figures: dict) -> None:
    print(f"engine vs transformers generate, SmolLM2-135M {figures['dtype']}, up to {figures['max_tokens']} new "
          f"tokens, median of {figures['num_runs']}, {figures['torch_threads']} torch threads", file=sys.stderr)
    head = ("concurrent", "lengths", "ours tok/s", "HF batched", "HF 1-by-1", "x 1-by-1", "x batched")
    print(" ".join(f"{h:>11}" for h in head), file=sys.stderr)
    keys = ("concurrent", "output_lengths", "ours_tok_s", "hf_batched_tok_s", "hf_one_at_a_time_tok_s",
            "ours_over_one_at_a_time", "ours_over_hf_batched")
    for r in figures["rows"]:
        print(" ".join(f"{r[k]:>11}" for k in keys), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
