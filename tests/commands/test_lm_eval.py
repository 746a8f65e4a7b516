"""lm-evaluation-harness runs a latent student through the ``lori`` model type (``lori lm-eval``), offline: the
shipped task gsm8k_aug_test (src/lori/lm_eval_tasks/: lm-eval's gsm8k scoring) on the first six lines of
../shared/data/gsm8k-aug/test.txt, a tiny Coconut student (K = 2) trained on four of them, and lm-eval's strict-match
score equal to ``lori eval``'s and ``lori.load``'s accuracy, problem by problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lori
from lori.cli import main
from lori.config import load_config
from lori.data import read_examples
from lori.errors import LoriError
from lori.lm_eval_model import cut_at, question_of
from lori.training.loop import train

from conftest import DATA, REPO

TEST_FILE = DATA / "gsm8k-aug" / "test.txt"  # what the task reads (its path is relative to the repository root)
N = 6  # problems evaluated
TRAINED = 4  # of them memorised: the accuracy is neither 0 nor 1
SKIP = "lm-eval is optional and not installed: pip install -e '.[lm-eval]' (lm-eval==0.4.13) to run this test"


def test_contexts_and_stop_strings():
    assert question_of("Question: How many?\nAnswer:") == ("How many?", 0)
    assert question_of("Question: a?\nAnswer: 1\n\nQuestion: b?\nAnswer:") == ("b?", 1)
    assert question_of("  just the question ") == ("just the question", 0)
    assert cut_at("#### 18 Question: next", ["Question:", "</s>"]) == "#### 18 "


def test_the_model_type_needs_lm_eval_or_names_the_install(monkeypatch):
    import lori.lm_eval_model as h

    monkeypatch.setattr(h, "HAVE_LM_EVAL", False)
    with pytest.raises(LoriError, match="lm-eval==0.4.13"):
        h.LoriLM(pretrained="x")


@pytest.fixture(scope="module")
def gsm_run(tmp_path_factory):
    """A tiny Coconut student that has memorised the first TRAINED of N GSM8k-Aug test problems (problems.txt)."""
    pytest.importorskip("lm_eval", reason=SKIP)  # before training: nothing to compare without lm-eval
    root = tmp_path_factory.mktemp("gsm")
    lines = TEST_FILE.read_text().splitlines()[:N]
    f, seen = root / "problems.txt", root / "train.txt"
    f.write_text("\n".join(lines) + "\n")
    seen.write_text("\n".join(lines[:TRAINED]) + "\n")
    run = root / "run"
    train(load_config(None, [
        "method=coconut", "data.task=gsm8k", f"data.train_file={seen}", f"data.valid_file={seen}",
        f"data.test_file={f}",
        "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128",
        "curriculum.stages=0", "coconut.latent_steps=2", "train.steps=60", f"train.global_batch={TRAINED}",
        f"train.micro_batch={TRAINED}", "train.lr=3e-3", "train.schedule=constant", "train.log_every=60",
        "train.eval_every=0", f"train.eval_size={TRAINED}", "train.save_every=1000", "eval.max_new_tokens=12",
        "eval.batch_size=4", f"out_dir={run}"]))
    return root, run, read_examples(f, "icot")


@pytest.mark.slow  # lm-eval indexes its few thousand task files at start (~30 s)
def test_lm_eval_strict_match_equals_lori_eval(gsm_run, tmp_path, capsys):
    root, run, examples = gsm_run
    # lori's own accuracy, twice: lori eval (results.json) and lori.load
    assert main(["eval", str(run), "--out", str(tmp_path / "eval"), "eval.latency_problems=1"]) == 0
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    student = lori.load(run, device="cpu")
    gens = student.generate([ex.question for ex in examples])
    correct = [student.is_correct(g, ex.answer) for g, ex in zip(gens, examples)]
    assert row["accuracy"] == sum(correct) / N
    assert 0 < sum(correct) < N, "a score of 0 or 1 would make the comparison trivial"
    assert all(g.latent_steps == 2 for g in gens)

    # the shipped task as is (lm-eval's gsm8k prompt, filters and metric on iCoT lines, found through the
    # --include_path `lori lm-eval` adds), on the first N lines of ../shared/data/gsm8k-aug/test.txt
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lori", "lm-eval", "--model", "lori", "--model_args", f"pretrained={run}",
           "--tasks", "gsm8k_aug_test", "--limit", str(N), "--batch_size", "4",
           "--output_path", str(tmp_path / "lm-eval"), "--log_samples"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (results,) = list((tmp_path / "lm-eval").rglob("results_*.json"))
    score = json.loads(results.read_text())["results"]["gsm8k_aug_test"]["exact_match,strict-match"]
    assert score == pytest.approx(sum(correct) / N)
    (samples,) = list((tmp_path / "lm-eval").rglob("samples_gsm8k_aug_test_*.jsonl"))
    logged = [json.loads(x) for x in samples.read_text().splitlines()]
    by_q = {s["doc"]["text"].split("||")[0].strip(): s for s in logged}
    assert len(by_q) == N
    for g, ok in zip(gens, correct):
        s = by_q[g.question]
        assert s["resps"][0][0] == g.text  # the same generation: the latent loop ran inside lm-eval
        assert bool(s["exact_match"]) == ok
