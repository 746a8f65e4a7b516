"""The train / valid / test splits a config names: read from files, or generated (multiplication, chains) when no
file is given. Generated splits never overlap: test is drawn first, valid excludes test, train excludes both."""

from __future__ import annotations

from functools import lru_cache

from ..config import DataConfig
from ..errors import ConfigError
from . import chains
from .multiplication import generate as generate_multiplication
from .readers import read_examples
from .schema import Example

SPLITS = ("train", "valid", "test")
_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}


def load_split(cfg: DataConfig, split: str) -> list[Example]:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return list(_load(_key(cfg), split))


def _key(cfg: DataConfig) -> tuple:
    return (cfg.task, cfg.format, cfg.train_file, cfg.valid_file, cfg.test_file, tuple(cfg.digits),
            cfg.train_size, cfg.valid_size, cfg.test_size, cfg.seed,
            (cfg.chain_steps, cfg.chain_modulus, cfg.chain_ops, cfg.chain_back_ref, cfg.chain_rationale))


@lru_cache(maxsize=8)
def _load(key: tuple, split: str) -> tuple[Example, ...]:
    task, fmt, train_file, valid_file, test_file, digits, train_size, valid_size, test_size, seed, chain = key
    path = {"train": train_file, "valid": valid_file, "test": test_file}[split]
    if path is not None:
        return tuple(read_examples(path, fmt))
    if task not in ("multiplication", "chains"):
        raise ConfigError(f"data.{split}_file is required for task {task!r}; only multiplication and chains can be "
                          "generated")
    earlier = {"train": ("valid", "test"), "valid": ("test",), "test": ()}[split]
    exclude = [ex for other in earlier for ex in _load(key, other)]
    count = {"train": train_size, "valid": valid_size, "test": test_size}[split]
    if task == "chains":
        steps, modulus, ops, back_ref, rationale = chain
        return tuple(chains.generate(count, seed + _SEED_OFFSET[split], steps, modulus, ops, back_ref, rationale,
                                     exclude=exclude))
    return tuple(generate_multiplication(digits[0], digits[1], count, seed + _SEED_OFFSET[split], exclude=exclude))
