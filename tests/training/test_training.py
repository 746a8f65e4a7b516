"""The training loop end to end on tiny models: smoke runs, checkpoints, exact resume, gradient-accumulation
invariance, and `lori eval` on the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lori.cli import main
from lori.config import load_config
from lori.training.checkpoint import CONFIG_FILE, STATE_FILE, list_checkpoints
from lori.training.loop import train

TINY = [
    "data.digits=[2,2]",
    "data.train_size=400",
    "data.valid_size=20",
    "data.test_size=20",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "train.steps=10",
    "train.global_batch=16",
    "train.micro_batch=8",
    "train.log_every=2",
    "train.eval_every=0",
    "train.eval_size=8",
    "eval.max_new_tokens=24",
]


def _train(out_dir: Path, *overrides: str) -> Path:
    return train(load_config(None, [*TINY, f"out_dir={out_dir}", *overrides]))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _loss_records(run: Path) -> list[dict]:
    return [r for r in _metrics(run) if "loss" in r]


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory) -> Path:
    """Run A: cot-sft, 10 uninterrupted steps (shared by the smoke, resume and eval tests)."""
    run = tmp_path_factory.mktemp("cot-sft")
    _train(run, "method=cot-sft")
    return run


def _check_run(run: Path, method: str) -> None:
    ckpt = run / "checkpoints" / "step-000010"
    assert list_checkpoints(run) == [ckpt]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", CONFIG_FILE,
                 STATE_FILE):
        assert (ckpt / name).is_file(), name
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary folders
    saved = load_config(ckpt / CONFIG_FILE)
    assert saved.method == method and saved.out_dir == str(run) and saved.train.steps == 10
    assert (run / "config.yaml").is_file()
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    assert state["step"] == 10 and state["cursor"] == 10 * 16

    records = _metrics(run)
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8, 10]  # one line per logging step (log_every=2)
    for r in losses:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert math.isfinite(r["ce"]) and r["lr"] > 0 and r["tokens_per_s"] > 0
    assert losses[-1]["loss"] < losses[0]["loss"] + 0.5  # not diverging
    final = records[-1]
    assert final["step"] == 10 and 0.0 <= final["valid_accuracy"] <= 1.0 and final["valid_generated_tokens"] > 0


def test_cot_sft_smoke(cot_run):
    _check_run(cot_run, "cot-sft")


def test_no_cot_smoke(tmp_path):
    final = _train(tmp_path, "method=no-cot")
    assert final == tmp_path / "checkpoints" / "step-000010"
    _check_run(tmp_path, "no-cot")


def test_resume_is_exact(cot_run, tmp_path, capsys):
    """Stopping at step 6 and resuming gives bit-identical weights and losses to the uninterrupted run."""
    _train(tmp_path, "method=cot-sft", "train.stop_at=6")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006"]
    state = torch.load(tmp_path / "checkpoints" / "step-000006" / STATE_FILE, weights_only=False)
    assert state["step"] == 6 and state["cursor"] == 6 * 16
    capsys.readouterr()
    _train(tmp_path, "method=cot-sft")  # resume: auto
    assert "resumed from" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006", "step-000010"]

    a = load_file(str(cot_run / "checkpoints" / "step-000010" / "model.safetensors"))
    b = load_file(str(tmp_path / "checkpoints" / "step-000010" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses_a = {r["step"]: r["loss"] for r in _loss_records(cot_run)}
    losses_b = {r["step"]: r["loss"] for r in _loss_records(tmp_path)}
    assert losses_a == losses_b
    sa = torch.load(cot_run / "checkpoints" / "step-000010" / STATE_FILE, weights_only=False)
    sb = torch.load(tmp_path / "checkpoints" / "step-000010" / STATE_FILE, weights_only=False)
    assert sa["cursor"] == sb["cursor"] and sa["scheduler"] == sb["scheduler"]
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


def test_gradient_accumulation_invariance(tmp_path):
    """global_batch=16 as one micro-batch of 16 or four of 4: the same losses (up to float summation order)."""
    one, four = tmp_path / "mb16", tmp_path / "mb4"
    common = ("method=cot-sft", "train.steps=6", "train.log_every=1", "train.global_batch=16")
    _train(one, *common, "train.micro_batch=16")
    _train(four, *common, "train.micro_batch=4")
    la, lb = _loss_records(one), _loss_records(four)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=0), (ra, rb)


def test_lori_eval_cli(cot_run, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", str(cot_run), "--out", str(out), "eval.limit=8", "eval.latency_problems=2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"task", "split", "n", "results"}
    assert results["task"] == "multiplication" and results["split"] == "test" and results["n"] == 8
    (row,) = results["results"]
    assert set(row) == {"method", "checkpoint", "accuracy", "ci95", "mean_generated_tokens",
                        "latency_ms_per_problem", "throughput_problems_per_s", "truncated", "test_set",
                        "weights_sha256", "inference"}
    assert row["test_set"]["n"] == 8 and 0 <= row["truncated"] <= 8
    assert row["method"] == "cot-sft"
    assert Path(row["checkpoint"]) == cot_run / "checkpoints" / "step-000010"
    assert 0 <= row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] <= 1
    assert 0 < row["mean_generated_tokens"] <= 24
    assert row["latency_ms_per_problem"] > 0 and row["throughput_problems_per_s"] > 0
    assert (out / "results.md").is_file() and "cot-sft" in (out / "results.md").read_text()
    preds = (out / "predictions-cot-sft-step-000010.jsonl").read_text().splitlines()
    assert len(preds) == 8


def test_lori_eval_keeps_every_run_of_one_method_and_step(cot_run, tmp_path, capsys):
    """Two runs of one method saved at the same step (ablations) get one predictions file each."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(cot_run, twin)
    out = tmp_path / "eval"
    assert main(["eval", str(cot_run), str(twin), "--out", str(out), "eval.limit=4", "eval.latency_problems=1"]) == 0
    names = sorted(p.name for p in out.glob("predictions-*.jsonl"))
    assert names == [f"predictions-{cot_run.name}-cot-sft-step-000010.jsonl",
                     "predictions-twin-cot-sft-step-000010.jsonl"]
    assert len(json.loads((out / "results.json").read_text())["results"]) == 2


