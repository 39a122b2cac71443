"""`swarm generate --peer ADDR "prompt"`: the swarm half of the generate command, kept in the SDK.

`swarm/cli/generate_cmd.py` adds `--peer` and `--swarm-key` with `add_swarm_arguments(parser)` and calls
`cli_generate(args)` when `--peer` is given; the prompt and sampling flags (`--chat`, `--max-tokens`,
`--temperature`, `--top-p`, `--top-k`, `--seed`, `--stop`) are the ones it already has for `--local`.
Tokens are printed as they arrive; TTFT and TPOT go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_swarm_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of swarm mode (`--peer`, `--swarm-key`); the sampling flags are shared with --local."""
    parser.add_argument("--peer", action="append", default=None, metavar="MULTIADDR",
                        help="generate through the swarm via this peer (repeatable: tried in order)")
    parser.add_argument("--swarm-key", default=None, metavar="FILE", help="private-swarm key file")


def cli_generate(args: argparse.Namespace) -> int:
    """Stream one generation through the swarm to stdout; timings to stderr."""
    from swarm.client.status import default_peer_addrs
    from swarm.client.sync import SwarmClient

    addrs = args.peer or default_peer_addrs()
    sampling = {k: getattr(args, k) for k in ("max_tokens", "temperature", "top_p", "top_k", "seed")
                if getattr(args, k, None) is not None}
    if getattr(args, "stop", None):
        sampling["stop"] = tuple(args.stop)
    client = SwarmClient(addrs, swarm_key=getattr(args, "swarm_key", None))
    prompt = args.prompt
    kwargs = {"messages": [{"role": "user", "content": prompt}]} if getattr(args, "chat", False) else {"prompt": prompt}
    start = time.perf_counter()
    first_s, num_tokens, reason = None, 0, ""
    for chunk in client.stream(**kwargs, **sampling):
        if chunk.token_ids and first_s is None:
            first_s = time.perf_counter() - start
        num_tokens += len(chunk.token_ids)
        reason = chunk.finish_reason
        print(chunk.text, end="", flush=True)
    total_s = time.perf_counter() - start
    tpot_ms = (total_s - (first_s or 0)) / max(1, num_tokens - 1) * 1e3
    print()
    print(f"[{num_tokens} tokens, finish: {reason}, TTFT {(first_s or 0) * 1e3:.0f} ms, TPOT {tpot_ms:.0f} ms]",
          file=sys.stderr)
    return 0
