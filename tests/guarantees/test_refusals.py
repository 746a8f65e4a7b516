"""Input refusals and write guarantees.

* A relative path in a YAML config is relative to that file's folder (a command-line override: to the working
  directory), so the shipped presets mean the same from any folder; a saved config holds absolute paths.
* A data file that contradicts ``data.digits`` / ``data.chain_steps`` (the 4x4 preset with ``data.digits=[3,3]``),
  an empty or blank-only data file, a truncated ``model.safetensors`` or ``trainer_state.pt``, a ``lori.rank`` over
  the model width, an unwritable ``out_dir`` or ``lori.cache_dir``, a full disk and ``eval.latency_problems=0`` are
  each one ``lori: error:`` line (exit 2), before work starts, leaving nothing half-written.
* Everything written gets the modes ``open``/``mkdir`` give under the umask (0644 / 0755 under 022), checkpoints
  (written through a temporary folder) included.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch

from lori.cli import main
from lori.config import load_config, save_config
from lori.data import generate_multiplication, write_icot
from lori.data.chains import generate as generate_chains
from lori.data.splits import load_split
from lori.errors import ConfigError, LoriError
from lori.training.checkpoint import STATE_FILE, checkpoint_dir, list_checkpoints
from lori.utils import atomic_write_text, check_writable

from conftest import DATA, REPO

PRESETS = sorted((REPO / "configs").rglob("*.yaml"))
SHARED_4X4 = DATA / "multiplication" / "4x4"

TINY = [
    "data.digits=[2,2]", "data.train_size=120", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.global_batch=16", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0", "train.eval_size=4",
    "eval.max_new_tokens=8", "train.steps=2",
]


def one_line(capsys) -> str:
    """The single ``lori: error:`` line a failed command printed (and no traceback)."""
    cap = capsys.readouterr()
    # (the line may follow a progress bar that a failure mid-training left without its newline)
    errors = re.findall(r"lori: error: [^\r\n]*", cap.err)
    assert len(errors) == 1 and "Traceback" not in cap.err + cap.out, cap.err[-3000:]
    return errors[0]


def train(*args: str) -> int:
    return main(["train", *TINY, *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny CoT-SFT run (checkpoints at steps 1 and 2), written under umask 022."""
    out = tmp_path_factory.mktemp("run") / "cot"
    old = os.umask(0o022)
    try:
        assert train("train.save_every=1", f"out_dir={out}") == 0
    finally:
        os.umask(old)
    return out


# ------------------------------------------------------------------------------------------------ paths


