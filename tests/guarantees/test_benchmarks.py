"""The benchmark scripts run on what landed: at their smallest settings (seconds) every section and the targets table
are printed. Timings are never asserted; only that every figure and verdict is there."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, REPO, gpt2_style_bpe

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(text: str, heading: str) -> list[str]:
    """The data rows of the first Markdown table after ``heading``."""
    block = text.split(heading, 1)[1]
    rows = []
    for line in block.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows[2:]  # header and rule dropped


def test_speed_benchmark_prints_every_section_the_targets_and_the_growth_sweep():
    out = run("speed.py", "--digits", "3x3", "--hidden", "64", "--layers", "2", "--steps", "1", "--batch", "8",
              "--problems", "3", "--cache-widths", "32,48", "--growth", "--growth-base", "2,4,32", "--growth-K", "2,3",
              "--growth-rank", "4,8", "--growth-width", "32,48", "--growth-batch", "4", "--growth-steps", "1")
    for section in ("## LoRi speed benchmark", "| CPU |", "| torch |", "### Training step", "LoRi loss terms",
                    "### Inference", "One decoding step", "### Precompute", "the teacher's bare forward pass",
                    "### Cache size by width", "### Targets", "### Growth"):
        assert section in out, section
    training = table_rows(out, "### Training step")
    assert [r.split("|")[1].split(",")[0].strip() for r in training] == [
        "CoT-SFT (teacher format", "No-CoT", "CODI", "LoRi", "LoRi"]
    steps = table_rows(out, "One decoding step")
    assert [r.split("|")[1].strip() for r in steps] == ["batch 1", "batch 3"]
    assert all(re.fullmatch(r"-?\d+\.\d+", r.split("|")[4].strip()) for r in steps)  # latent / token, a number
    widths = table_rows(out, "### Cache size by width")
    assert [r.split("|")[1].strip() for r in widths] == ["32", "48"]
    assert all(r.count("x (") == 4 for r in widths)  # two dtypes x with / without per-step statistics
    targets = table_rows(out, "### Targets")
    names = ["LoRi training step <= 0.7 x CODI's", "inference latency speedup (batch 1) >= 0.9 x",
             "inference throughput speedup (batch 3) >= 0.9 x", "cache >= 50 x smaller",
             "precompute throughput (teacher pass + statistics) >= 0.8 x"]
    assert len(targets) == len(names)
    for row, name in zip(targets, names):
        assert name in row and row.rstrip(" |").split("|")[-1].strip() in ("met", "missed"), row
    growth = table_rows(out, "### Growth")
    # the base point, then each list varied around it: K = 3, rank 8, width 48
    assert [tuple(c.strip() for c in r.split("|")[1:5]) for r in growth] == [
        ("base", "2", "4", "32"), ("K", "3", "4", "32"), ("rank", "2", "8", "32"), ("width", "2", "4", "48")]
    for r in growth:
        assert re.search(r"\d+\.\d+ \(\d+\.\d%\)", r), r  # the LoRi terms' time and share of the step
        assert r.split("|")[-2].count("/") == 2  # peak memory of CoT-SFT / CODI / LoRi


def test_speed_benchmark_growth_only_prints_just_the_sweep():
    out = run("speed.py", "--digits", "2x2", "--layers", "1", "--growth-only", "--growth-base", "2,4,16",
              "--growth-K", "2", "--growth-rank", "4", "--growth-width", "16", "--growth-batch", "2",
              "--growth-steps", "1")
    assert "### Growth" in out and "| CPU |" in out
    assert "### Targets" not in out and "### Training step" not in out
    assert len(table_rows(out, "### Growth")) == 1


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory) -> Path:
    """A random 2-layer LLaMA with a small byte-level BPE trained on GSM8K text, as a Hugging Face model folder:
    what gpu_check.py's --model takes instead of SmolLM2-135M."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = []
    for line in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]:
        obj = json.loads(line)
        texts += [obj["question"], obj["answer"]]
    tok = gpt2_style_bpe(texts + ["|| ####"], vocab_size=400)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    folder = tmp_path_factory.mktemp("tiny-hf") / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.skipif(not (DATA / "gsm8k" / "train.jsonl").is_file(), reason=f"{DATA} not present")
def test_gpu_check_cpu_smoke_mode_prints_every_stage_and_the_evaluation(tiny_hf_model, tmp_path):
    """gpu_check.py's CPU smoke command (README) with a tiny model in place of SmolLM2-135M: the same five stages
    through lori's own train / precompute / eval, then the report."""
    out = run("gpu_check.py", "--model", str(tiny_hf_model), "--out", str(tmp_path / "out"), "--teacher-steps", "1",
              "--steps", "1", "--train-size", "8", "--batch", "2", "--eval", "2", "--max-new-tokens", "4",
              "--calib", "8", "--latent-steps", "2", "--rank", "4")
    assert f"# GPU check: {tiny_hf_model}" in out  # the library's own progress lines come first
    out = out[out.index("# GPU check: "):]
    names = [r.split("|")[1].strip() for r in out.splitlines() if r.startswith("| ")]
    for stage in ("data", "model", "teacher", "precompute", "student", "eval"):
        assert stage in names, stage
    assert "Evaluation: gsm8k test, first 2 problems" in out
    methods = [n for n in names if n in ("cot-sft", "lori")]
    assert sorted(methods) == ["cot-sft", "lori"]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(report["stages"]) == {"data", "model", "teacher", "precompute", "student", "eval"}
    assert (tmp_path / "out" / "gpu_check.md").read_text() == out.rstrip("\n") + "\n"