def test_lori_eval_cli_bad_path(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lori: error:") and "nothing" in err and "\n" not in err


def test_resume_is_exact_with_dropout(tmp_path, monkeypatch):
    """LoRA with dropout 0.1 draws random masks every step, so exact resume also needs the RNG state restored (the
    tiny models themselves have no dropout, as LLaMA and Qwen2). The 2-process version is in test_distributed."""
    pytest.importorskip("peft")
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("method=no-cot", "model.lora_r=4", "model.lora_dropout=0.1", "train.steps=6")
    _train(a, *common)
    _train(b, *common, "train.stop_at=3")
    _train(b, *common)
    wa = load_file(str(a / "checkpoints" / "step-000006" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-000006" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # The masks matter: resuming without restoring the RNG state ends elsewhere.
    import lori.training.checkpoint as checkpoint

    c = tmp_path / "c"
    _train(c, *common, "train.stop_at=3")
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    _train(c, *common)
    wc = load_file(str(c / "checkpoints" / "step-000006" / "model.safetensors"))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("advance", ["clock", "loss"])
def test_resume_right_at_a_stage_change_resets_the_optimizer_as_the_uninterrupted_run(tmp_path, advance):
    """A checkpoint saved at the step where a curriculum stage ends holds the old stage's optimizer state; the
    uninterrupted run resets it at the change, and so must the resumed one (weights bit-identical)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("method=coconut", "train.steps=5", "curriculum.stages=3", "curriculum.steps_per_stage=2",
              "coconut.latent_steps=3", "train.save_every=100",
              *(["curriculum.advance_below=1e-9", "curriculum.advance_window=1"] if advance == "loss" else []))
    _train(a, *common)
    _train(b, *common, "train.stop_at=2")  # step 2 is where stage 1 ends
    _train(b, *common)
    wa = load_file(str(a / "checkpoints" / "step-000005" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-000005" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
