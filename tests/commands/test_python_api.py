"""The Python API and publishing: ``lori.load`` generates exactly as ``lori eval`` for every method; the README's
"Use it from Python" and "Publish a student" sections run as written against a toy demo; ``lori export`` round-trips
(a fresh process loads the export with ``lori.load`` and gets the run's own generations; ``transformers`` loads the
sharded weights alone)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lori
from lori.cli import main
from lori.config import load_config
from lori.data.splits import load_split
from lori.errors import LoriError
from lori.methods import METHODS
from lori.models.build import tiny_model
from lori.training.checkpoint import save_checkpoint
from lori.models.loading import builtin_tokenizer

from conftest import REPO

README = REPO / "README.md"
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.digits=[2,2]", "data.train_size=16", "data.valid_size=4", "data.test_size=6"]
K = {"no-cot": 0, "cot-sft": 0, "icot-si": 0, "coconut": 2, "codi": 2, "lori": 2}
EXTRA = {"icot-si": ["curriculum.stages=1"], "coconut": ["curriculum.stages=1", "curriculum.thoughts_per_step=2"],
         "codi": ["codi.latent_steps=2"], "lori": ["lori.latent_steps=2", "lori.rank=4"]}


def random_run(tmp_path: Path, method: str) -> Path:
    """A run folder holding one checkpoint of ``method`` with random weights (std 0.3: varied generations), saved
    as training saves one (the method's extra tensors, e.g. a projector, included)."""
    run = tmp_path / method
    cfg = load_config(None, [f"method={method}", *TINY, *DATA, f"out_dir={run}", "eval.max_new_tokens=6",
                             "eval.batch_size=4", *EXTRA.get(method, [])])
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    torch.manual_seed(0)
    module = METHODS[method].wrap(tiny_model(cfg.model, tok, 64), tok, cfg)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    save_checkpoint(run, 3, getattr(module, "lm", module), tok, cfg, {"step": 3},
                    extra_tensors=METHODS[method].extra_tensors(module))
    return run


@pytest.mark.parametrize("method", list(K))
def test_load_generates_exactly_as_lori_eval(method, tmp_path, capsys):
    run = random_run(tmp_path, method)
    assert main(["eval", str(run), "--out", str(tmp_path / "eval"), "eval.latency_problems=1"]) == 0
    preds = [json.loads(x) for x in next((tmp_path / "eval").glob("predictions-*.jsonl")).read_text().splitlines()]
    student = lori.load(run, device="cpu")  # a run folder: its newest checkpoint
    assert student.method == method and student.latent_steps == K[method] and student.device.type == "cpu"
    assert student.checkpoint == run / "checkpoints" / "step-000003"
    out = student.generate([p["question"] for p in preds])
    assert len(out) == len(preds) == 6
    for g, p in zip(out, preds):
        assert (g.question, g.text, g.steps, g.truncated) == (p["question"], p["generated"], p["steps"], p["truncated"])
        assert g.answer == student.task.extract_answer(g.text) and student.is_correct(g, p["gold"]) == p["correct"]
        assert g.latent_steps == K[method] and g.tokens == g.steps - K[method] - (K[method] > 0) - (not g.truncated)
    # every method exports, and its export generates the same (extra tensors such as a projector travel with it)
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    again = lori.load(tmp_path / "export", device="cpu").generate([p["question"] for p in preds])
    assert [g.text for g in again] == [p["generated"] for p in preds]
    one = lori.load(student.checkpoint, device="cpu").generate(preds[0]["question"], max_new_tokens=2)
    assert isinstance(one, lori.Generated) and one.tokens <= 2  # one string in, one Generated out


def test_load_refuses_a_folder_without_a_student(tmp_path):
    with pytest.raises(LoriError, match="neither a checkpoint folder"):
        lori.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LoriError, match="lori_config.yaml"):
        lori.load(tmp_path)


# ------------------------------------------------------------------------------------ the README, run as written
TOY_DEMO = ["data.chain_steps=2", "data.train_size=300", "data.valid_size=20", "data.test_size=24", *TINY,
            "train.global_batch=16", "train.micro_batch=16", "train.eval_size=8", "eval.latency_problems=2",
            "eval.max_new_tokens=16", "teacher.train.steps=8", "student.train.steps=6",
            "student.curriculum.steps_per_stage=2", "student.curriculum.stages=2", "student.lori.calib_size=100",
            "student.lori.rank=4", "student.lori.latent_steps=2", "student.lori.projector=mlp"]  # a projector file


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """A folder laid out as the repository after ``make demo``: ``out/demo`` from a toy-sized ``lori demo`` (a tiny
    teacher, No-CoT and LoRi student, each evaluated) and the shipped teacher at ``src/lori/assets/chains-teacher``."""
    root = tmp_path_factory.mktemp("repo")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["demo", "--out", str(root / "out" / "demo"), *TOY_DEMO]) == 0
    assets = Path("src") / "lori" / "assets"
    (root / assets).mkdir(parents=True)
    (root / assets / "chains-teacher").symlink_to(REPO / assets / "chains-teacher")
    return root


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def run_python(code: str, cwd: Path) -> str:
    old, buf = os.getcwd(), io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(old)
    return buf.getvalue()


