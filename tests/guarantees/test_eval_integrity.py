"""Evaluation never reports a number that does not match what was evaluated: every results row names its test set
(task, split, n, source, a digest of the problems) and rows of different test sets never share a table or a speedup
(`lori eval A B`, `lori compare`, every table of lori.evaluation.results); each row counts the generations that hit
eval.max_new_tokens (`truncated`) and the tables flag them; `lori eval --out` somewhere unwritable fails before
anything is evaluated."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from lori.cli import main
from lori.config import load_config
from lori.data import write_icot
from lori.data.splits import load_split
from lori.errors import LoriError
from lori.evaluation import scoring
from lori.evaluation.metrics import wilson_ci
from lori import pipeline
from lori.evaluation.results import (ResultRow, aggregate_table, markdown_table, read_results,
                                    write_results)
from lori.training.checkpoint import CONFIG_FILE
from lori.training.loop import train

TINY = ["data.digits=[2,2]", "data.train_size=200", "data.valid_size=8", "data.test_size=12",
        "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
        "train.steps=4", "train.global_batch=16", "train.micro_batch=16", "train.log_every=2", "train.eval_every=0",
        "train.eval_size=4", "eval.max_new_tokens=24", "eval.latency_problems=1"]
EVAL = ["eval.latency_problems=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cot-run")
    train(load_config(None, [*TINY, "method=cot-sft", f"out_dir={out}"]))
    return out


def _twin(run: Path, tmp_path: Path, name: str, eval_split: str | None = None, **data) -> Path:
    """A copy of ``run`` whose checkpoint config evaluates other ``data`` settings (or another split)."""
    twin = tmp_path / name
    shutil.copytree(run, twin)
    (ckpt,) = sorted((twin / "checkpoints").iterdir())
    tree = yaml.safe_load((ckpt / CONFIG_FILE).read_text())
    tree["data"].update(data)
    if eval_split:
        tree["eval"]["split"] = eval_split
    (ckpt / CONFIG_FILE).write_text(yaml.safe_dump(tree))
    return twin


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("lori: error:")]


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if any checkpoint is evaluated (the refusals must come first)."""
    def boom(*a, **k):
        raise AssertionError("a checkpoint was evaluated before the refusal")
    monkeypatch.setattr(scoring, "evaluate_checkpoint", boom)
    monkeypatch.setattr(pipeline, "evaluate_checkpoint", boom)  # lori compare / demo evaluate through the pipeline


