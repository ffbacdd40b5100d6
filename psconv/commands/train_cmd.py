"""``psconv train``: options derived from :class:`TrainConfig`'s fields, plus ``--config FILE``.

Precedence: the dataclass defaults, then ``--config`` (YAML, TOML or a run's ``config.json``),
then the flags given. ``--resume`` starts from the run folder's ``config.json`` instead of the
defaults; a flag that changes what the run computes is then refused (see ``RESUME_KEYS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from ..train import train
from ..train_config import TrainConfig, coerce, config_fields, field_type, read_config_file


def add_config_options(p: argparse.ArgumentParser, defaults: TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One option per :class:`TrainConfig` field, its help and default from the field.

    Defaults are left unset in the namespace (``SUPPRESS``), so that a config file or a resumed
    run can tell which settings the user gave on the command line."""
    for f in config_fields():
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        kind, _ = field_type(f)
        default = getattr(defaults, f.name)
        choices = f.metadata.get("choices")
        choices = choices() if callable(choices) else choices
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"] + ("" if default is None else f" [{default}]")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, help=text,
                           metavar=None if choices else f.name.upper())  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default); resumable; torchrun for many GPUs",
        description="Train a model with the paper's recipe; `torchrun --nproc_per_node=N -m psconv train ...` "
        "trains with DDP. Defaults are shown in brackets; --config FILE sets any of them, flags override it.",
    )
    p.add_argument("--config", metavar="FILE", help="settings from a YAML/TOML file or a run's config.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its config by default)")
    add_config_options(p, TrainConfig())
    p.set_defaults(func=run)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings named on the command line (type-checked as the dataclass declares)."""
    return {
        f.name: coerce(f.name, getattr(args, f.name), "command line")
        for f in config_fields()
        if hasattr(args, f.name)
    }


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = given_settings(args)
    base: dict[str, Any] = read_config_file(args.config) if getattr(args, "config", None) else {}
    if getattr(args, "resume", False):
        run_dir = Path(given.get("out") or base.get("out") or TrainConfig(**(base | given)).run_dir())
        stored_file = run_dir / "config.json"
        if not stored_file.is_file():
            raise FileNotFoundError(f"nothing to resume: {str(stored_file)!r} does not exist")
        try:
            stored = json.loads(stored_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{str(stored_file)!r} is not valid JSON") from None
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        base = {k: v for k, v in stored.items() if k in known} | base
        given["out"] = str(run_dir)
    return TrainConfig(**(base | given))


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # SIGTERM (a scheduler stopping the job) ends like Ctrl-C: the last finished epoch is saved.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        train(config, resume=args.resume)
    except KeyboardInterrupt:
        print(
            f"psconv: interrupted; the last finished epoch is saved in {str(config.run_dir())!r}; "
            f"continue with: psconv train --out {config.run_dir()} --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
