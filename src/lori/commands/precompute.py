"""``lori precompute CONFIG.yaml [key=value ...]``: the LoRi teacher statistics (lori.methods.lori.teacher)."""

from __future__ import annotations

POSITIONAL = "overrides"  # key=value words after an option go back here


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML preset of the LoRi student run (lori.teacher, lori.cache_dir)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lori.rank=8")


def run(args) -> None:
    from ..config import command_line_config
    from ..methods.lori.teacher import precompute

    precompute(command_line_config([*([args.config] if args.config else []), *args.overrides]))
