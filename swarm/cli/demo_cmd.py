"""`swarm demo [--once] [--prompt TEXT ...]`: a whole swarm on this machine, serving real prompts.

Starts a bootstrap node and three peers as separate processes on 127.0.0.1 with the default SmolLM2
model and emulated profiles (one A40-like peer, two RTX 3090 Ti-like peers), waits for the coordinator's
plan, prints it, sends the prompts through the client SDK and prints each answer with its TTFT and TPOT.
Then it keeps serving until Ctrl-C (`--once` exits after the prompts). Every child is always stopped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
)
PEERS = (("peer-a40", "A40"), ("peer-3090ti-0", "RTX3090Ti"), ("peer-3090ti-1", "RTX3090Ti"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="exit after the prompts instead of serving on")
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="a prompt to send (repeatable; replaces the built-in prompts)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH", help="model (default smollm2-135m-instruct)")
    parser.add_argument("--kv-bits", type=int, choices=(4, 8, 16), default=4, help="KV format on the wire (default 4)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer at most (default 48)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for the plan (default 150)")


def run(args: argparse.Namespace) -> int:
    from swarm.client.localswarm import LocalSwarm, PeerSpec
    from swarm.modelstore import resolve_model

    resolve_model(args.model)  # fail now, with the fix in the message, if the model is not prepared
    quiet_libp2p()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or a timeout stops the children like Ctrl-C does
    started = time.perf_counter()
    print("starting a bootstrap node and 3 peers on 127.0.0.1 (emulated A40, RTX 3090 Ti x2) ...", flush=True)
    swarm = LocalSwarm([PeerSpec(name, profile) for name, profile in PEERS], model=args.model, kv_bits=args.kv_bits)
    try:
        with swarm:
            print(f"bootstrap node: {swarm.bootstrap_addr}\nlogs and identities: {swarm.workdir}", flush=True)
            status = swarm.wait_for_plan(args.timeout)
            print(f"plan ready after {time.perf_counter() - started:.1f} s:\n")
            _print_status(status)
            _send_prompts(swarm, args.prompt or DEFAULT_PROMPTS, args.max_tokens)
            if args.once:
                print(f"\ndone in {time.perf_counter() - started:.1f} s; stopping the swarm")
                return 0
            _serve(swarm)
    except KeyboardInterrupt:
        print("\nstopped; every peer process has been shut down")
    return 0


def quiet_libp2p() -> None:
    """libp2p logs every failed dial as an error; this command reports failures itself, in words."""
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_status(status) -> None:
    from swarm.client.status import format_status

    print(format_status(status), flush=True)


def _send_prompts(swarm, prompts, max_tokens: int) -> None:
    client = swarm.client()
    for prompt in prompts:
        completion = client.generate(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens)
        print(f"\n> {prompt}\n{completion.text.strip()}")
        print(f"  [{completion.num_tokens} tokens, TTFT {completion.ttft_s * 1e3:.0f} ms, "
              f"TPOT {completion.tpot_s * 1e3:.0f} ms, finish: {completion.finish_reason}]", flush=True)


def _serve(swarm) -> None:
    from swarm.client.status import addrs_file

    addr = swarm.bootstrap_addr
    path = addrs_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(addr + "\n")  # so a plain `swarm status` finds this swarm
    print(f"\nserving until Ctrl-C. Try:\n  swarm status\n  swarm generate --peer {addr} \"Hi\"\n"
          f"  python -c \"from swarm.client import SwarmClient; "
          f"print(SwarmClient('{addr}').generate('Hi').text)\"", flush=True)
    while True:
        swarm.check_alive()
        time.sleep(1.0)
