"""`swarm bootstrap --listen ADDR [--swarm-key FILE] [--identity FILE]`: run a bootstrap/relay node."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", action="append", default=None, metavar="ADDR",
                        help="multiaddr to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    parser.add_argument("--swarm-key", default=None, metavar="FILE",
                        help="private-swarm key file (from `swarm keygen`); omit for an open swarm")
    parser.add_argument("--identity", default=None, metavar="FILE",
                        help="identity key file, created if missing (default ~/.swarm/identity.key)")
    parser.add_argument("--no-relay", action="store_true", help="do not act as a circuit-relay v2 hop")


def run(args: argparse.Namespace) -> int:
    import functools

    import trio

    from bootstrap.node import BootstrapConfig, run_bootstrap
    from swarm.net.host import HostConfig

    host = HostConfig(listen_addrs=tuple(args.listen or ["/ip4/0.0.0.0/tcp/4001"]), identity_path=args.identity,
                      swarm_key_path=args.swarm_key)
    config = BootstrapConfig(host=host, is_relay=not args.no_relay)
    return trio.run(run_bootstrap, config, functools.partial(print, flush=True))