# ------------------------------------------------------------------------------------ the row's test set
def test_eval_row_records_its_test_set_and_truncated_count(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--out", str(out), "eval.max_new_tokens=3", *EVAL]) == 0
    (row,) = json.loads((out / "results.json").read_text())["results"]
    ts = row["test_set"]
    cfg = load_config(None, [*TINY, "method=cot-sft"])
    assert ts["task"] == "multiplication" and ts["split"] == "test" and ts["n"] == 12
    assert ts["source"] == "generated 2x2 multiplication, data.seed=0, valid_size=8, test_size=12"
    assert ts == scoring.test_set_identity(cfg) and len(ts["sha256"]) == 64
    preds = [json.loads(line) for line in next(out.glob("predictions-*.jsonl")).read_text().splitlines()]
    # 3 new tokens cannot hold a CoT rationale: every generation is cut, and each prediction says so
    assert row["truncated"] == sum(p["truncated"] for p in preds) == 12
    assert all(p["steps"] == 3 for p in preds if p["truncated"])
    md = (out / "results.md").read_text()
    header, _, line = [x for x in md.splitlines() if x.startswith("|")]
    assert "| tokens | truncated |" in header and f"| {row['mean_generated_tokens']:.1f}\\* | 12 |" in line
    assert "hit `eval.max_new_tokens` without ending" in md
    assert read_results(out)[3][0].test_set == ts and read_results(out)[3][0].truncated == 12


def test_the_same_problems_from_a_file_share_a_table_with_generated_ones(run, tmp_path, capsys):
    cfg = load_config(None, [*TINY, "method=cot-sft"])
    test_file = tmp_path / "test.txt"
    write_icot(load_split(cfg.data, "test"), test_file)
    twin = _twin(run, tmp_path, "from-file", test_file=str(test_file))
    out = tmp_path / "eval"
    assert main(["eval", str(run), str(twin), "--out", str(out), *EVAL]) == 0, capsys.readouterr().err
    a, b = (r["test_set"] for r in json.loads((out / "results.json").read_text())["results"])
    assert a["sha256"] == b["sha256"] and b["source"] == f"file {test_file.resolve()}" and "file_sha256" in b


def test_eval_refuses_runs_on_different_test_sets_before_evaluating(run, tmp_path, capsys, no_evaluation):
    smaller = _twin(run, tmp_path, "smaller", test_size=10)
    assert main(["eval", str(run), str(smaller), "--out", str(tmp_path / "e1"), *EVAL]) == 2
    (err,) = _errors(capsys)
    ckpt_a, ckpt_b = (sorted((r / "checkpoints").iterdir())[-1] for r in (run, smaller))
    assert f"{ckpt_a} and {ckpt_b} evaluate different test sets (n 12 vs 10, problems sha256 " in err
    assert "test_size=12' vs 'generated 2x2 multiplication, data.seed=0, valid_size=8, test_size=10'" in err

    other = tmp_path / "other.txt"  # as many problems, other ones: the digest tells them apart
    cfg = load_config(None, [*TINY, "method=cot-sft", "data.seed=9"])
    write_icot(load_split(cfg.data, "test"), other)
    twin = _twin(run, tmp_path, "other-file", test_file=str(other))
    assert main(["eval", str(run), str(twin), "--out", str(tmp_path / "e2"), *EVAL]) == 2
    (err,) = _errors(capsys)
    assert "evaluate different test sets (problems sha256 " in err and "n 12" not in err
    assert f"vs 'file {other.resolve()}'" in err
    # another split: named too
    valid = _twin(run, tmp_path, "valid", eval_split="valid")
    assert main(["eval", str(run), str(valid), "--out", str(tmp_path / "e3"), *EVAL]) == 2
    (err,) = _errors(capsys)
    assert "evaluate different test sets (split 'test' vs 'valid', n 12 vs 8, problems sha256 " in err
    assert not any((tmp_path / e).exists() for e in ("e1", "e2", "e3"))


# ------------------------------------------------------------------------------------ tables
def _row(method: str, ckpt: str, n: int = 100, sha: str = "a" * 64, task: str = "multiplication",
         seed: int | None = None, truncated: int | None = 0, latency: float = 50.0) -> ResultRow:
    ts = {"task": task, "split": "test", "n": n, "source": f"file {ckpt}.txt", "sha256": sha}
    return ResultRow(method, ckpt, 0.5, wilson_ci(n // 2, n), 10.0, latency, 5.0, seed=seed, truncated=truncated,
                     test_set=ts)


def test_tables_refuse_rows_of_different_test_sets(tmp_path):
    good = [_row("cot-sft", "runs/a", latency=100.0), _row("lori", "runs/b")]
    assert "2.00x" in markdown_table(good) and "2.00x" in aggregate_table(good)
    for bad, what in [(_row("lori", "runs/b", n=50), "n 100 vs 50"),
                      (_row("lori", "runs/b", sha="b" * 64), "problems sha256 aaaaaaaaaaaa... vs bbbbbbbbbbbb..."),
                      (_row("lori", "runs/b", task="gsm8k"), "task 'multiplication' vs 'gsm8k'")]:
        rows = [good[0], bad]
        for table in (markdown_table, aggregate_table, lambda r: write_results(tmp_path, "multiplication", "test",
                                                                                100, r)):
            with pytest.raises(LoriError) as e:
                table(rows)
            msg = str(e.value)
            assert msg.startswith("cannot put runs/a (cot-sft) and runs/b (lori) in one table: they were evaluated "
                                  "on different test sets (") and what in msg and "\n" not in msg, msg
    assert not (tmp_path / "results.json").exists()
    legacy = replace(good[1], test_set=None)
    with pytest.raises(LoriError, match=r"runs/b \(lori\) .* no record of its test set"):
        markdown_table([good[0], legacy])
    markdown_table([replace(good[0], test_set=None), legacy])  # rows from before the record: among themselves
    with pytest.raises(LoriError, match="was evaluated on n 100, not the table's n 99"):
        write_results(tmp_path, "multiplication", "test", 99, good)


def test_truncated_rows_are_flagged_and_roundtrip(tmp_path):
    rows = [_row("cot-sft", "a", seed=0, truncated=3, latency=100.0), _row("cot-sft", "b", seed=1, truncated=0),
            _row("lori", "c", seed=0, truncated=0)]
    md = markdown_table(rows)
    assert "| tokens | truncated |" in md.splitlines()[0]
    assert "| 10.0\\* | 3 |" in md and "| 10.0 | 0 |" in md
    agg = aggregate_table(rows)
    assert "| 10.0\\* | 3 |" in agg and "| 10.0 | 0 |" in agg  # summed over seeds
    clean = [replace(r, truncated=0) for r in rows]
    assert "truncated" not in markdown_table(clean) and "\\*" not in markdown_table(clean)
    json_path, md_path = write_results(tmp_path, "multiplication", "test", 100, rows, aggregate=True)
    assert read_results(json_path)[3] == rows
    assert "without ending" in md_path.read_text()
    assert "without ending" not in write_results(tmp_path, "multiplication", "test", 100, clean)[1].read_text()
    data = json.loads(json_path.read_text())
    data["results"][0]["truncated"] = -1
    json_path.write_text(json.dumps(data))
    with pytest.raises(LoriError, match=r"results\[0\]\.truncated: must be an integer >= 0"):
        read_results(json_path)


def test_compare_refuses_rows_of_different_test_sets_and_reevaluates_stale_ones(tmp_path, monkeypatch, capsys):
    from lori.commands import compare

    teacher, student = tmp_path / "teacher.yaml", tmp_path / "student.yaml"
    teacher.write_text("method: cot-sft\ndata: {task: chains, seed: 0}\n")
    student.write_text("method: no-cot\ndata: {task: chains, seed: 0}\n")
    monkeypatch.setattr(compare, "train_runs", lambda *a, **k: None)
    reused, fresh, calls = {}, {}, []  # method -> the test set its reused / fresh evaluation reports

    def evaluate_run(cfg, seed=None, tag="", label="", reuse=True):
        calls.append((cfg.method, reuse))
        ts = scoring.test_set_identity(cfg)
        ts = (reused if reuse else fresh).get(cfg.method, ts)
        row = replace(_row(cfg.method, f"{cfg.out_dir}/step-1", task="chains", seed=seed), test_set=ts)
        return row, (ts or {}).get("n", 20), tmp_path / "unused.jsonl"

    monkeypatch.setattr(pipeline, "evaluate_run", evaluate_run)  # what pipeline.evaluate_current calls
    args = (teacher, student, "cot-sft,no-cot", "0")
    data = ["data.chain_steps=2", "data.test_size=20", "data.valid_size=20"]
    # an evaluation without a record of its test set, and one of a test set changed since: both run again
    reused.update({"cot-sft": None, "no-cot": {"task": "chains", "split": "test", "n": 3, "source": "file old.txt",
                                               "sha256": "c" * 64}})
    compare.run_compare(*args, tmp_path / "ok", data)
    assert calls == [("cot-sft", True), ("cot-sft", False), ("no-cot", True), ("no-cot", False)]
    out = capsys.readouterr().out
    assert "cot-sft: its evaluation has no record of its test set; evaluating again" in out
    assert "no-cot: its evaluation was of another test set than the current one (n 3 vs 20" in out
    # rows that still differ after evaluating again are never tabled together
    fresh["no-cot"] = {**scoring.test_set_identity(compare.compare_configs(
        teacher, student, ["no-cot"], [0], tmp_path / "bad", data)[0]["no-cot"]), "sha256": "b" * 64}
    with pytest.raises(LoriError, match=r"cannot put .*cot-sft/step-1 \(cot-sft, seed 0\) and .*no-cot/step-1 "
                                        r"\(no-cot, seed 0\) in one table: .*problems sha256"):
        compare.run_compare(*args, tmp_path / "bad", data)
    assert not (tmp_path / "bad" / "results.json").exists()


# ------------------------------------------------------------------------------------ --out checked up front
def test_eval_out_unwritable_fails_before_evaluating(run, tmp_path, capsys, monkeypatch, no_evaluation):
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["eval", str(run), "--out", str(blocker / "eval"), *EVAL]) == 2
    (err,) = _errors(capsys)
    assert err == f"lori: error: --out {blocker / 'eval'} cannot be written ({blocker} is not a folder); choose a " \
                  "writable folder"

    locked = tmp_path / "locked"  # as root a chmod does not stop a write: pretend the folder refuses it
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == locked else real_access(p, mode))
    assert main(["eval", str(run), "--out", str(locked / "eval"), *EVAL]) == 2
    (err,) = _errors(capsys)
    assert f"--out {locked / 'eval'} cannot be written (permission denied in {locked})" in err
    assert not (locked / "eval").exists()


def test_generation_marks_exactly_the_problems_cut_at_max_new_tokens():
    import torch

    from lori.data import generate_multiplication
    from lori.evaluation.generate import greedy_generate
    from lori.models.build import tiny_model
    from lori.models.loading import builtin_tokenizer

    tok = builtin_tokenizer(generate_multiplication(2, 2, 20, seed=0))
    torch.manual_seed(0)
    model = tiny_model(load_config(None, TINY).model, tok, max_positions=64)
    bias = torch.zeros(len(tok))
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=4)
    prompts = [[tok.bos_token_id], [tok.bos_token_id] * 3]
    bias[tok.eos_token_id] = 1e4  # ends at once
    assert greedy_generate(model, prompts, **kw).truncated == [False, False]
    bias[tok.eos_token_id] = -1e4  # never ends
    g = greedy_generate(model, prompts, **kw)
    assert g.truncated == [True, True] and g.steps == [4, 4]
    hook.remove()
