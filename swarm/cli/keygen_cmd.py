"""`swarm keygen [PATH] [--force]`: write a new private-swarm key file (0600)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=None,
                        help="where to write the key (default ~/.swarm/swarm.key)")
    parser.add_argument("--force", action="store_true", help="replace an existing key file")


def run(args: argparse.Namespace) -> int:
    from swarm.net.swarmkey import write_swarm_key

    path = write_swarm_key(args.path, force=args.force)
    print(f"wrote swarm key {path} (mode 0600); copy it to every peer and pass --swarm-key {path}")
    return 0
