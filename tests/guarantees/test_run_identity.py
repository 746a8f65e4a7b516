"""Run identity (lori.training.identity): a run folder is resumed or reused only with the settings and inputs it was
trained with; allowed changes are applied and printed; one run at a time writes a folder (OUT/.lock); a resumed
run's metrics.jsonl has each step once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lori.cli import main
from lori.config import load_config
from lori.errors import ConfigError, LoriError
from lori.pipeline import finished, pipeline_configs, train_runs
from lori.training.checkpoint import STATE_FILE, list_checkpoints
from lori.training.identity import IDENTITY_FILE, LOCK_FILE, acquire_lock, differences, run_identity
from lori.training.loop import train

TINY = [
    "data.digits=[2,2]", "data.train_size=120", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.global_batch=16", "train.micro_batch=16", "train.log_every=1", "train.eval_every=0", "train.eval_size=4",
    "eval.max_new_tokens=8", "method=cot-sft",
]


def _train(out: Path, *overrides: str) -> Path:
    return train(load_config(None, [*TINY, f"out_dir={out}", *overrides]))


def _steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def test_resume_with_changed_settings_is_refused(tmp_path, capsys):
    _train(tmp_path, "train.steps=6", "train.stop_at=3")
    assert (tmp_path / IDENTITY_FILE).is_file()
    before = (tmp_path / "checkpoints" / "step-000003" / "model.safetensors").read_bytes()
    with pytest.raises(LoriError) as e:
        _train(tmp_path, "train.steps=6", "train.lr=1e-5")
    msg = str(e.value)
    assert str(tmp_path) in msg and "train.lr: 0.001 -> 1e-05" in msg and "train.resume=never" in msg
    # The method and the model size are part of the identity too; the CLI prints one line.
    capsys.readouterr()
    assert main(["train", *TINY, f"out_dir={tmp_path}", "train.steps=6", "method=no-cot",
                 "model.hidden_size=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method: \"cot-sft\" -> \"no-cot\"" in err[0] and "model.hidden_size: 32 -> 64" in err[0]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]
    assert (tmp_path / "checkpoints" / "step-000003" / "model.safetensors").read_bytes() == before
    assert load_config(tmp_path / "config.yaml").train.lr == 0.001  # a refused run records nothing
    # train.resume=never starts over in the folder: the old checkpoints and metrics go.
    _train(tmp_path, "train.steps=2", "train.lr=1e-5", "train.resume=never")
    assert "removed the earlier run's checkpoints, metrics.jsonl" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"] and _steps(tmp_path) == [1, 2]


def test_changed_input_file_is_part_of_the_identity(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("12 * 34||1 2 * 3 4 = 4 0 8 + 0 6 3 0 1 ( 4 6 4 1 ) #### 8 0 4\n")
    cfg = load_config(None, [*TINY, f"data.train_file={data}"])
    old = run_identity(cfg)
    assert differences(old, run_identity(cfg)) == ([], [])
    data.write_text(data.read_text() * 2)
    assert differences(old, run_identity(cfg))[0] == ["data.train_file"]


def test_resume_applies_an_allowed_change(tmp_path, capsys):
    """With the constant schedule the run length does not change the learning rate: train.steps may grow on
    resume, and it is applied (and said), as are logging and checkpoint settings."""
    _train(tmp_path, "train.schedule=constant", "train.steps=3")
    capsys.readouterr()
    final = _train(tmp_path, "train.schedule=constant", "train.steps=5", "train.log_every=2")
    out = capsys.readouterr().out
    assert "[lori] resume: applying changed train.steps 3 -> 5" in out
    assert "[lori] resume: applying changed train.log_every 1 -> 2" in out
    assert final.name == "step-000005" and torch.load(final / STATE_FILE, weights_only=False)["step"] == 5
    assert _steps(tmp_path) == [1, 2, 3, 4, 5]
    with pytest.raises(LoriError, match="at step 5, past train.steps=4"):
        _train(tmp_path, "train.schedule=constant", "train.steps=4")
    # Under the cosine schedule the run length shapes every step's learning rate: refused.
    cos = tmp_path / "cosine"
    _train(cos, "train.steps=3")
    with pytest.raises(LoriError, match="train.steps: 3 -> 5"):
        _train(cos, "train.steps=5")


def test_pipeline_reuses_only_a_run_with_the_same_identity(tmp_path, capsys):
    base = {"data": {"digits": [2, 2], "train_size": 120, "valid_size": 8, "test_size": 8},
            "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
            "train": {"steps": 2, "global_batch": 16, "micro_batch": 16, "log_every": 1, "eval_every": 0,
                      "eval_size": 4},
            "eval": {"max_new_tokens": 8}}
    cfgs = pipeline_configs(base, base, [], tmp_path, ("no-cot",))
    train_runs(cfgs, "test")
    capsys.readouterr()
    train_runs(pipeline_configs(base, base, ["eval.batch_size=4"], tmp_path, ("no-cot",)), "test")
    assert capsys.readouterr().out.count("reusing the finished run") == 2  # eval settings are not the run's
    changed = pipeline_configs(base, base, ["student.train.lr=0.01"], tmp_path, ("no-cot",))
    with pytest.raises(LoriError) as e:
        train_runs(changed, "test")
    msg = str(e.value)
    assert f"{tmp_path / 'no-cot'} was trained with other settings" in msg and "train.lr: 0.001 -> 0.01" in msg
    assert "new output folder" in msg
    # A teacher whose weights changed since the student started from it: the student is refused too.
    weights = tmp_path / "cot-sft" / "checkpoints" / "step-000002" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights))
    assert finished(cfgs["cot-sft"])
    with pytest.raises(LoriError, match="model.init_from: "):
        finished(cfgs["no-cot"])


def _write_lock(run: Path, pid: int, host: str | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                             "started": "2025-01-01T00:00:00"}))


def test_a_locked_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(LoriError, match=f"in use by another lori run \\(pid {sleeper.pid},"):
            _train(tmp_path, "train.steps=2")
        assert not list_checkpoints(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(tmp_path, 12345, host="another-host")
    with pytest.raises(LoriError, match="pid 12345 on host another-host"):
        acquire_lock(tmp_path)
    # The sleeper is gone now: its lock is stale, taken over with a message, and released at the end.
    _write_lock(tmp_path, sleeper.pid)
    capsys.readouterr()
    _train(tmp_path, "train.steps=2")
    assert f"taking over the lock of pid {sleeper.pid}, which is no longer running" in capsys.readouterr().out
    assert not (tmp_path / LOCK_FILE).exists() and [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    # The lock is released when a run fails too.
    with pytest.raises(LoriError):
        _train(tmp_path, "train.steps=4", "train.lr=0.01")
    assert not (tmp_path / LOCK_FILE).exists()
    lock = acquire_lock(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_resumed_metrics_have_each_step_once(tmp_path):
    _train(tmp_path, "train.steps=6", "train.stop_at=3")
    # A run killed after logging steps 4 and 5 (and half a line) but before their checkpoint.
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    _train(tmp_path, "train.steps=6")
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("loss") != 1.0 for r in records)


def test_a_student_has_its_teachers_architecture(tmp_path):
    """A tiny student's config says the size of the weights it starts from: the pipeline gives it the teacher's,
    and a config that says otherwise is refused."""
    teacher = {"model": {"arch": "gpt2", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}}
    cfgs = pipeline_configs(teacher, {"model": {"hidden_size": 128}}, [], tmp_path, ("no-cot",))
    model = cfgs["no-cot"].model
    assert (model.arch, model.hidden_size, model.num_layers, model.num_heads, model.intermediate_size) == \
        ("gpt2", 32, 2, 2, 64)
    _train(tmp_path / "teacher", "train.steps=1")
    with pytest.raises(ConfigError, match="model.hidden_size=64 but .* holds a model with hidden_size 32; .* set "
                                          "model.hidden_size=32"):
        _train(tmp_path / "student", "method=no-cot", "train.steps=1", f"model.init_from={tmp_path / 'teacher'}",
               "model.hidden_size=64")


def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(LoriError, match=r"nope\.txt: file does not exist"):
        run_identity(load_config(None, [*TINY, f"data.train_file={tmp_path / 'nope.txt'}"]))


def test_a_key_added_to_the_config_since_counts_as_its_default():
    new = run_identity(load_config(None, TINY))
    old = {k: v for k, v in new.items() if k != "train.grad_clip"}  # grad_clip's default: null
    assert differences(old, new) == ([], [])
    assert differences(old, run_identity(load_config(None, [*TINY, "train.grad_clip=1.0"])))[0] == ["train.grad_clip"]
    assert differences({**new, "train.gone": 1}, new) == ([], [])
