"""Which weights and tokenizer a run starts from: a resumed checkpoint, ``model.init_from``, a tiny model built
from config with the project's small-vocabulary tokenizer, or a Hugging Face model by hub id / local folder."""

from __future__ import annotations

import torch

from ..config import Config
from ..data.schema import Example
from ..models.build import load_pretrained, tiny_model
from ..models.tokenizer import build_word_tokenizer
from .checkpoint import resolve_checkpoint


def builtin_tokenizer(examples: list[Example]):
    return build_word_tokenizer(t for ex in examples for t in (ex.question, ex.rationale, ex.answer))


def build_model(cfg: Config, method, train_set: list[Example], resume_from=None):
    """Return ``(module, tokenizer)``; ``module`` is what the method trains (the LM, or a wrapper holding it)."""
    source = resume_from or (resolve_checkpoint(cfg.model.init_from) if cfg.model.init_from else None)
    if source is not None:
        lm, tokenizer = load_pretrained(source, cfg.model.dtype)
    elif cfg.model.name == "tiny":
        tokenizer = builtin_tokenizer(train_set)
        torch.manual_seed(cfg.train.seed)
        lm = tiny_model(cfg.model, tokenizer, max_positions=cfg.data.max_length)
    else:
        lm, tokenizer = load_pretrained(cfg.model.name, cfg.model.dtype)
    return method.wrap(lm, tokenizer, cfg, resume_from), tokenizer
