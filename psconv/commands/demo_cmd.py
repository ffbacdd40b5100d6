"""``psconv demo``: the main job (``make run``), dense against sparse on a real CIFAR-10 subset."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..demo import DEMO, run_demo
from .train_cmd import add_config_options, given_settings

# Settings the demo fixes (it compares exactly two runs of its own on CIFAR-10).
_FIXED = ("dataset", "download", "holdout", "eval_every", "compile", "amp", "channels_last", "kernel_choices")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="short dense-vs-sparse training on real CIFAR-10 (the `make run` job)",
        description="Train a model dense and with a sparse --pattern from one seed on a CIFAR-10 subset, "
        "and compare them. Options are psconv train's, with the demo's defaults in brackets.",
    )
    add_config_options(p, DEMO, skip=_FIXED)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(replace(DEMO, **given_settings(args)))
    return 0
