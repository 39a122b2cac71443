"""`swarm bootstrap --listen ADDR [--swarm-key FILE] [--identity FILE] [--no-relay]`: run a bootstrap node.

The node is the peer daemon with serving off (`peers.daemon.run_peer`, the same code path as `swarm join
--no-model`: membership digests, status, dispatch as an entry peer) plus `bootstrap.node`'s circuit-relay
v2 hop and peer list on the daemon's host. Composed here: `peers` and `bootstrap` do not import each other.
Other peer settings come from `--config FILE` or `SWARM_*` environment variables, as for `swarm join`.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", action="append", default=None, metavar="ADDR",
                        help="multiaddr to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    parser.add_argument("--swarm-key", default=None, metavar="FILE",
                        help="private-swarm key file (from `swarm keygen`); omit for an open swarm")
    parser.add_argument("--identity", default=None, metavar="FILE",
                        help="identity key file, created if missing (default ~/.swarm/identity.key)")
    parser.add_argument("--no-relay", action="store_true", help="do not act as a circuit-relay v2 hop")
    parser.add_argument("--addrs-file", default=None, metavar="FILE",
                        help="also write the listen multiaddrs to this file (for scripts)")
    parser.add_argument("--config", default=None, metavar="FILE", help="peer config file (TOML)")


def run(args: argparse.Namespace) -> int:
    import functools

    import trio

    from peers.config import load_peer_config

    flags = {"listen": tuple(args.listen or ["/ip4/0.0.0.0/tcp/4001"]), "identity_path": args.identity,
             "swarm_key_path": args.swarm_key, "addrs_file": args.addrs_file, "is_serving": False}
    config = load_peer_config(args.config, flags=flags)
    if logging.getLogger().level > logging.INFO:  # an operator wants to see joins and departures
        logging.getLogger("peers").setLevel(logging.INFO)
    return trio.run(functools.partial(run_bootstrap_node, config, is_relay=not args.no_relay))


async def run_bootstrap_node(config, *, is_relay: bool, print_line=None) -> int:
    """The daemon (serving off) with the bootstrap services, until SIGINT or SIGTERM (or until the daemon
    stops itself, as when its launcher is gone); the first printed line is the node's full multiaddr."""
    import functools
    import signal

    import trio

    from bootstrap.node import run_bootstrap_services
    from peers.daemon import run_peer

    print_line = print_line or functools.partial(print, flush=True)
    services = functools.partial(run_bootstrap_services, is_relay=is_relay)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
                await run_peer(config, services=services, task_status=task_status)
                nursery.cancel_scope.cancel()

            node = await nursery.start(run)
            print_line(node.host.addrs[0])
            for addr in node.host.addrs[1:]:
                logger.info("also listening on %s", addr)
            async for signum in signals:
                logger.info("bootstrap node: %s received, shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    return 0
