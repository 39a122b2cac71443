"""The `swarm` command: one sub-command per module in this package, each imported only when used.

Each command module has `add_arguments(parser)` and `run(args) -> int`. This is the only part of
swarm that may import `peers`, `bootstrap` or `sims` (lazily, inside `run`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from swarm.errors import SwarmError

# name -> (module, one-line help). Modules are imported lazily so `swarm plan` never loads torch.
COMMANDS = {
    "plan": ("swarm.cli.plan_cmd", "plan a deployment for a cluster, model and workload"),
    "models": ("swarm.cli.models_cmd", "list the models available offline, or prepare the default one"),
    "generate": ("swarm.cli.generate_cmd", "generate text with a local engine (--local) or through a swarm"),
    "sim": ("swarm.cli.sim_cmd", "run a simulator experiment at paper scale"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(module=module_name)
        _module(module_name).add_arguments(command)
    return parser


def _module(name: str):
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _module(args.module).run(args)
    except SwarmError as e:
        print(f"swarm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"swarm {args.command}: interrupted", file=sys.stderr)
        return 130
