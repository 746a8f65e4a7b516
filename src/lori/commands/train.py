"""``lori train CONFIG.yaml [key=value ...]``: train any method (the method is a config field)."""

from __future__ import annotations

POSITIONAL = "overrides"  # key=value words after an option go back here


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML preset (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 method=no-cot")


def run(args) -> None:
    from ..config import command_line_config
    from ..training.loop import train

    train(command_line_config(args.config, args.overrides))
