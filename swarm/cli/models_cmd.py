"""`swarm models`: list the models available offline, or prepare the default one.

    swarm models [list] [PATH ...]        converted models in the cache, plus each model folder given
    swarm models prepare [--dtype D]      convert the bundled SmolLM2-135M-Instruct once (idempotent)

The cache is `~/.cache/swarm/models/<name>`, or `$SWARM_MODEL_DIR/<name>`. Nothing is fetched from a hub.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    listing = actions.add_parser("list", help="list converted models and the given model folders (the default)")
    listing.add_argument("paths", nargs="*", metavar="PATH", help="model folders (config.json + *.safetensors)")
    prepare = actions.add_parser("prepare", help="convert the bundled SmolLM2-135M-Instruct into the cache, once")
    prepare.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                         help="dtype of the saved weights (default float16)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from swarm import modelstore

    if args.models_action == "prepare":
        target = modelstore.models_dir() / modelstore.DEFAULT_MODEL
        was_ready = modelstore.is_prepared(target)
        folder = modelstore.prepare(dtype=args.dtype, show_progress=not args.quiet)
        print(f"{modelstore.DEFAULT_MODEL}: {'already prepared' if was_ready else 'prepared'} in {folder}")
        return 0
    entries = modelstore.list_models(getattr(args, "paths", None) or [])
    if not entries:
        print(f"no models in {modelstore.models_dir()}: {modelstore.HOW_TO_PROVIDE}")
        return 0
    print(f"{'name':<28} {'architecture':<20} {'layers':>6} {'hidden':>6} {'size':>9}  path")
    for e in entries:
        print(f"{e.name:<28} {e.architecture:<20} {e.num_layers:>6} {e.hidden_size:>6} "
              f"{e.size_bytes / 2**20:>7.0f}MB  {e.path}")
    return 0