def test_yaml_paths_are_relative_to_the_yaml_folder_and_overrides_to_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "exp" / "configs"
    (folder / "models" / "local").mkdir(parents=True)
    (folder / "c.yaml").write_text(
        "method: lori\nout_dir: ../runs/a\n"
        "data: {train_file: data/train.txt, valid_file: /abs/valid.txt, test_file: null}\n"
        "model: {name: models/local, init_from: ../teacher}\n"
        "train: {resume: ../runs/a/checkpoints/step-000001}\n"
        "lori: {teacher: ~/teachers/t, cache_dir: cache}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(folder / "c.yaml", ["lori.cache_dir=here/cache", "data.test_file=test.txt"])
    exp = tmp_path / "exp"
    assert cfg.out_dir == str(exp / "runs" / "a")
    assert cfg.data.train_file == str(folder / "data" / "train.txt")
    assert cfg.data.valid_file == "/abs/valid.txt"
    assert cfg.model.name == str(folder / "models" / "local")  # a folder beside the config: a path
    assert cfg.model.init_from == str(exp / "teacher")
    assert cfg.train.resume == str(exp / "runs" / "a" / "checkpoints" / "step-000001")
    assert cfg.lori.teacher == os.path.expanduser("~/teachers/t")
    # Command-line overrides are relative to the working directory: kept as typed, the OS resolves them there.
    assert cfg.lori.cache_dir == "here/cache" and cfg.data.test_file == "test.txt"
    # The same file named relatively from another folder means the same paths.
    monkeypatch.chdir(tmp_path)
    again = load_config("exp/configs/c.yaml", ["lori.cache_dir=here/cache", "data.test_file=test.txt"])
    assert again == cfg
    # A hub id, the tiny model and train.resume's words are no paths.
    (folder / "h.yaml").write_text("model: {name: meta-llama/Llama-3.2-1B}\ntrain: {resume: never}\n")
    hub = load_config(folder / "h.yaml")
    assert hub.model.name == "meta-llama/Llama-3.2-1B" and hub.train.resume == "never"
    assert load_config(folder / "h.yaml", ["model.name=tiny"]).model.name == "tiny"


def test_shipped_presets_mean_the_same_from_the_repository_and_from_another_folder(tmp_path, monkeypatch):
    assert PRESETS
    monkeypatch.chdir(REPO)
    here = {p: load_config(p.relative_to(REPO)) for p in PRESETS}
    monkeypatch.chdir(tmp_path)
    for preset, cfg in here.items():
        assert load_config(preset) == cfg, preset
        outputs = [cfg.out_dir, cfg.model.init_from, cfg.lori.teacher, cfg.lori.cache_dir]
        assert all(p is None or p.startswith(str(REPO / "out") + os.sep) for p in outputs), (preset, outputs)
        for f in (cfg.data.train_file, cfg.data.valid_file, cfg.data.test_file):
            if f is not None and not f.startswith(str(REPO / "out")):  # the benchmark files beside the checkout
                assert f.startswith(str(DATA) + os.sep), (preset, f)
                if DATA.is_dir():
                    assert os.path.isfile(f), (preset, f)


def test_a_preset_trains_from_another_working_directory_and_saves_absolute_paths(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "data").mkdir()
    write_icot(generate_multiplication(2, 2, 60, seed=3), project / "data" / "train.txt")
    (project / "configs" / "p.yaml").write_text("method: cot-sft\nout_dir: ../out/run\n"
                                                "data: {train_file: ../data/train.txt}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", str(project / "configs" / "p.yaml"), *TINY, "train.steps=1"]) == 0
    assert [p.name for p in list_checkpoints(project / "out" / "run")] == ["step-000001"]
    assert list(elsewhere.iterdir()) == []
    saved = load_config(project / "out" / "run" / "config.yaml")  # absolute paths: the same from any folder
    assert saved.data.train_file == str(project / "data" / "train.txt")
    assert saved.out_dir == str(project / "out" / "run")
    # A saved config with a relative out_dir from the command line holds it absolute too.
    cfg = load_config(None, ["out_dir=rel/run"])
    save_config(cfg, tmp_path / "saved.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "saved.yaml").out_dir == str(elsewhere / "rel" / "run")


# ------------------------------------------------------------------------------------------------ data


def test_a_data_file_that_contradicts_data_digits_is_refused_before_training(tmp_path, capsys):
    valid, test = tmp_path / "valid.txt", tmp_path / "test.txt"
    write_icot(generate_multiplication(4, 4, 20, seed=1), valid)
    write_icot(generate_multiplication(4, 4, 20, seed=2), test)
    out = tmp_path / "run"
    assert train("data.digits=[3,3]", f"data.valid_file={valid}", f"data.test_file={test}", f"out_dir={out}") == 2
    err = one_line(capsys)
    assert f"{valid}:1" in err and "data.valid_file" in err and "4x4" in err and "data.digits is [3, 3]" in err
    assert not out.exists()  # refused before anything was written
    # The files agree with data.digits=[4,4]; a 3x3 training file then contradicts it.
    assert len(load_split(load_config(None, ["data.digits=[4,4]", f"data.valid_file={valid}"]).data, "valid")) == 20
    train3 = tmp_path / "train3.txt"
    write_icot(generate_multiplication(3, 3, 20, seed=3), train3)
    assert train("data.digits=[4,4]", f"data.train_file={train3}", f"out_dir={out}") == 2
    assert "data.train_file" in one_line(capsys) and not out.exists()


@pytest.mark.skipif(not (SHARED_4X4 / "valid.txt").is_file(), reason="needs the 4x4 files in ../shared/data")
def test_the_4x4_preset_with_3x3_digits_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from another folder: the preset's paths still find the 4x4 files
    out = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "mult4x4-cot-sft.yaml"), "data.digits=[3,3]",
                 f"out_dir={out}"]) == 2
    err = one_line(capsys)
    assert str(SHARED_4X4 / "valid.txt") in err and "data.valid_file" in err and "data.digits is [3, 3]" in err
    assert not out.exists()


def test_a_chains_file_that_contradicts_chain_steps_is_refused(tmp_path, capsys):
    data = tmp_path / "chains3.txt"
    write_icot(generate_chains(40, seed=0, steps=3), data)
    args = ["data.task=chains", f"data.train_file={data}", f"out_dir={tmp_path / 'run'}"]
    assert train(*args, "data.chain_steps=4") == 2
    err = one_line(capsys)
    assert f"{data}:1" in err and "3-step chain" in err and "data.chain_steps is 4" in err
    assert len(load_split(load_config(None, [*TINY, *args, "data.chain_steps=3"]).data, "train")) == 40


