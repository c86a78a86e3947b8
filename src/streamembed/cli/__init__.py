"""streamembed monitor | backfill | status | map | evaluate | synth | demo | bench | manifests.

One module per command group, argparse throughout: ``run`` (backfill, monitor, rebuild),
``outputs`` (status, map, export, similar), ``operations`` (serve, manifests), ``harness``
(bench, evaluate, synth, demo); ``common`` holds what they share.

May import: every part of the package (nothing imports the command line).
"""

from __future__ import annotations

import argparse
import sys

from ..acquisition import SourceError
from ..config import ConfigError
from ..layout import OutputFullError
from ..storage import StorageError
from . import harness, operations, outputs, run
from .common import config_from_args, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamembed", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (run, outputs, operations, harness):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(
        args.verbose,
        getattr(args, "log_format", "text"),
        quiet_events=args.command != "monitor" and not getattr(args, "no_progress", False),
    )
    try:
        cfg = config_from_args(args)
        return int(args.func(args, cfg))
    except ConfigError as err:
        print(f"configuration error:\n{err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, SourceError, OutputFullError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
