"""`swarm status --peer ADDR [--json]`: the coordinator's view of a swarm (peers, profiles, plan, epoch, load)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", action="append", default=None, metavar="MULTIADDR",
                        help="any peer of the swarm, /ip4/.../tcp/PORT/p2p/<id> (repeatable; default $SWARM_PEER, "
                             "else the last `swarm join`/`swarm demo` on this machine)")
    parser.add_argument("--swarm-key", default=None, metavar="FILE", help="private-swarm key file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")


def run(args: argparse.Namespace) -> int:
    from swarm.cli.demo_cmd import quiet_libp2p
    from swarm.client.status import default_peer_addrs, fetch_status, format_status, status_dict

    quiet_libp2p()
    addrs = args.peer or default_peer_addrs()
    reply = fetch_status(addrs, swarm_key=args.swarm_key, timeout_s=args.timeout)
    print(json.dumps(status_dict(reply), indent=2) if args.json else format_status(reply))
    return 0
