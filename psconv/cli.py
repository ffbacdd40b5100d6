"""Command-line interface: ``psconv <command> ...``; each command lives in its own module.

A command module exposes ``add_parser(subparsers)``, which registers its sub-parser and sets
``func`` to a ``run(args) -> int``. Errors a user can cause end as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .allocator import tune_allocator
from .errors import CheckpointError

COMMAND_MODULES: list[str] = [
    "psconv.commands.profile_cmd",
    "psconv.commands.inspect_cmd",
    "psconv.commands.predict_cmd",
    "psconv.commands.export_cmd",
    "psconv.commands.convert_cmd",
    "psconv.commands.train_cmd",
    "psconv.commands.eval_cmd",
    "psconv.commands.demo_cmd",
    "psconv.commands.energy_cmd",
    "psconv.commands.report_cmd",
    "psconv.commands.bench_cmd",
]


# Commands that run models: they keep freed activation memory in the process (see allocator.py).
COMPUTE_COMMANDS = frozenset({"train", "eval", "bench", "demo", "predict"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="psconv", description="CNNs with pre-defined sparse kernels.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"psconv {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in COMPUTE_COMMANDS:
        tune_allocator()
    try:
        return int(args.func(args) or 0)
    # OSError too: an existing file named as an output folder, a full disk... are user errors.
    except (ValueError, OSError, CheckpointError) as exc:
        # One line, whatever the message: tarfile, for one, lists a reason per method tried.
        print(f"psconv: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
