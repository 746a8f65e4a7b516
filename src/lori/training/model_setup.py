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
    """Return ``(module, tokenizer)``; ``module`` is what the method trains (the LM, or a wrapper holding it).

    With LoRA (``model.lora_r``) a resumed run rebuilds its frozen starting weights as a fresh run does and loads
    the adapter from ``resume_from`` (lori.training.lora); the checkpoint's merged weights are for use, not resume."""
    lora = cfg.model.lora_r is not None
    source = None if lora else resume_from
    source = source or (resolve_checkpoint(cfg.model.init_from) if cfg.model.init_from else None)
    if source is not None:
        lm, tokenizer = load_pretrained(source, cfg.model.dtype)
    elif cfg.model.name == "tiny":
        tokenizer = builtin_tokenizer(train_set)
        torch.manual_seed(cfg.train.seed)
        lm = tiny_model(cfg.model, tokenizer, max_positions=cfg.data.max_length)
    else:
        lm, tokenizer = load_pretrained(cfg.model.name, cfg.model.dtype)
    configure_tokenizer(tokenizer, cfg)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and keyword arguments. Latent students then run their
        # latent loop without a KV cache while training (lori.models.latent).
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    module = method.wrap(lm, tokenizer, cfg, resume_from)
    if lora:
        from .lora import apply_lora

        module = apply_lora(module, tokenizer, cfg.model, resume_from)
    return module, tokenizer


def configure_tokenizer(tokenizer, cfg: Config):
    """Rendering options that travel with the tokenizer (``model.chat_template``; lori.methods.render)."""
    from ..methods.render import set_chat_template

    set_chat_template(tokenizer, cfg.model.chat_template)
    return tokenizer
