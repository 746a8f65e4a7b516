"""The GPU presets (configs/paper/*-lori.yaml) run the recipe that works on chains: step anchors, aligned thought
positions, a loss-driven curriculum, the identity projector; each runs teacher statistics and a few training steps
on the CPU with a tiny random model of its architecture, a digit-wise BPE and GSM8k-Aug lines."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from conftest import DATA, REPO
from lori.config import load_config
from lori.data import read_examples
from lori.methods.lori.teacher import precompute
from lori.models.tokenizer import build_bpe_tokenizer
from lori.training.loop import train

AUG_VALID = DATA / "gsm8k-aug" / "valid.txt"
PRESETS = sorted((REPO / "configs" / "paper").glob("*-lori.yaml"))


def test_every_gpu_preset_runs_the_recipe_that_works():
    assert len(PRESETS) == 4
    for preset in PRESETS:
        cfg = load_config(preset)
        assert cfg.lori.step_anchors and cfg.lori.projector == "identity", preset.name
        assert cfg.curriculum.stages > 0 and cfg.curriculum.advance_below is not None, preset.name
        assert cfg.curriculum.thought_positions == "aligned", preset.name
        text = preset.read_text()
        assert "lori.step_anchors=false curriculum.stages=0 lori.projector=mlp" in text  # the paper's pure form


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    lines = AUG_VALID.read_text().splitlines()
    for name, part in (("train", lines[:48]), ("valid", lines[48:56]), ("test", lines[56:60])):
        (root / f"{name}.txt").write_text("\n".join(part) + "\n")
    exs = read_examples(root / "train.txt", "icot")
    tok = build_bpe_tokenizer((f"{e.question} || {e.rationale} #### {e.answer}" for e in exs), 400)
    return root, tok


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_a_gpu_preset_runs_on_the_cpu_with_a_tiny_model_of_its_architecture(preset, data, tmp_path):
    root, tok = data
    arch = "qwen2" if "qwen" in preset.name else "llama"
    config = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
        vocab_size=len(tok) + 8, hidden_size=32,  # + room for the <|endoftext|> a qwen2 folder's tokenizer adds
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(config).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    cfg = load_config(preset, [
        f"model.name={teacher}", f"model.init_from={teacher}", f"lori.teacher={teacher}", "model.dtype=float32",
        "model.lora_r=4", "model.lora_alpha=8", "train.mixed_precision=no", f"out_dir={tmp_path / 'student'}",
        f"lori.cache_dir={tmp_path / 'cache'}", f"data.train_file={root / 'train.txt'}",
        f"data.valid_file={root / 'valid.txt'}", f"data.test_file={root / 'test.txt'}", "train.steps=4",
        "train.global_batch=8", "train.micro_batch=4", "train.warmup_steps=1", "train.eval_every=0",
        "train.save_every=100", "train.log_every=1", "curriculum.steps_per_stage=1", "lori.calib_size=16",
        "lori.shard_size=64", "lori.precompute_batch=8", "lori.rank=4"])
    precompute(cfg)
    ckpt = train(cfg)
    assert (ckpt / "model.safetensors").is_file() or list(ckpt.glob("*.safetensors"))
