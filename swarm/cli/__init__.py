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

# name -> (module, one-line help). Only the chosen command's module is imported, so `swarm plan`
# never pays for torch and `swarm --help` imports nothing.
COMMANDS = {
    "demo": ("swarm.cli.demo_cmd", "start a whole local swarm on this machine and send it prompts"),
    "join": ("swarm.cli.join_cmd", "run a peer that joins a swarm"),
    "bootstrap": ("swarm.cli.bootstrap_cmd", "run a bootstrap node (no model) that peers dial first"),
    "generate": ("swarm.cli.generate_cmd", "generate text with a local engine (--local) or through a swarm"),
    "status": ("swarm.cli.status_cmd", "show the coordinator's view of a swarm"),
    "plan": ("swarm.cli.plan_cmd", "plan a deployment for a cluster, model and workload"),
    "sim": ("swarm.cli.sim_cmd", "run a simulator experiment at paper scale"),
    "models": ("swarm.cli.models_cmd", "list the models available offline, or prepare the default one"),
    "keygen": ("swarm.cli.keygen_cmd", "write a new private-swarm key file"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s own arguments are loaded (importing its module)."""
    parser = argparse.ArgumentParser(prog="swarm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            return importlib.import_module(args.module).run(args)
        except BaseExceptionGroup as group:
            raise _sole_error(group) from None
    except SwarmError as e:
        print(f"swarm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"swarm {args.command}: interrupted", file=sys.stderr)
        return 130


def _sole_error(group: BaseExceptionGroup) -> BaseException:
    """A user's mistake raised inside a trio nursery arrives wrapped: unwrap a lone SwarmError or Ctrl-C."""
    errors = group.exceptions
    while len(errors) == 1 and isinstance(errors[0], BaseExceptionGroup):
        errors = errors[0].exceptions
    if len(errors) == 1 and isinstance(errors[0], SwarmError | KeyboardInterrupt):
        return errors[0]
    return group
