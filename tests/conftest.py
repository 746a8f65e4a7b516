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


def gpt2_style_bpe(texts, vocab_size: int = 1000, specials=("<s>", "</s>")):
    """A GPT-2-style byte-level BPE trained offline on ``texts`` (no merges across the ByteLevel pre-tokens), with
    <s>/</s> and no pad, <bot> or <eot> token, as many hub tokenizers: the tests of anything token-positional."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                                              show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
