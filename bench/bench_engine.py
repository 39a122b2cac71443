"""Engine throughput with SmolLM2-135M on this CPU (or a 1B-class Llama on a GPU), against transformers'
`generate` in the same run.

For 1, 8, 32 and 64 concurrent requests (chat prompts; greedy, eos ignored; mixed output lengths of a
quarter, half, three quarters and all of max_tokens, plus one row at 32 with equal lengths):
our engine (all requests added at once, continuous batching over the paged KV cache) vs transformers
`generate` one request at a time and batched (left-padded, one `generate` call). Figures are output
tokens per second, the median of several runs, and the ratios ours / baseline.

With --device cuda (or auto on a machine with a GPU) both sides run on the GPU with a larger Llama-family
config (LARGE_CONFIG: hidden 2048, 16 layers, 32 heads, 8 KV heads, vocab 32000) and random weights
written to a temporary folder: speed does not depend on the weights, and nothing needs downloading.
Prompts are then random token ids of the chat prompts' lengths.

    python -m bench.bench_engine [--quick] [--json] [--threads N] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
LARGE_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


def write_random_llama(folder: Path, config: dict = LARGE_CONFIG, seed: int = 0) -> Path:
    """A config.json and random bf16 safetensors of `config`'s shape (norms at 1), tensor by tensor."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    hidden, inter, head_dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (q, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, q),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter)}
    tensors = {name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02)
               .to(torch.bfloat16) for name, shape in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def random_prompt_ids(lengths: list[int], vocab_size: int) -> list[list[int]]:
    """Random token ids (seeded) of the given lengths, for a model without a tokenizer."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab_size, (n,), generator=g).tolist() for n in lengths]


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
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max(lengths), do_sample=False, pad_token_id=pad_id)
    assert out.shape[1] - width == max(lengths)  # reading the shape waits for nothing: synchronise below
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return sum(lengths) / (time.perf_counter() - start)


def run_hf_one_at_a_time(model, prompts: list[list[int]], lengths: list[int], pad_id: int) -> float:
    start = time.perf_counter()
    for p, n in zip(prompts, lengths, strict=True):
        run_hf(model, [p], [n], pad_id)
    return sum(lengths) / (time.perf_counter() - start)


def measure(quick: bool, dtype: str, device: str, work_dir: Path) -> dict:
    """Runs of ours, batched generate and one-at-a-time generate (two requests) back to back,
    per concurrency, so each ratio compares figures taken under the same load; medians of each."""
    from transformers import AutoModelForCausalLM

    from peers.engine import Engine, EngineConfig
    from swarm import modelstore

    is_cuda = EngineConfig(device=device).torch_device().type == "cuda"
    config = EngineConfig(device=device, dtype=dtype, kv_cache_bytes=(4 << 30) if is_cuda else 1 << 30)
    folder = write_random_llama(work_dir / "llama-1b-random") if is_cuda else modelstore.resolve_model(None)
    concurrencies = [1, 8, 32] if quick else [1, 8, 32, 64]
    max_tokens, num_runs = (16, 1) if quick else (64, 3)
    engine = Engine.load(folder, config)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(engine.device).eval()
    hf.generation_config.eos_token_id = None  # the same work as the engine's ignore_eos
    pad_id = 2
    if engine.codec is None:  # the random model: token ids as long as the chat prompts' would be
        prompts = random_prompt_ids([40 + 5 * (i % 8) for i in range(max(concurrencies))], LARGE_CONFIG["vocab_size"])
    else:
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
    machine = torch.cuda.get_device_name(engine.device) if is_cuda else platform.processor() or platform.machine()
    return {"bench": "engine", "model": "llama-1b-random" if is_cuda else modelstore.DEFAULT_MODEL, "dtype": dtype,
            "device": str(engine.device), "max_tokens": max_tokens, "num_runs": num_runs,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": machine, "rows": rows}


def _median(values, digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, concurrencies and runs (about a minute)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weights and activations, the same on both sides (default bfloat16)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where both sides run (default auto: cuda when torch sees a GPU, else cpu)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from peers.errors import EngineConfigError
    from swarm.errors import ModelError

    try:
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as work_dir:
            figures = measure(args.quick, args.dtype, args.device, Path(work_dir))
    except ModelError as e:
        print(json.dumps({"bench": "engine", "skipped": str(e)}))
        return 0
    except EngineConfigError as e:  # e.g. --device cuda on a machine without a GPU
        print(f"bench_engine: {e}", file=sys.stderr)
        return 1
    if not args.json:
        _print_table(figures)
    print(json.dumps(figures))
    return 0


def _print_table(figures: dict) -> None:
    print(f"engine vs transformers generate, {figures['model']} {figures['dtype']} on {figures['device']}, up to {figures['max_tokens']} new "
          f"tokens, median of {figures['num_runs']}, {figures['torch_threads']} torch threads", file=sys.stderr)
    head = ("concurrent", "lengths", "ours tok/s", "HF batched", "HF 1-by-1", "x 1-by-1", "x batched")
    print(" ".join(f"{h:>11}" for h in head), file=sys.stderr)
    keys = ("concurrent", "output_lengths", "ours_tok_s", "hf_batched_tok_s", "hf_one_at_a_time_tok_s",
            "ours_over_one_at_a_time", "ours_over_hf_batched")
    for r in figures["rows"]:
        print(" ".join(f"{r[k]:>11}" for k in keys), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
