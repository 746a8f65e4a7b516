"""Loading Hugging Face causal LMs, or building tiny ones from config with random weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..config import ModelConfig
from ..errors import LoriError
from .checkpoint_folders import verify_weights
from .hub import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def quiet_progress():
    """Hide transformers' own progress bars ("Loading weights", "Writing model shards") meanwhile: they would print
    inside lori's training and evaluation bars at every checkpoint and every ``lori.load``."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, max_positions: int) -> PreTrainedModel:
    """A randomly initialised LLaMA / Qwen2 / GPT-2 model of the configured size for ``tokenizer``'s vocabulary."""
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    # LLaMA and Qwen2 share their config vocabulary (Qwen2 = LLaMA + QKV bias + sliding-window options).
    decoder = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=max_positions,
        **common,
    )
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM  # each branch loads its architecture's code only

        model = LlamaForCausalLM(LlamaConfig(**decoder))
    elif cfg.arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM  # (see the llama branch)

        model = Qwen2ForCausalLM(Qwen2Config(**decoder))
    elif cfg.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel  # (see the llama branch)

        mc = GPT2Config(
            n_embd=cfg.hidden_size,
            n_inner=cfg.intermediate_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_positions=max_positions,
            # No dropout, as in the LLaMA and Qwen2 configs: the three architectures train alike.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        model = GPT2LMHeadModel(mc)
    else:  # the config's Literal already refuses this; kept for direct callers
        raise LoriError(f"model.arch: unknown architecture {cfg.arch!r}; choose llama, qwen2 or gpt2")
    return model.to(DTYPES[cfg.dtype])


def load_pretrained(name_or_path: str | Path, dtype: str = "float32"):
    """A Hugging Face causal LM and its own tokenizer, from a hub id, a local folder (our checkpoints too) or an
    offline alias such as ``smollm2-135m`` (:mod:`lori.models.hub`, converted once to a cached folder)."""
    name_or_path = resolve_model(name_or_path)
    if Path(name_or_path).is_dir():
        check_weights(Path(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=DTYPES[dtype])
    except OSError as e:
        raise LoriError(
            f"cannot load model {name_or_path!r}: {e}. Give a local folder with config.json and weights, "
            "or a hub id with network access."
        ) from e
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise LoriError(f"{name_or_path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                        f"{rows} rows; give a folder whose tokenizer matches its model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only LMs often ship without a pad token
    tokenizer.padding_side = "left"
    return model, tokenizer


def check_weights(folder: Path) -> None:
    """Refuse a local model folder whose safetensors files are truncated or damaged, naming the file, before
    ``from_pretrained`` fails on it with a bare ``SafetensorError`` (the header of a safetensors file must cover the
    file exactly, so a cut-off copy or a write a full disk stopped is caught here), then their content against the
    folder's ``weights.sha256`` (:func:`lori.models.checkpoint_folders.verify_weights`: a flipped byte)."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # safetensors' SafetensorError: header too small, file not fully covered, ...
            raise LoriError(f"{f} is truncated or damaged ({str(e).splitlines()[0][:100]}); copy the checkpoint "
                            f"folder {folder} again from where it was written, or use another checkpoint (e.g. an "
                            "earlier step-* folder)") from None
    verify_weights(folder)


def hidden_size(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().weight.shape[1]


def num_layers(model: PreTrainedModel) -> int:
    return model.config.get_text_config().num_hidden_layers
