"""A number lori publishes describes the weights, settings and inputs it names: results rows are tied to the digest
of the weights they scored and to the inference settings they ran under; checkpoints carry the digests of their
weights files; inputs are checked where they are read; a bad input is one line, not a traceback or a late
failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lori
from lori.cli import main
from lori.config import load_config
from lori.data.splits import load_split
from lori.errors import LoriError
from lori.evaluation.results import read_results
from lori.methods import METHODS
from lori.models.build import tiny_model
from lori.models.checkpoint_folders import WEIGHT_DIGESTS
from lori.models.loading import builtin_tokenizer
from lori.training.checkpoint import save_checkpoint
from lori.training.loop import train

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.digits=[2,2]", "data.train_size=16", "data.valid_size=4", "data.test_size=6"]
EVAL = ["eval.latency_problems=1"]


def random_run(run: Path, method: str = "lori", seed: int = 0, step: int = 3, extra=()) -> Path:
    """A run folder holding one checkpoint of ``method`` with random weights (torch seed ``seed``), saved as training
    saves one (a latent student's projector included)."""
    more = {"lori": ["lori.latent_steps=2", "lori.rank=4"]}.get(method, [])
    cfg = load_config(None, [f"method={method}", *TINY, *DATA, f"out_dir={run}", "eval.max_new_tokens=6",
                             "eval.batch_size=4", *more, *extra])
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    torch.manual_seed(seed)
    module = METHODS[method].wrap(tiny_model(cfg.model, tok, 64), tok, cfg)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    save_checkpoint(run, step, getattr(module, "lm", module), tok, cfg, {"step": step},
                    extra_tensors=METHODS[method].extra_tensors(module))
    return run


def errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("lori: error:")]


def flip_a_tensor_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x40  # the last tensor's data: the header still covers the file
    f.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ rows tied to their weights
def test_export_takes_no_row_of_weights_retrained_since_the_evaluation(tmp_path, capsys):
    run = random_run(tmp_path / "run")
    assert main(["eval", str(run), *EVAL]) == 0
    (row,) = read_results(run / "eval-test")[3]
    assert len(row.weights_sha256) == 64 and row.inference["latent_steps"] == 2 and "overrides" not in row.inference
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 0
    assert "| lori |" in (tmp_path / "a" / "README.md").read_text()
    random_run(tmp_path / "run", seed=1)  # retrained to the same step: same checkpoint path, other weights
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "left out: it scored other weights" in out
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Not evaluated yet" in card and "| lori |" not in card
    with pytest.raises(LoriError, match="has no row of .* as it is now"):
        lori.export.export(run, tmp_path / "c", results=run / "eval-test" / "results.json")


