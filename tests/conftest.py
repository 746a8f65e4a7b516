"""Fixtures and paths several test modules share (``from conftest import DATA, REPO``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lori.models.build import tiny_model
from lori.models.loading import builtin_tokenizer

REPO = Path(__file__).resolve().parents[1]  # the repository root
DATA = REPO.parent / "shared" / "data"  # the real benchmark files, beside the checkout, never copied into it


@pytest.fixture(scope="session")
def save_random_teacher():
    """``save(folder, model_cfg, examples) -> folder``: a randomly initialised tiny model (torch seed 0) with the
    built-in tokenizer of ``examples``, saved as a teacher checkpoint folder (LoRi's precompute reads it)."""

    def save(folder: Path, model_cfg, examples) -> Path:
        tok = builtin_tokenizer(examples)
        torch.manual_seed(0)
        tiny_model(model_cfg, tok, max_positions=128).save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder

    return save
