"""Faults: a training run or a precompute killed with SIGKILL resumes to the result of an uninterrupted one; a
half-written checkpoint or cache file is never taken for a good one; a NaN/inf loss stops the run before bad
weights are written; a cache from another teacher, tokenizer, data file or rank is refused with the reason.

The kills are real SIGKILLs of a ``python -m lori`` subprocess, sent by the process to itself at a fixed point
(in the middle of writing the step-6 checkpoint, or a cache shard), so the test is deterministic and the kill lands
at the worst moment: a temporary folder / file half written, after earlier checkpoints / shards are complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lori.cli import main
from lori.config import load_config
from lori.data import write_icot
from lori.errors import LoriError
from lori.methods import METHODS
from lori.methods.lori.teacher import precompute
from lori.methods.lori import cache as cache_mod
from lori.methods.lori.cache import load_cache
from lori.training.checkpoint import STATE_FILE, list_checkpoints, remove_partial_checkpoints, resolve_checkpoint
from lori.training.guards import UNIFORM_WINDOW
from lori.training.loop import train

TINY = [
    "data.digits=[2,2]", "data.train_size=120", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.global_batch=16", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0", "train.eval_size=4",
    "eval.max_new_tokens=8",
]

# Runs `python -m lori ARGS` after arranging a SIGKILL of this very process at a fixed point: "train" kills it
# while the step-KILL_AT checkpoint's trainer state is being written (the folder is still a temporary one),
# "precompute" while cache shard 1 is being written (the shard is still a temporary file).
DRIVER = '''
import os, signal, sys
import torch
mode, kill_at = sys.argv[1], int(sys.argv[2])

def die(path):
    with open(path, "wb") as f:
        f.write(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "train":
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == kill_at:
            die(f)
        return real_save(obj, f, *a, **k)
    torch.save = save
else:
    from lori.methods.lori import cache
    real_save_file = cache.save_file
    def save_file(tensors, path, *a, **k):
        if os.path.basename(path).startswith(f".stats-{kill_at:05d}."):
            die(path)
        return real_save_file(tensors, path, *a, **k)
    cache.save_file = save_file
from lori.cli import main
sys.exit(main(sys.argv[3:]))
'''


def killed_run(tmp_path: Path, mode: str, kill_at: int, *args: str) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    # The same intra-op thread count as this process, which finishes the run: CPU reductions split work by thread
    # count, so 1 thread before the kill and 2 after would differ in the last bits (not a resume bug).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, str(driver), mode, str(kill_at), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    return done


# ------------------------------------------------------------------------------------------------ training


def test_sigkilled_training_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    """GPT-2 (dropout on): the resumed run must also restore the RNG streams to end bit-identical."""
    common = [*TINY, "method=cot-sft", "model.arch=gpt2", "train.steps=8", "train.save_every=2"]
    killed = tmp_path / "killed"
    killed_run(tmp_path, "train", 6, "train", *common, f"out_dir={killed}")
    root = killed / "checkpoints"
    assert [p.name for p in list_checkpoints(killed)] == ["step-000002", "step-000004"]
    (partial,) = [p for p in root.iterdir() if p.name.startswith(".step-000006.")]
    assert (partial / "model.safetensors").is_file() and (partial / STATE_FILE).read_bytes() == b"half a file"
    assert resolve_checkpoint(killed) == root / "step-000004"

    capsys.readouterr()
    train(load_config(None, [*common, f"out_dir={killed}"]))  # resume: auto
    out = capsys.readouterr().out
    assert f"removed {partial}" in out and f"resumed from {root / 'step-000004'} at step 4" in out
    assert sorted(p.name for p in root.iterdir()) == ["step-000006", "step-000008"]  # no temporary folder left

    whole = tmp_path / "whole"
    train(load_config(None, [*common, f"out_dir={whole}"]))
    wa = load_file(str(whole / "checkpoints" / "step-000008" / "model.safetensors"))
    wb = load_file(str(root / "step-000008" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = torch.load(whole / "checkpoints" / "step-000008" / STATE_FILE, weights_only=False)
    sb = torch.load(root / "step-000008" / STATE_FILE, weights_only=False)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key


def test_partial_checkpoint_folders_are_never_taken(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-000002").mkdir(parents=True)
    (root / "step-000002" / "config.json").write_text("{}")
    for name in (".step-000004.k2j3h4", ".step-000006.x"):  # what save_checkpoint leaves when killed
        (root / name).mkdir()
        (root / name / "config.json").write_text("{}")  # looks complete: still not a checkpoint
    (root / "step-000008.old").mkdir()
    (root / "step-000010").write_text("a file, not a folder")
    assert list_checkpoints(tmp_path) == [root / "step-000002"]
    assert resolve_checkpoint(tmp_path) == root / "step-000002"
    assert remove_partial_checkpoints(tmp_path) == [root / ".step-000004.k2j3h4", root / ".step-000006.x"]
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000008.old", "step-000010"]
    shutil.rmtree(root / "step-000002")
    with pytest.raises(LoriError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------ NaN / inf


def _poison(monkeypatch, at_step: int, term: str, value: float, micro_per_step: int = 2):
    """Make cot-sft's loss part ``term`` (and the loss when term == 'ce') non-finite from optimizer step
    ``at_step`` on."""
    method = METHODS["cot-sft"]
    real, calls = method.loss, []

    def loss(module, batch, norm, state):
        total, parts = real(module, batch, norm, state)
        calls.append(1)
        if (len(calls) - 1) // micro_per_step + 1 >= at_step:
            if term == "ce":
                total = total * value
                parts = {**parts, "ce": total.detach()}
            else:
                parts = {**parts, term: torch.tensor(value)}
        return total, parts

    monkeypatch.setitem(METHODS, "cot-sft", dataclasses.replace(method, loss=loss))


def test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _poison(monkeypatch, at_step=4, term="ce", value=float("nan"))
    cfg = load_config(None, [*TINY, "method=cot-sft", "train.steps=6", "train.save_every=2", f"out_dir={tmp_path}"])
    with pytest.raises(LoriError) as e:
        train(cfg)
    msg = str(e.value)
    good = tmp_path / "checkpoints" / "step-000002"
    assert msg.startswith("step 4: non-finite ") and "ce=nan" in msg and "loss=nan" in msg
    assert f"the last good checkpoint is {good}" in msg and "moved" not in msg
    assert list_checkpoints(tmp_path) == [good]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 4 is neither logged nor applied
    weights = load_file(str(good / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    # Resuming from the kept checkpoint (without the fault) continues from step 2.
    monkeypatch.undo()
    train(load_config(None, [*TINY, "method=cot-sft", "train.steps=6", "train.stop_at=3", "train.save_every=2",
                             f"out_dir={tmp_path}"]))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]


def test_the_checkpoint_whose_weights_gave_the_nan_is_moved_aside(tmp_path, monkeypatch):
    """A non-finite loss at step 3 came from the weights after step 2: its checkpoint is no longer offered."""
    _poison(monkeypatch, at_step=3, term="ce", value=float("nan"))
    cfg = load_config(None, [*TINY, "method=cot-sft", "train.steps=6", "train.save_every=2", f"out_dir={tmp_path}"])
    with pytest.raises(LoriError) as e:
        train(cfg)
    aside = tmp_path / "checkpoints" / "diverged-step-000002"
    assert f"moved to {aside}" in str(e.value) and "no good checkpoint remains" in str(e.value)
    assert list_checkpoints(tmp_path) == [] and (aside / "model.safetensors").is_file()


def test_huge_lr_stops_at_the_update_before_any_weights_are_written(tmp_path):
    """train.lr=1e30: the first update already makes the weights huge (finite: the loss they give is finite for
    a step or two); the run stops at that update and nothing is saved."""
    cfg = load_config(None, [*TINY, "method=cot-sft", "train.steps=20", "train.save_every=1", "train.lr=1e30",
                             f"out_dir={tmp_path}"])
    with pytest.raises(LoriError, match=r"^step 1: the update took the weights' norm from .* training diverged; "
                                        r"no weights of step 1 were written; no checkpoint was saved before it"):
        train(cfg)
    assert list_checkpoints(tmp_path) == []


def test_a_diverging_update_names_a_checkpoint_whose_weights_are_good(tmp_path, monkeypatch):
    """An update that blows the weights up 100-fold at step 3 (a patched optimizer step) stops the run there: the
    named checkpoint is step 2's, equal to the weights of a clean 2-step run, and nothing of step 3 is written."""
    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(100.0)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    args = [*TINY, "method=cot-sft", "train.steps=6", "train.save_every=2"]
    with pytest.raises(LoriError) as e:
        train(load_config(None, [*args, f"out_dir={tmp_path / 'bad'}"]))
    good = tmp_path / "bad" / "checkpoints" / "step-000002"
    assert str(e.value).startswith("step 3: the update took the weights' norm")
    assert f"the last good checkpoint is {good}" in str(e.value)
    assert list_checkpoints(tmp_path / "bad") == [good]
    monkeypatch.undo()
    train(load_config(None, [*args, "train.stop_at=2", f"out_dir={tmp_path / 'clean'}"]))
    wa = load_file(str(good / "model.safetensors"))
    wb = load_file(str(tmp_path / "clean" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_a_collapsed_model_is_warned_about(tmp_path, monkeypatch, capsys):
    """A cross-entropy at exactly ln(vocab) (a uniform prediction, what a collapsed model gives) for
    UNIFORM_WINDOW steps is warned about once; a model that learns is not."""
    method = METHODS["cot-sft"]
    real = method.loss

    def loss(module, batch, norm, state):
        total, parts = real(module, batch, norm, state)
        vocab = module.get_output_embeddings().weight.shape[0]
        return total, {**parts, "ce": torch.tensor(math.log(vocab))}

    args = [*TINY, "method=cot-sft", f"train.steps={UNIFORM_WINDOW + 10}", "train.log_every=100",
            "train.micro_batch=16"]  # one micro batch per step: the step's ce is the patched value itself
    train(load_config(None, [*args, f"out_dir={tmp_path / 'learning'}"]))
    out = capsys.readouterr()
    assert "uniform prediction" not in out.out + out.err
    monkeypatch.setitem(METHODS, "cot-sft", dataclasses.replace(method, loss=loss))
    train(load_config(None, [*args, f"out_dir={tmp_path / 'collapsed'}"]))
    out = capsys.readouterr()
    assert (out.out + out.err).count(f"a uniform prediction) for {UNIFORM_WINDOW} steps") == 1


def test_inf_in_one_term_names_it_even_without_a_checkpoint(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, at_step=1, term="distill", value=float("inf"))
    rc = main(["train", *TINY, "method=cot-sft", "train.steps=4", f"out_dir={tmp_path}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lori: error:")]
    assert rc == 2 and len(err) == 1
    err = err[0]
    assert "step 1: non-finite distill=inf" in err and "no checkpoint was saved" in err and "ce=" not in err
    assert list_checkpoints(tmp_path) == []


# ------------------------------------------------------------------------------------------------ precompute


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, save_random_teacher) -> tuple[Path, Path]:
    """A random tiny LLaMA teacher checkpoint folder and a training file of 60 problems."""
    from lori.data import generate_multiplication

    folder = tmp_path_factory.mktemp("teacher")
    data = folder.parent / f"{folder.name}-train.txt"
    examples = generate_multiplication(2, 2, 60, seed=5)
    write_icot(examples, data)
    return save_random_teacher(folder, load_config(None, TINY).model, examples), data


def lori_args(teacher_dir: Path, data: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["method=lori", *TINY, f"data.train_file={data}", f"lori.teacher={teacher_dir}",
            f"lori.cache_dir={cache_dir}", "lori.rank=4", "lori.calib_size=40", "lori.shard_size=25",
            "lori.precompute_batch=16", "lori.latent_steps=2", *extra]


def test_sigkilled_precompute_resumes_without_redoing_shards(teacher, tmp_path, monkeypatch, capsys):
    folder, data = teacher
    cache = tmp_path / "cache"
    args = lori_args(folder, data, cache)
    killed_run(tmp_path, "precompute", 1, "precompute", *args)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert [sh["index"] for sh in manifest["shards"]] == [0] and not manifest["complete"]
    (partial,) = [p for p in cache.iterdir() if p.name.startswith(".stats-00001.")]
    with pytest.raises(LoriError, match="incomplete"):
        load_cache(cache)
    first = (cache / "stats-00000.safetensors").stat().st_mtime_ns

    written, real = [], cache_mod.CacheWriter.write_shard
    monkeypatch.setattr(cache_mod.CacheWriter, "write_shard",
                        lambda self, i, *a, **kw: (written.append(i), real(self, i, *a, **kw)))
    capsys.readouterr()
    precompute(load_config(None, args))
    out = capsys.readouterr().out
    assert written == [1, 2] and f"removed {partial}" in out and "reusing the fitted basis" in out
    assert (cache / "stats-00000.safetensors").stat().st_mtime_ns == first
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # the killed one's lock

    fresh = tmp_path / "fresh"
    precompute(load_config(None, lori_args(folder, data, fresh)))
    a, b = load_cache(fresh), load_cache(cache)
    for name in ("mu", "cov", "anchor", "valid", "prefix_mu", "prefix_valid", "step_anchor", "step_valid"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.basis.U, b.basis.U)


def test_leftover_and_unlisted_cache_files_are_ignored(teacher, tmp_path):
    folder, data = teacher
    cache = tmp_path / "cache"
    precompute(load_config(None, lori_args(folder, data, cache)))
    good = load_cache(cache)
    (cache / ".stats-00001.safetensors.abc123.tmp").write_bytes(b"half a file")
    save_file({"mu": torch.full((25, 2, 4), float("nan"))}, str(cache / "stats-00007.safetensors"))  # not listed
    again = load_cache(cache)
    assert torch.equal(again.mu, good.mu) and torch.equal(again.cov, good.cov)
    (cache / "manifest.json").write_text('{"version": 1, "fingerprint": ')  # a corrupted manifest
    with pytest.raises(LoriError, match=r"manifest\.json: not valid JSON"):
        load_cache(cache)


def test_cache_from_another_teacher_tokenizer_data_or_rank_is_refused(teacher, tmp_path, capsys):
    folder, data = teacher
    cache = tmp_path / "cache"
    precompute(load_config(None, lori_args(folder, data, cache)))

    weights = tmp_path / "teacher-weights"  # same tokenizer, one weight changed
    shutil.copytree(folder, weights)
    w = load_file(str(weights / "model.safetensors"))
    key = sorted(w)[0]
    w[key] = w[key] + 1e-3
    save_file(w, str(weights / "model.safetensors"), metadata={"format": "pt"})
    tok = tmp_path / "teacher-tokenizer"  # same weights, another tokenizer file
    shutil.copytree(folder, tok)
    tcfg = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**tcfg, "model_max_length": 77}))
    other_data = tmp_path / "train.txt"
    lines = data.read_text().splitlines()
    other_data.write_text("\n".join(lines[:-1] + [lines[-1].replace("####", "#### 1 ", 1)]) + "\n")

    cases = [
        (lori_args(weights, data, cache), "teacher_weights"),
        (lori_args(tok, data, cache), "tokenizer"),
        (lori_args(folder, other_data, cache), "data"),
        (lori_args(folder, data, cache, "lori.rank=3"), "rank"),
    ]
    for args, reason in cases:
        rc = main(["train", *args, "train.steps=1", f"out_dir={tmp_path / 'run'}"])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lori: error:")]
        assert rc == 2 and len(errors) == 1, errors
        err = errors[0]
        assert "refusing a stale teacher-statistics cache" in err and f"differs in: {reason} (cache " in err, err
        others = {"teacher_weights", "tokenizer", "data", "rank"} - {reason}
        assert not any(f"differs in: {o} " in err or f", {o} (cache" in err for o in others), err
    # precompute into the same folder for another teacher is refused too, before any work
    with pytest.raises(LoriError, match="different setup.*teacher_weights"):
        precompute(load_config(None, lori_args(weights, data, cache)))