def test_resume_never_removes_the_runs_evaluations(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["method=cot-sft", *TINY, *DATA, f"out_dir={out}", "train.steps=2", "train.global_batch=4",
            "train.micro_batch=4", "train.eval_every=0", "eval.max_new_tokens=4", *EVAL]
    train(load_config(None, base))
    assert main(["eval", str(out), *EVAL]) == 0 and (out / "eval-test" / "results.json").is_file()
    train(load_config(None, [*base, "train.resume=never"]))
    assert not (out / "eval-test").exists()
    assert "eval-test" in capsys.readouterr().out


def test_an_inference_override_is_recorded_and_kept_off_the_card(tmp_path, capsys):
    run = random_run(tmp_path / "run")
    assert main(["eval", str(run), "lori.latent_steps=3", *EVAL]) == 0
    assert "evaluated with lori.latent_steps=3" in capsys.readouterr().out
    (row,) = read_results(run / "eval-test")[3]
    assert row.inference["latent_steps"] == 3 and row.inference["overrides"] == ["lori.latent_steps=3"]
    assert "Evaluated with `lori.latent_steps=3`" in (run / "eval-test" / "results.md").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 0
    assert "other inference settings" in capsys.readouterr().out
    assert "Not evaluated yet" in (tmp_path / "x" / "README.md").read_text()


@pytest.mark.parametrize("override", ["model.hidden_size=64", "train.lr=0.5", "lori.rank=2"])
def test_an_override_that_cannot_apply_at_eval_is_refused(tmp_path, capsys, override):
    run = random_run(tmp_path / "run")
    assert main(["eval", str(run), override]) == 2
    (line,) = errors(capsys)
    assert f"{override} (from the command line) cannot apply to the trained weights" in line
    assert not (run / "eval-test").exists()
    with pytest.raises(LoriError, match="from the command line"):
        lori.load(run, device="cpu", overrides=[override])


def test_a_reused_eval_out_keeps_only_this_evaluations_predictions(tmp_path, capsys):
    a, b = random_run(tmp_path / "a", method="no-cot"), random_run(tmp_path / "b", method="no-cot", step=4)
    out = tmp_path / "eval"
    assert main(["eval", str(a), "--out", str(out), *EVAL]) == 0
    assert main(["eval", str(b), "--out", str(out), *EVAL]) == 0
    assert [f.name for f in out.glob("predictions-*.jsonl")] == ["predictions-no-cot-step-000004.jsonl"]
    assert "removed 1 earlier predictions file" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ checkpoint integrity
def test_a_flipped_byte_in_the_weights_is_named_by_eval_load_and_export(tmp_path, capsys):
    run = random_run(tmp_path / "run")
    ckpt = run / "checkpoints" / "step-000003"
    assert (ckpt / WEIGHT_DIGESTS).read_text().count(".safetensors") == 2  # the model and the projector
    for name in ("model.safetensors", "projector.safetensors"):
        good = (ckpt / name).read_bytes()
        flip_a_tensor_byte(ckpt / name)
        assert main(["eval", str(run), *EVAL]) == 2
        (line,) = errors(capsys)
        assert f"{ckpt / name} does not match the sha256 recorded in {WEIGHT_DIGESTS}" in line
        assert f"delete {ckpt} and run the same `lori train` command again" in line
        with pytest.raises(LoriError, match=name):
            lori.load(run, device="cpu")
        assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 2 and not (tmp_path / "x").exists()
        assert name in errors(capsys)[0]
        (ckpt / name).write_bytes(good)
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 0
    lori.load(tmp_path / "x", device="cpu")  # the export records its own weights' digests


def test_a_checkpoint_without_digests_still_loads_and_says_so_once(tmp_path, capsys):
    run = random_run(tmp_path / "run")
    (run / "checkpoints" / "step-000003" / WEIGHT_DIGESTS).unlink()
    lori.load(run, device="cpu")
    lori.load(run, device="cpu")
    assert capsys.readouterr().out.count(f"has no {WEIGHT_DIGESTS}") == 1


def test_the_shipped_demo_teacher_has_its_digests():
    from importlib import resources

    from lori.models.checkpoint_folders import verify_weights

    folder = Path(str(resources.files("lori") / "assets" / "chains-teacher"))
    assert (folder / WEIGHT_DIGESTS).is_file() and set(verify_weights(folder)) == {"model.safetensors"}


# ------------------------------------------------------------------------------------ configs
def test_a_key_given_twice_in_a_yaml_file_is_refused_naming_both_lines(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: no-cot\ntrain:\n  steps: 1000\n  lr: 1e-3\n  steps: 20\n")
    assert main(["train", str(preset)]) == 2
    (line,) = errors(capsys)
    assert f"{preset}:5: key 'steps' is given twice in one mapping (lines 3 and 5)" in line


def test_numbers_like_1e_3_are_numbers_and_bom_headed_yaml_reads(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("\ufefftrain:\n  lr: 1e-3\n  min_lr_ratio: 2E-2\n", encoding="utf-8")
    cfg = load_config(preset)
    assert (cfg.train.lr, cfg.train.min_lr_ratio) == (1e-3, 2e-2)


def test_an_override_error_says_it_came_from_the_command_line(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: no-cot\n")
    with pytest.raises(LoriError) as e:
        load_config(preset, ["train.lr=abc"])
    assert str(e.value) == "train.lr: expected a number, got 'abc' (from the command line)"
    preset.write_text("train: {lr: abc}\n")
    with pytest.raises(LoriError, match=rf"^{preset}: train.lr: expected a number"):
        load_config(preset, ["train.steps=3"])
    from lori.commands.demo import demo_configs

    with pytest.raises(LoriError, match=r"^\(lori\): lori.rank=400 is larger .*\(from the command line\)$"):
        demo_configs(tmp_path / "demo", ["student.lori.rank=400"])


# ------------------------------------------------------------------------------------ runs
def test_training_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(None, ["method=no-cot", *TINY, *DATA, f"out_dir={out}", "train.steps=2", "train.global_batch=4",
                             "train.micro_batch=4", "train.eval_every=2", "train.eval_size=2",
                             "eval.max_new_tokens=4"])
    final = train(cfg)
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train(cfg) == final
    assert "already finished" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == metrics


def test_precompute_takes_the_cache_folders_lock(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".lock").write_text(json.dumps({"pid": 1, "host": __import__("socket").gethostname(),
                                             "started": "then"}) + "\n")  # pid 1 is always alive
    assert main(["precompute", *TINY, "method=lori", f"lori.teacher={tmp_path / 'none'}",
                 f"lori.cache_dir={cache}"]) == 2
    (line,) = errors(capsys)
    assert f"{cache} is in use by another lori run (pid 1" in line and "new lori.cache_dir" in line


def test_precompute_on_a_preset_without_a_teacher_cache_names_the_method(capsys):
    assert main(["precompute", "method=no-cot"]) == 2
    (line,) = errors(capsys)
    assert "this config's method is no-cot, which reads none" in line


# ------------------------------------------------------------------------------------ inputs
def test_a_byte_order_mark_is_refused_not_glued_to_the_first_question(tmp_path):
    from lori.data.readers import read_icot

    f = tmp_path / "t.txt"
    f.write_text("\ufeff1 2 * 3 4||1 2 #### 3 8 1\n", encoding="utf-8")
    with pytest.raises(LoriError, match=r"t.txt:1: the file starts with a UTF-8 byte-order mark"):
        read_icot(f)


def _gsm(tmp_path: Path, train: str = "q one||<<1+1=2>> #### 2\n", test: str = "q two|| #### 3\n") -> list[str]:
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "valid.txt").write_text("q one|| #### 2\n")
    (tmp_path / "test.txt").write_text(test)
    return ["data.task=gsm8k", f"data.train_file={tmp_path / 'train.txt'}", f"data.valid_file={tmp_path / 'valid.txt'}",
            f"data.test_file={tmp_path / 'test.txt'}"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_gold_answer_the_task_cannot_score_is_refused_when_read(tmp_path, split):
    bad = "q three||<<1+1=2>> #### abc\n"
    data = _gsm(tmp_path, **{split: "q one|| #### 2\n" + bad})
    with pytest.raises(LoriError, match=rf"{split}.txt:2: the gold answer 'abc' is not a number .*data.{split}_file"):
        load_split(load_config(None, data).data, "train")  # a run reads every file's answers before it trains


def test_a_missing_data_file_names_its_field(tmp_path):
    data = _gsm(tmp_path)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(LoriError, match=r"test.txt: file does not exist \(data.test_file names it.*data.test_file=PATH"):
        load_split(load_config(None, data).data, "test")


def test_words_outside_a_word_level_vocabulary_are_refused_in_data_and_warned_about_in_generate(tmp_path, capsys):
    run = random_run(tmp_path / "run", method="no-cot")
    test = tmp_path / "test.txt"
    test.write_text("1 2 * 3 4||1 2 #### 3 8 1\n\uff11 2 * 3 4||1 2 #### 3 8 1\n")
    assert main(["eval", str(run), f"data.test_file={test}", *EVAL]) == 2
    (line,) = errors(capsys)
    assert f"{test}:2: '\uff11' (U+FF11, in '\uff11') is a character the model's word-level vocabulary never saw" in line
    student = lori.load(run, device="cpu")
    student.generate(["1 2 \u00d7 3 4", "1 2 * 3 4"])
    err = capsys.readouterr().err
    assert "'\u00d7' (question 0) not in the model's word-level vocabulary" in err


def test_an_empty_question_or_one_beyond_the_models_positions_is_refused(tmp_path):
    student = lori.load(random_run(tmp_path / "run", method="no-cot"), device="cpu")
    with pytest.raises(LoriError, match="question 0 is empty"):
        student.generate("  ")
    with pytest.raises(LoriError, match=r"question 1 takes \d+ positions .* but the model has 64"):
        student.generate(["1 2 * 3 4", " ".join(["1"] * 640)])


def test_analyze_refuses_a_teacher_without_a_chain_of_thought_and_a_bad_out_up_front(tmp_path, capsys):
    run = random_run(tmp_path / "run", method="no-cot")
    assert main(["analyze", str(run), "--n", "2"]) == 2
    assert "method 'no-cot', which writes no chain of thought" in errors(capsys)[0]
    cot = random_run(tmp_path / "cot", method="cot-sft")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["analyze", str(cot), "--n", "2", "--out", str(blocker / "a")]) == 2
    (line,) = errors(capsys)
    assert f"--out {blocker / 'a'} cannot be written" in line


def test_lm_eval_gsm8k_aug_test_outside_the_repository_root_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval")
    monkeypatch.chdir(tmp_path)
    assert main(["lm-eval", "--model", "lori", "--model_args", "pretrained=x", "--tasks", "gsm8k_aug_test"]) == 2
    (line,) = errors(capsys)
    assert "gsm8k_aug_test reads ../shared/data/gsm8k-aug/test.txt relative to the working directory" in line


# ------------------------------------------------------------------------------------ messages
def test_a_missing_teacher_names_the_setting_and_what_to_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the repository root: configs/ is there
    assert main(["train", "method=no-cot", *TINY, *DATA, f"out_dir={tmp_path / 'run'}",
                 f"model.init_from={tmp_path / 'chains-cot-sft'}"]) == 2
    (line,) = errors(capsys)
    assert "model.init_from: " in line and "does not exist: train `lori train configs/chains-cot-sft.yaml` first" in line


def test_a_write_under_a_file_says_so_not_free_some_space(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["prepare", "multiplication", "--out", str(blocker / "x.txt"), "--count", "3"]) == 2
    (line,) = errors(capsys)
    assert "a part of the path is a file, not a folder" in line and "free some space" not in line


def test_another_methods_section_does_not_change_a_run(tmp_path):
    from lori.training.identity import differences, run_identity

    base = [*TINY, *DATA, f"out_dir={tmp_path}"]
    for method, changed in (("no-cot", []), ("lori", ["lori.rank"])):
        old = run_identity(load_config(None, [f"method={method}", *base]))
        new = run_identity(load_config(None, [f"method={method}", *base, "lori.rank=4"]))
        assert differences(old, new)[0] == changed


# ------------------------------------------------------------------------------------ publishing
def test_an_export_holds_no_local_absolute_path_and_loads_from_elsewhere(tmp_path, capsys):
    run = random_run(tmp_path / "run", method="no-cot", extra=["data.task=chains", "data.chain_steps=2"])
    assert main(["eval", str(run), *EVAL]) == 0
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    for f in out.iterdir():
        if f.suffix in (".md", ".json", ".yaml"):
            assert str(tmp_path) not in f.read_text(), f.name
    card = (out / "README.md").read_text()
    assert "| no-cot | run/checkpoints/step-000003 |" in card
    assert "lm-eval" not in card  # lm-eval has no chains task
    moved = tmp_path / "elsewhere" / "export"
    moved.parent.mkdir()
    out.rename(moved)
    student = lori.load(moved, device="cpu")
    assert student.cfg.data.task == "chains" and student.generate("a = 1 ; ? a").latent_steps == 0


def test_library_progress_bars_stay_quiet_inside_lori(tmp_path, capsys):
    run = random_run(tmp_path / "run", method="no-cot")
    lori.load(run, device="cpu")
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err
