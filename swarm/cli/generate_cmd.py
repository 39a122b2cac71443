"""`swarm generate`: an answer with TTFT and TPOT, from a local engine or through a swarm.

    swarm generate --local [--model NAME|PATH] [--device auto|cpu|cuda] [--max-tokens N] [--kv-bits 16|8|4] [--chat]
                   [--temperature T --top-p P --top-k K --seed S] [--stop STR ...] PROMPT
    swarm generate --peer MULTIADDR [--swarm-key FILE] [same sampling flags] PROMPT

Without --local or --peer, the peer addresses that `swarm join` wrote locally are used.

With --kv-bits 8 or 4 the prompt is prefilled by a prefill-role engine, its KV exported in that format,
imported by a decode-role engine, which continues: the real hand-off path, in one process.
"""

from __future__ import annotations

import argparse
import sys
import time

from swarm.client.cli import add_swarm_arguments, cli_generate
from swarm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt (with --chat: the user's message)")
    parser.add_argument("--local", action="store_true", help="run the engine in this process, without a swarm")
    parser.add_argument("--model", default=None, help="a prepared model name or a model folder (default smollm2-135m-instruct)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="with --local: where the engine runs (default auto: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    parser.add_argument("--kv-bits", type=int, choices=(16, 8, 4), default=16,
                        help="8 or 4: prefill and decode in two engines with the KV handed over in that format")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="auto (default): float32 on the CPU, bfloat16 on a GPU (float16 where it lacks bf16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    add_swarm_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.local:
        if args.peer is None and args.kv_bits != 16:
            raise ConfigError("--kv-bits applies to --local; a swarm uses the KV format its peers were started with")
        return cli_generate(args)
    if args.peer:
        raise ConfigError("--local and --peer exclude each other: run the engine here, or ask a swarm")
    import torch

    from peers.engine import Engine, EngineConfig, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_tokens=args.max_tokens, stop=tuple(args.stop))
    prompt = {"messages": [{"role": "user", "content": args.prompt}]} if args.chat else {"prompt": args.prompt}
    settings = {"device": args.device, "dtype": args.dtype, "kv_cache_bytes": 256 << 20}
    role = "both" if args.kv_bits == 16 else "prefill"
    engine = Engine.load(args.model, EngineConfig(role=role, **settings))
    start = time.perf_counter()
    engine.add("cli", **prompt, params=params)
    (first,) = engine.step()
    ttft_s = time.perf_counter() - start
    _show(first.text)
    if role == "prefill" and not (first.is_finished and first.finish_reason != "prefilled"):
        engine = _hand_off(engine, first, args, params, settings)
    num_tokens = len(first.token_ids)
    while engine.has_work():
        for event in engine.step():
            num_tokens += len(event.token_ids)
            _show(event.text)
    total_s = time.perf_counter() - start
    tpot_ms = (total_s - ttft_s) / max(1, num_tokens - 1) * 1e3
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[{num_tokens} tokens, TTFT {ttft_s * 1e3:.0f} ms, TPOT {tpot_ms:.1f} ms/token, KV {args.kv_bits}-bit]",
          file=sys.stderr)
    return 0


def _hand_off(prefill, first, args, params, settings):
    """Export the prompt's KV from the prefill engine and continue in a new decode-role engine."""
    from kernels import KvFormat
    from peers.engine import Engine, EngineConfig

    blob = prefill.export_kv("cli", KvFormat(bits=args.kv_bits))
    print(f"[handed {len(blob) / 1024:.0f} KiB of {args.kv_bits}-bit KV to the decode engine]", file=sys.stderr)
    decode = Engine.load(args.model, EngineConfig(role="decode", **settings))
    decode.import_kv("cli", blob, prompt_token_ids=list(first.prompt_token_ids),
                     output_token_ids=list(first.token_ids), params=params)
    return decode


def _show(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
