"""Experiment trackers through accelerate's tracker API (train.log_with, lori.training.trackers): a tracker gets
what metrics.jsonl gets, step by step, and is finished on an error too; TensorBoard's event files; a tracker that
is not installed is refused in one line; a resume may change train.log_with and keeps the run's id."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, get_available_trackers, register_tracker_class
from accelerate.utils import LoggerType

import lori.training.loop as loop
from lori.cli import main
from lori.config import load_config
from lori.errors import ConfigError, LoriError
from lori.training.identity import IDENTITY_FILE, read_run_id
from lori.training.loop import train
from lori.training.trackers import PIP_PACKAGE, init_kwargs, tracker_names

TINY = [
    "data.digits=[2,2]", "data.train_size=120", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.global_batch=16", "train.micro_batch=16", "train.log_every=1", "train.eval_every=0", "train.eval_size=4",
    "eval.max_new_tokens=8", "method=cot-sft",
]


class Recorder(GeneralTracker):
    """A tracker that records what accelerate hands it."""

    name = "lori-test-recorder"
    requires_logging_directory = False
    made: list[Recorder] = []

    def __init__(self, run_name: str, **kwargs):
        super().__init__()
        self.run_name, self.kwargs = run_name, kwargs
        self.config: dict | None = None
        self.logged: list[tuple[int, dict]] = []
        self.finished = 0
        Recorder.made.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished += 1


if Recorder.name not in LOGGER_TYPE_TO_CLASS:
    register_tracker_class(Recorder)


@pytest.fixture(autouse=True)
def _fresh_recorders():
    Recorder.made.clear()
    yield
    Recorder.made.clear()


def _train(out: Path, *overrides: str) -> Path:
    return train(load_config(None, [*TINY, f"out_dir={out}", *overrides]))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _expected(records: list[dict]) -> list[tuple[int, dict]]:
    return [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in records]


def test_a_tracker_logs_what_metrics_jsonl_holds_step_by_step(tmp_path, capsys):
    _train(tmp_path, "train.steps=4", "train.eval_every=2", f"train.log_with=[{Recorder.name}]")
    (rec,) = Recorder.made
    records = _records(tmp_path)
    assert any("valid_accuracy" in r for r in records) and any("loss" in r for r in records)
    assert rec.logged == _expected(records)  # the training and the validation records, in order, at their steps
    assert rec.finished == 1 and rec.run_name == "lori"
    # The resolved config as dotted scalar keys (a list as its JSON text).
    assert rec.config["train.lr"] == 0.001 and rec.config["method"] == "cot-sft"
    assert rec.config["data.digits"] == "[2, 2]" and rec.config["out_dir"] == str(tmp_path)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in rec.config.values())
    assert f"[lori] trackers: {Recorder.name}" in capsys.readouterr().out


def test_resume_with_another_log_with_is_allowed_and_keeps_the_run_id(tmp_path, capsys):
    _train(tmp_path, "train.steps=5", "train.stop_at=2")
    assert not Recorder.made
    run_id = read_run_id(tmp_path)
    assert run_id and json.loads((tmp_path / IDENTITY_FILE).read_text())["run_id"] == run_id
    capsys.readouterr()
    _train(tmp_path, "train.steps=5", f"train.log_with=[{Recorder.name}]")
    assert f"[lori] resume: applying changed train.log_with [] -> [\"{Recorder.name}\"]" in capsys.readouterr().out
    (rec,) = Recorder.made
    assert [s for s, _ in rec.logged] == [3, 4, 5, 5]  # after the checkpoint; step 5 twice: training, validation
    assert rec.logged == _expected([r for r in _records(tmp_path) if r["step"] > 2])
    # The resumed run continues the tracker run (wandb: the same id); started over, the run has a new id.
    assert read_run_id(tmp_path) == run_id
    assert init_kwargs(tmp_path, run_id, 2)["wandb"] == {"id": run_id, "resume": "allow", "name": tmp_path.name,
                                                          "dir": str(tmp_path)}
    _train(tmp_path, "train.steps=2", "train.resume=never")
    assert read_run_id(tmp_path) not in (None, run_id)


def test_trackers_are_finished_when_the_run_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise LoriError("validation broke")

    monkeypatch.setattr(loop, "validate", broken)
    with pytest.raises(LoriError, match="validation broke"):
        _train(tmp_path, "train.steps=2", f"train.log_with=[{Recorder.name}]")
    (rec,) = Recorder.made
    assert rec.finished == 1 and [s for s, _ in rec.logged] == [1, 2]


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(tmp_path, capsys):
    available = {str(t) for t in get_available_trackers()}
    missing = [str(t) for t in LoggerType if str(t) != "all" and str(t) not in available]
    if not missing:
        pytest.skip("every tracker accelerate knows is installed here")
    name = missing[0]
    out = tmp_path / "run"
    assert main(["train", *TINY, f"out_dir={out}", "train.steps=2", f"train.log_with=[{name}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.log_with: {name}" in err[0] and f"pip install {PIP_PACKAGE[name]}" in err[0]
    assert not out.exists()  # refused before any work
    if "tensorboard" not in available:  # the older spelling is refused the same way
        with pytest.raises(LoriError, match="train.tensorboard=true: .*pip install tensorboard"):
            tracker_names(load_config(None, ["train.tensorboard=true"]))


def test_log_with_names_are_checked_and_tensorboard_true_adds_tensorboard():
    with pytest.raises(ConfigError, match="train.log_with: unknown tracker 'tensorbored'; choose among all, .*wandb"):
        load_config(None, ["train.log_with=[tensorbored]"])
    assert load_config(None, []).train.log_with == []
    cfg = load_config(None, [f"train.log_with=[{Recorder.name}, {Recorder.name}]"])
    assert tracker_names(cfg) == [Recorder.name]
    if "tensorboard" in {str(t) for t in get_available_trackers()}:
        cfg = load_config(None, ["train.tensorboard=true", "train.log_with=[tensorboard]"])
        assert tracker_names(cfg) == ["tensorboard"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install tensorboard, or the tensorboard extra)")
def test_tensorboard_event_files_hold_the_metrics_and_resume_never_deletes_them(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    def scalars(tag: str = "loss") -> list[tuple[int, float]]:
        events = EventAccumulator(str(tmp_path / "tensorboard" / "lori"))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    _train(tmp_path, "train.steps=5", "train.stop_at=3", "train.tensorboard=true")  # the older spelling
    # A run killed after logging steps 4 and 5 but before their checkpoint: the resumed run hides those events
    # (purge_step), as metrics.jsonl drops their lines.
    stale = SummaryWriter(str(tmp_path / "tensorboard" / "lori"))
    for step in (4, 5):
        stale.add_scalar("loss", 99.0, step)
    stale.close()
    _train(tmp_path, "train.steps=5", "train.log_with=[tensorboard]")
    records = [r for r in _records(tmp_path) if "loss" in r]
    assert [s for s, _ in scalars()] == [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [v for _, v in scalars()] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [s for s, _ in scalars("valid_accuracy")] == [3, 5]
    capsys.readouterr()
    _train(tmp_path, "train.steps=2", "train.resume=never", "train.log_with=[tensorboard]")
    assert "tensorboard" in capsys.readouterr().out.split("removed the earlier run's", 1)[1].splitlines()[0]
    assert [s for s, _ in scalars()] == [1, 2]