def test_readme_use_it_from_python_runs_as_written(demo_root):
    section = readme_section("Use it from Python")
    code, shown = blocks(section, "python")[0], blocks(section, "text")[0]
    printed = run_python(code, demo_root).splitlines()
    assert [line.split()[0] for line in printed] == ["cot-sft", "lori"]
    assert printed[0] == shown.splitlines()[0]  # the shipped teacher prints exactly what the README shows
    method, answer, latent, tokens, steps = printed[1].split()[:5]
    assert (latent, int(steps)) == ("2", int(tokens) + 2 + 1 + (int(tokens) < 64))  # the toy student has K = 2


def test_readme_publish_a_student_runs_as_written(demo_root, capsys):
    section = readme_section("Publish a student")
    commands = [line for b in blocks(section, "bash") for line in b.splitlines()
                if line.startswith("lori ") and "--push-to-hub" not in line]  # pushing needs the network
    assert commands and all(c.startswith("lori export") for c in commands)
    old = os.getcwd()
    os.chdir(demo_root)
    try:
        for c in commands:
            assert main(shlex.split(c.split("#")[0])[1:]) == 0, capsys.readouterr().err
    finally:
        os.chdir(old)
    printed = run_python(blocks(section, "python")[0], demo_root)
    exported = demo_root / shlex.split(commands[0])[shlex.split(commands[0]).index("--out") + 1]
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: lori\n") and "metrics:\n- accuracy" in card
    assert "## Evaluation" in card and "| lori |" in card  # the demo's evaluation row of that checkpoint
    assert "does not run this student's latent steps" in card and "K = 2" in card
    assert json.loads((exported / "generation_config.json").read_text())["lori_latent_steps"] == 2
    assert "LlamaForCausalLM" in printed


@pytest.mark.parametrize("method", ["no-cot", "codi", "lori"])
def test_model_card_reads_each_methods_paper_and_card_lines(method):
    """The card's method lines come from the Method record (``paper``, ``card``), not from branches on names."""
    from types import SimpleNamespace

    import lori.export
    from lori.export import model_card

    cfg = load_config(None, [f"method={method}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                             "model.intermediate_size=64", "data.digits=[2,2]", "data.train_size=8",
                             "data.valid_size=2", "data.test_size=2", "lori.teacher=/runs/teacher-run", "lori.rank=3"])
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    student = SimpleNamespace(cfg=cfg, method=method, latent_steps=2, lm=tiny_model(cfg.model, tok, 64),
                              task=SimpleNamespace(rule="exact match"))
    card = model_card(student, Path("/runs/x/final"), None, []).splitlines()
    assert f"- **Method**: `{method}` — {METHODS[method].paper}." in card
    own = METHODS[method].card(cfg)
    assert len(own) == (method != "no-cot") and all(line in card for line in own)
    assert any("**LoRi subspace**: rank 3," in line and "`teacher-run`" in line for line in card) == (method == "lori")
    assert any(line.startswith("- **CODI**: alpha") for line in card) == (method == "codi")
    assert 'method == "' not in Path(lori.export.__file__).read_text()


def test_export_round_trip_in_a_fresh_process(demo_root, tmp_path, capsys):
    run = demo_root / "out" / "demo" / "lori"
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--max-shard-size", "40KB"]) == 0
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    for f in ("config.json", "generation_config.json", "tokenizer.json", "lori_config.yaml", "projector.safetensors",
              "lori_student.json", "README.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 2, f
    assert not (out / "trainer_state.pt").exists() and json.loads((out / "config.json").read_text())["model_type"]
    settings = json.loads((out / "lori_student.json").read_text())
    assert (settings["method"], settings["latent_steps"], settings["projector"]) == ("lori", 2, "mlp")
    preds = [json.loads(x) for x in (demo_root / "out" / "demo" / "predictions-lori.jsonl").read_text().splitlines()]
    script = f"""
import json, sys, torch, lori
from transformers import AutoModelForCausalLM
s = lori.load({str(out)!r}, device="cpu")
qs = json.loads(sys.stdin.read())
print(json.dumps([[g.text, g.steps, g.latent_steps] for g in s.generate(qs)]))
a = AutoModelForCausalLM.from_pretrained({str(out)!r})
b = AutoModelForCausalLM.from_pretrained({str(run / 'checkpoints' / 'step-000006')!r})
print(all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps([p["question"] for p in preds]),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    gens, same_weights = done.stdout.splitlines()[-2:]
    assert json.loads(gens) == [[p["generated"], p["steps"], 2] for p in preds]  # the run's own lori eval output
    assert same_weights == "True"
    # an export is replaced only by another export; any other folder is refused
    assert main(["export", str(run), "--out", str(out)]) == 0 and (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(demo_root / "out" / "demo")]) == 2
    assert "is not an earlier export" in capsys.readouterr().err


def test_push_to_hub_offline_is_one_line_before_any_work(demo_root, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "export"
    assert main(["export", str(demo_root / "out" / "demo" / "lori"), "--out", str(out), "--push-to-hub", "me/x"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err and not out.exists()
