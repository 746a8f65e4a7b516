"""``lori precompute CONFIG.yaml [key=value ...]``: the LoRi teacher statistics (lori.methods.lori.teacher). The main
process holds ``lori.cache_dir/.lock`` meanwhile, so two precomputes never write one cache."""

from __future__ import annotations

POSITIONAL = "overrides"  # key=value words after an option go back here


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML preset of the LoRi student run (lori.teacher, lori.cache_dir)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lori.rank=8")


def run(args) -> None:
    from pathlib import Path

    from ..config import command_line_config
    from ..distributed import process_state
    from ..methods.lori.teacher import check_cache_dir, precompute
    from ..training.identity import acquire_lock, release_lock

    cfg = command_line_config(args.config, args.overrides)
    check_cache_dir(cfg)  # before the lock creates the folder
    main = process_state().is_main_process  # accelerate's state, formed as precompute forms it (the CPU flag)
    lock = acquire_lock(Path(cfg.lori.cache_dir), "lori.cache_dir") if main else None
    try:
        precompute(cfg)
    finally:
        if lock is not None:
            release_lock(lock)
