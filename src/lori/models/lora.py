"""LoRA through ``peft`` (``model.lora_r``), applied to the language model after the method has wrapped it.

What trains: the LoRA factors of ``model.lora_target_modules``; the method's own modules outside the language model
(``get_peft_model`` freezes only the model it is given); for latent students, the ``<bot>``/``<eot>`` embedding rows
through peft's ``trainable_token_indices``. A LoRA run's checkpoint holds the **merged** weights at its top level
(merged on a CPU copy; loadable with no peft) and ``lora_adapter/``, the adapter alone, in a subfolder because
``from_pretrained`` takes a folder with ``adapter_config.json`` for an adapter. Resuming rebuilds the run's frozen
starting weights as a fresh run does, applies the same LoRA and loads the adapter, so it continues from
bit-identical weights (tested), which reloading the rounded merged weights would not give. docs/training.md.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import LoriError
from .tokenizer import BOT, EOT

ADAPTER_DIR = "lora_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft  # optional (the real extra): only model.lora_r needs it
    except ImportError as e:
        raise LoriError("model.lora_r needs peft: pip install 'lori[real]' (peft==0.21.2)") from e
    return peft


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel  # optional: without peft no model is a peft model
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_lora(module, tokenizer, model_cfg, checkpoint: str | Path | None = None):
    """Wrap ``module``'s language model (``module.lm``, or ``module`` itself) with LoRA; return the module to train.

    ``checkpoint``: a LoRA checkpoint to resume from (its ``lora_adapter/`` weights are loaded)."""
    peft = _peft()
    lm = getattr(module, "lm", module)
    vocab = tokenizer.get_vocab()
    tokens = [vocab[t] for t in (BOT, EOT) if t in vocab] if lm is not module else []
    targets = model_cfg.lora_target_modules
    config = peft.LoraConfig(
        r=model_cfg.lora_r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        trainable_token_indices=tokens or None,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = peft.get_peft_model(lm, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise LoriError(f"model.lora_target_modules={targets}: {e}") from e
    if checkpoint is not None:
        load_adapter(wrapped, checkpoint)
    if lm is module:
        return wrapped
    module.lm = wrapped
    return module


def load_adapter(wrapped, checkpoint: str | Path) -> None:
    from peft import set_peft_model_state_dict  # optional: a LoRA run has it (lori.models.lora._peft)

    f = Path(checkpoint) / ADAPTER_DIR / ADAPTER_WEIGHTS
    if not f.is_file():
        raise LoriError(f"{checkpoint}: model.lora_r is set but the checkpoint has no {ADAPTER_DIR}/{ADAPTER_WEIGHTS}; "
                        "it was not written by a LoRA run (set model.lora_r=null, or start a fresh run)")
    try:
        result = set_peft_model_state_dict(wrapped, load_file(str(f)))
    except RuntimeError as e:  # shape mismatch: another rank or other target modules
        raise LoriError(f"{f}: adapter weights do not fit this LoRA setup ({str(e).splitlines()[0]}); "
                        "model.lora_* must match the run being resumed") from e
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise LoriError(f"{f}: adapter weights do not fit this LoRA setup (unexpected {unexpected[:3]}); "
                        "model.lora_* must match the run being resumed")


def merged_copy(wrapped):
    """A CPU copy of a peft model with its adapters merged in (``merge_and_unload``); the live model is untouched.

    The copy is made parameter by parameter straight onto the CPU (deepcopy with a memo of CPU tensors), so the
    device never holds two models; tied parameters stay tied."""
    memo = {}
    for t in list(wrapped.parameters()) + list(wrapped.buffers()):
        if id(t) not in memo:
            cpu = t.detach().to("cpu", copy=True)
            memo[id(t)] = torch.nn.Parameter(cpu, requires_grad=False) if isinstance(t, torch.nn.Parameter) else cpu
    clone = copy.deepcopy(wrapped, memo)
    with torch.no_grad():
        return clone.merge_and_unload()


def save_lora_checkpoint(wrapped, folder: Path) -> None:
    """Merged weights at the top of ``folder`` and the adapter in ``folder/lora_adapter`` (module docstring)."""
    wrapped.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True, save_embedding_layers=False)
    merged = merged_copy(wrapped)
    merged.save_pretrained(folder, safe_serialization=True)
    del merged