def test_an_empty_or_blank_data_file_is_one_line_and_leaves_nothing(tmp_path, capsys):
    for i, text in enumerate(["", "\n  \n\t\n"]):
        data = tmp_path / f"data{i}.txt"
        data.write_text(text)
        out = tmp_path / f"new{i}"
        assert train(f"data.train_file={data}", f"out_dir={out}") == 2
        err = one_line(capsys)
        assert str(data) in err and "no problems" in err and "data.train_file" in err
        assert not out.exists()
        existing = tmp_path / f"existing{i}"  # a folder that was there keeps only what it had
        existing.mkdir()
        (existing / "notes.txt").write_text("mine\n")
        assert train(f"data.valid_file={data}", f"out_dir={existing}") == 2
        assert "data.valid_file" in one_line(capsys)
        assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------------------ damaged weights


def test_a_truncated_model_safetensors_is_one_line_naming_the_file(run, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(list_checkpoints(run)[-1], ckpt)
    weights = ckpt / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    out = tmp_path / "student"
    assert train("method=no-cot", f"model.init_from={ckpt}", f"out_dir={out}") == 2
    err = one_line(capsys)
    assert str(weights) in err and "truncated or damaged" in err and "copy the checkpoint folder" in err
    assert not out.exists()
    assert main(["eval", str(ckpt), "--out", str(tmp_path / "eval")]) == 2
    assert str(weights) in one_line(capsys)


def test_a_truncated_trainer_state_is_one_line_on_resume(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    first, last = list_checkpoints(copy)
    shutil.rmtree(last)  # the run resumes from step 1
    state = first / STATE_FILE
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    assert train(f"out_dir={copy}") == 2
    err = one_line(capsys)
    assert str(state) in err and "damaged or truncated" in err and "train.resume" in err


# ------------------------------------------------------------------------------------------------ lori.rank


def test_a_rank_over_the_model_width_is_refused_before_calibration(run, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"lori.rank=100000 .*model.hidden_size"):
        load_config(None, [*TINY, "method=lori", "lori.rank=100000"])
    with pytest.raises(ConfigError, match="lori.layer_rank=3"):
        load_config(None, [*TINY, "method=lori", "lori.layer_rank=3"])
    assert main(["precompute", *TINY, "method=lori", "lori.rank=33", f"lori.teacher={run}",
                 f"lori.cache_dir={tmp_path / 'c'}"]) == 2
    assert "lori.rank=33" in one_line(capsys) and not (tmp_path / "c").exists()
    # A model named by folder (not a tiny one) is checked against the teacher's width once it is loaded, before
    # the calibration pass and before the cache folder exists.
    ckpt = list_checkpoints(run)[-1]
    cache = tmp_path / "cache"
    assert main(["precompute", *TINY, "method=lori", f"model.name={ckpt}", "lori.rank=100000",
                 f"lori.teacher={ckpt}", f"lori.cache_dir={cache}"]) == 2
    err = one_line(capsys)
    assert "lori.rank=100000" in err and "hidden width 32" in err and str(ckpt) in err
    assert not cache.exists()


# ------------------------------------------------------------------------------------------------ unwritable


def test_an_unwritable_out_dir_or_cache_dir_is_refused_up_front(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    assert train(f"out_dir={blocker / 'run'}") == 2
    err = one_line(capsys)
    assert "out_dir" in err and str(blocker / "run") in err and "cannot be written" in err
    # The cache folder is checked before the teacher is even looked for.
    assert main(["precompute", *TINY, "method=lori", f"lori.teacher={tmp_path / 'no-teacher'}",
                 f"lori.cache_dir={blocker / 'cache'}"]) == 2
    err = one_line(capsys)
    assert "lori.cache_dir" in err and "cannot be written" in err
    assert main(["demo", "--out", str(blocker / "demo")]) == 2
    assert "--out" in one_line(capsys) and not blocker.is_dir()
    # No permission and a read-only file system, as the OS reports them (root may write anywhere: simulated).
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    with pytest.raises(LoriError, match="permission denied"):
        check_writable(ro / "cache", "lori.cache_dir")
    monkeypatch.setattr(os, "access", real_access)
    real_statvfs = os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if Path(p) == ro else real_statvfs(p))
    with pytest.raises(LoriError, match="read-only file system"):
        check_writable(ro, "lori.cache_dir")
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    real_write_text = Path.write_text

    def denied(self, *a, **k):
        if self.parent == ro:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", denied)
    assert train(f"out_dir={ro}") == 2
    err = one_line(capsys)
    assert f"out_dir {ro} cannot be written (Permission denied)" in err
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_a_read_only_out_dir_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert train(f"out_dir={ro / 'run'}") == 2
        assert "cannot be written" in one_line(capsys)
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------ full disk


def _full_disk(monkeypatch, how: str, at_step: int = 2) -> None:
    """Make writing the step-``at_step`` checkpoint fail as a full disk does, in one of PyTorch's ways."""
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == at_step:
            if how == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            if how == "torch":  # what torch.save says when the disk fills under it
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            real_save(obj, f, *a, **k)  # "short": a writer that ignored the error and left half a file
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            return None
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("how", ["oserror", "torch", "short"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, how):
    _full_disk(monkeypatch, how)
    out = tmp_path / "run"
    assert train("train.steps=3", "train.save_every=1", f"out_dir={out}") == 2
    err = one_line(capsys)
    step2, step1 = checkpoint_dir(out) / "step-000002", checkpoint_dir(out) / "step-000001"
    assert f"could not write {step2}" in err and f"the previous checkpoint {step1} is intact" in err
    assert ("the disk is full" in err) if how == "oserror" else ("written incomplete" in err or "PyTorch" in err)
    assert [p.name for p in checkpoint_dir(out).iterdir()] == ["step-000001"]  # no partial folder either
    monkeypatch.undo()  # space freed: the run resumes from step 1 and finishes
    assert train("train.steps=3", "train.save_every=1", f"out_dir={out}") == 0
    assert [p.name for p in list_checkpoints(out)][-1] == "step-000003"


def test_a_full_disk_while_writing_the_weights_names_the_checkpoint(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as mu

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mu, "safe_save_file", full)
    out = tmp_path / "run"
    assert train("train.steps=1", f"out_dir={out}") == 2
    err = one_line(capsys)
    assert f"could not write {checkpoint_dir(out) / 'step-000001'}: the disk is full" in err
    assert "no earlier checkpoint of this run exists" in err and list(checkpoint_dir(out).iterdir()) == []


def test_low_free_space_is_warned_about_before_a_checkpoint(tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    import lori.training.checkpoint as ckpt_mod

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    assert train("train.save_every=1", f"out_dir={tmp_path / 'run'}") == 0
    out = capsys.readouterr().out
    assert "warning: 0 MiB free on the disk of" in out and "writing step-000002 may fail" in out


def test_a_failed_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(LoriError, match=f"could not write {target}: the disk is full.*previous results.json is "
                                        "unchanged"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ------------------------------------------------------------------------------------------------ eval settings


@pytest.mark.parametrize("value", [0, -1])
def test_latency_problems_below_one_is_refused_by_validation(value, capsys):
    with pytest.raises(ConfigError, match=f"eval.latency_problems must be >= 1, got {value}"):
        load_config(None, [f"eval.latency_problems={value}"])
    assert main(["train", f"eval.latency_problems={value}"]) == 2
    assert "eval.latency_problems" in one_line(capsys)


# ------------------------------------------------------------------------------------------------ permissions


def _modes(root: Path) -> set[tuple[str, str]]:
    """``(kind, octal mode)`` of everything under ``root`` (root included)."""
    out = {("dir", oct(stat.S_IMODE(root.stat().st_mode)))}
    for p in root.rglob("*"):
        out.add(("dir" if p.is_dir() else "file", oct(stat.S_IMODE(p.stat().st_mode))))
    return out


def test_everything_written_is_0644_and_0755(run, tmp_path):
    assert _modes(run) == {("dir", "0o755"), ("file", "0o644")}
    assert any(p.name == "model.safetensors" for p in run.rglob("*"))  # the weights, whose writer makes 0600
    old = os.umask(0o022)
    try:
        from lori.methods.lori.teacher import precompute

        cache = tmp_path / "cache"
        precompute(load_config(None, [*TINY, "method=lori", f"lori.teacher={run}", f"lori.cache_dir={cache}",
                                      "lori.rank=4", "lori.calib_size=40", "lori.shard_size=60"]))
        assert _modes(cache) == {("dir", "0o755"), ("file", "0o644")}
        # A stricter umask is respected, as open() and mkdir() respect it.
        os.umask(0o027)
        strict = tmp_path / "strict"
        assert train("train.steps=1", f"out_dir={strict}") == 0
        assert _modes(strict) == {("dir", "0o750"), ("file", "0o640")}
    finally:
        os.umask(old)
