"""`swarm join --bootstrap ADDR ... [--model NAME|PATH] [--profile GPU[xN]]`: run a peer that joins a swarm.

Settings merge as file (--config) < environment (SWARM_*) < these flags; see peers/config.py.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", action="append", default=None, metavar="MULTIADDR",
                        help="a peer to dial first, /ip4/.../tcp/PORT/p2p/<peer id> (repeatable)")
    parser.add_argument("--swarm-key", default=None, metavar="FILE", help="private-swarm key file (`swarm keygen`)")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="prepared model name or model folder (default: smollm2-135m-instruct)")
    parser.add_argument("--profile", default=None, metavar="GPU[xN]",
                        help="declare an emulated GPU profile, e.g. A40 or RTX3090Tix2 (default: probe)")
    parser.add_argument("--listen", action="append", default=None, metavar="MULTIADDR",
                        help="address to listen on (repeatable; default /ip4/0.0.0.0/tcp/0)")
    parser.add_argument("--identity", default=None, metavar="FILE",
                        help="identity key file, created if missing (default ~/.swarm/identity.key)")
    parser.add_argument("--name", default=None, help="this peer's host name in plans (default: the machine's)")
    parser.add_argument("--no-model", action="store_true",
                        help="serve no model: a bootstrap and entry node (membership, status, dispatch)")
    parser.add_argument("--kv-bits", type=int, choices=(4, 8, 16), default=None,
                        help="KV format on the prefill->decode wire (default 4; 16 = fp16)")
    parser.add_argument("--device", default=None, help="engine device: auto (default; cuda if torch sees a GPU), "
                        "cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                        help="engine dtype (default auto: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--rate", type=float, default=None, dest="rate_rps",
                        help="request rate the coordinator plans for (req/s, default 1)")
    parser.add_argument("--workload", default=None, help="workload the coordinator plans for (default azure-conv)")
    parser.add_argument("--plan", default=None, metavar="FILE", dest="plan_file",
                        help="as coordinator, publish this plan (JSON, e.g. `swarm plan --json`) instead of planning; "
                             "its host names are the peers' --name")
    parser.add_argument("--addrs-file", default=None, metavar="FILE",
                        help="write this peer's multiaddrs to FILE once it listens (default $SWARM_ADDRS_FILE or ~/.swarm/peer.addrs, "
                             "where `swarm status` looks)")
    parser.add_argument("--config", default=None, metavar="FILE", help="peer config file (TOML)")


def run(args: argparse.Namespace) -> int:
    import trio

    from peers.config import load_peer_config
    from peers.daemon import run_peer

    flags = {
        "bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "swarm_key_path": args.swarm_key, "model": args.model, "profile": args.profile,
        "listen": tuple(args.listen) if args.listen else None, "identity_path": args.identity,
        "name": args.name, "is_serving": False if args.no_model else None, "kv_bits": args.kv_bits,
        "rate_rps": args.rate_rps, "workload": args.workload, "addrs_file": args.addrs_file,
        "plan_file": args.plan_file, "device": args.device, "dtype": args.dtype,
    }
    if flags["addrs_file"] is None:
        from swarm.client.status import addrs_file

        flags["addrs_file"] = str(addrs_file())
    config = load_peer_config(args.config, flags=flags)
    if logging.getLogger().level > logging.INFO:  # an operator wants to see joins, plans and failures
        logging.getLogger("peers").setLevel(logging.INFO)
    trio.run(run_peer, config)
    return 0
