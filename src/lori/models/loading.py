"""Which weights and tokenizer a run starts from: a resumed checkpoint, ``model.init_from``, a tiny model built
from config with the project's small-vocabulary tokenizer, or a Hugging Face model by hub id / local folder; and
:func:`open_model`, the one way a checkpoint is opened for a config (training, ``lori eval`` and ``lori.load``,
precompute, analyze)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, ModelConfig
from ..data.render import check_chat_template
from ..data.schema import Example
from ..errors import ConfigError
from .build import load_pretrained, tiny_model
from .checkpoint_folders import resolve_checkpoint
from .lora import apply_lora
from .tokenizer import build_bpe_tokenizer, build_word_tokenizer


def builtin_tokenizer(examples: list[Example], model: ModelConfig | None = None):
    """The tokenizer of a tiny model (``model.tokenizer``), built from the training texts."""
    texts = (t for ex in examples for t in (ex.question, ex.rationale, ex.answer))
    if model is not None and model.tokenizer == "bpe":
        return build_bpe_tokenizer((f"{ex.question} || {ex.rationale} #### {ex.answer}" for ex in examples),
                                   model.bpe_vocab_size)
    return build_word_tokenizer(texts)


def open_model(source: str | Path, cfg: Config, wrap=None):
    """``(module, tokenizer)`` of the model at ``source`` (a checkpoint folder, a model folder or a hub id) for a run
    with ``cfg``: the weights in ``model.dtype`` and their tokenizer, ``model.chat_template`` checked against the
    tokenizer, and, when ``wrap`` (a method's ``wrap``) is given, the method's module around the LM with its extra
    files (a latent student's projector) read from ``source``; else the LM itself."""
    lm, tokenizer = load_pretrained(source, cfg.model.dtype)
    check_chat_template(tokenizer, cfg.model.chat_template)
    return (lm if wrap is None else wrap(lm, tokenizer, cfg, Path(source))), tokenizer


def build_model(cfg: Config, method, train_set: list[Example], resume_from=None):
    """Return ``(module, tokenizer)``; ``module`` is what the method trains (the LM, or a wrapper holding it).

    With LoRA (``model.lora_r``) a resumed run rebuilds its frozen starting weights as a fresh run does and loads
    the adapter from ``resume_from`` (lori.models.lora); the checkpoint's merged weights are for use, not resume."""
    lora = cfg.model.lora_r is not None
    source = None if lora else resume_from
    source = source or (resolve_checkpoint(cfg.model.init_from, "model.init_from") if cfg.model.init_from else None)
    if source is not None:
        lm, tokenizer = open_model(source, cfg)
        if cfg.model.name == "tiny":
            check_architecture(lm, cfg.model, source)
    elif cfg.model.name == "tiny":
        tokenizer = builtin_tokenizer(train_set, cfg.model)
        check_chat_template(tokenizer, cfg.model.chat_template)
        torch.manual_seed(cfg.train.seed)
        lm = tiny_model(cfg.model, tokenizer, max_positions=cfg.data.max_length)
    else:
        lm, tokenizer = open_model(cfg.model.name, cfg)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and keyword arguments. Latent students then run their
        # latent loop without a KV cache while training (lori.models.latent_student).
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    module = method.wrap(lm, tokenizer, cfg, resume_from)
    if lora:
        module = apply_lora(module, tokenizer, cfg.model, resume_from)
    return module, tokenizer


TINY_ARCH_KEYS = ("arch", "hidden_size", "num_layers", "num_heads", "intermediate_size")


def architecture(lm) -> dict:
    """The ``model.*`` values of a tiny model's architecture, read from its Hugging Face config."""
    c = lm.config
    inner = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
    return {"arch": c.model_type, "hidden_size": c.hidden_size, "num_layers": c.num_hidden_layers,
            "num_heads": c.num_attention_heads, "intermediate_size": inner}


def check_architecture(lm, model: ModelConfig, source) -> None:
    """A tiny model started from a checkpoint has that checkpoint's architecture: refuse a config that says
    otherwise, so the config saved with the run describes the weights."""
    have = architecture(lm)
    bad = [k for k in TINY_ARCH_KEYS if getattr(model, k) != have[k]]
    if bad:
        said = ", ".join(f"model.{k}={getattr(model, k)}" for k in bad)
        raise ConfigError(f"{said} but {source} holds a model with "
                          f"{', '.join(f'{k} {have[k]}' for k in bad)}; a model started from a checkpoint has its "
                          f"architecture: set {' '.join(f'model.{k}={have[k]}' for k in bad)}")
