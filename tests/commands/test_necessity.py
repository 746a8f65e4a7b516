"""Latent-necessity checks (lori.analysis.necessity): the thought hook of the latent loop feeds what it returns,
the interventions' mechanics (zeros reach the model, swapping twice restores, a per-step swap touches one thought),
the answer a per-step change implies, and `lori analyze --student` end to end on a tiny trained chains student."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from lori.analysis.necessity import answers, donors, from_thoughts, recorder
from lori.cli import main
from lori.config import load_config, save_config
from lori.data.chains import answer_with_step, generate, intermediate_values
from lori.data.splits import load_split
from lori.evaluation.generate import greedy_generate
from lori.methods import METHODS
from lori.models.checkpoint_folders import checkpoint_config
from lori.models.loading import open_model
from lori.training.checkpoint import CONFIG_FILE
from lori.training.loop import train

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.task=chains", "data.chain_steps=3", "data.train_size=40", "data.valid_size=8", "data.test_size=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, save_random_teacher):
    """A random tiny chains teacher and a Coconut student trained from it for a few steps (K = 3, c = 1)."""
    root = tmp_path_factory.mktemp("necessity")
    cfg = load_config(None, ["method=cot-sft", *TINY, *DATA])
    teacher = save_random_teacher(root / "teacher", cfg.model, load_split(cfg.data, "train"))
    save_config(cfg, teacher / CONFIG_FILE)
    with contextlib.redirect_stdout(io.StringIO()):
        student = train(load_config(None, [
            "method=coconut", *TINY, *DATA, f"model.init_from={teacher}", f"out_dir={root / 'student'}",
            "train.steps=4", "train.global_batch=8", "train.micro_batch=8", "train.eval_every=0", "train.log_every=2",
            "train.save_every=100", "curriculum.stages=3", "curriculum.steps_per_stage=1",
            "eval.max_new_tokens=8"]))
    scfg = checkpoint_config(student, [])
    model, tok = open_model(student, scfg, METHODS["coconut"].thoughts.wrap)
    return teacher, student, model.eval(), tok, scfg, load_split(scfg.data, "train")[:10]


def fed_thoughts(student, tok, prompts, replace=None):
    """The inputs_embeds the language model receives at each latent step (captured by a forward pre-hook)."""
    seen = []
    hook = student.lm.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["inputs_embeds"].clone()) if kwargs.get("inputs_embeds")
        is not None else None, with_kwargs=True)
    try:
        g = greedy_generate(student.lm, prompts, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                            max_new_tokens=4, **student.generation_kwargs(),
                            replace_thoughts=replace)
    finally:
        hook.remove()
    return torch.cat(seen, dim=1), g  # [B, K, d]


def test_the_hook_feeds_what_it_returns(trained):
    _, _, student, tok, cfg, examples = trained
    prompts = [METHODS["coconut"].prompt(ex, tok, cfg) for ex in examples]
    own, g0 = fed_thoughts(student, tok, prompts)
    same, g1 = fed_thoughts(student, tok, prompts, lambda j, x: x)
    assert torch.equal(own, same) and g0 == g1  # the identity hook changes nothing
    zero, _ = fed_thoughts(student, tok, prompts, lambda j, x: torch.zeros_like(x))
    assert own.abs().sum() > 0 and torch.equal(zero, torch.zeros_like(zero))  # zeros reach the model
    # the thoughts recorded are the ones fed, and feeding them back reproduces the student's answers
    store = {}
    texts = answers(student, tok, cfg, prompts, 10, recorder(store, len(prompts), 3))
    assert torch.equal(store["thoughts"], own)
    assert answers(student, tok, cfg, prompts, 10, from_thoughts(store["thoughts"], list(range(10)))) == texts


def test_swapping_twice_restores_and_a_per_step_swap_touches_one_thought(trained):
    _, _, student, tok, cfg, examples = trained
    prompts = [METHODS["coconut"].prompt(ex, tok, cfg) for ex in examples]
    own, _ = fed_thoughts(student, tok, prompts)
    donor, partner = donors(10, 0)
    assert all(donor[i] != i for i in range(10)) and sorted(donor) == list(range(10))
    assert all(partner[partner[i]] == i and partner[i] != i for i in range(10))
    swapped, _ = fed_thoughts(student, tok, prompts, lambda j, x: from_thoughts(own, partner)(torch.arange(10), j, x))
    assert torch.equal(swapped, own[partner])
    twice = [partner[p] for p in partner]
    back, _ = fed_thoughts(student, tok, prompts, lambda j, x: from_thoughts(own, twice)(torch.arange(10), j, x))
    assert torch.equal(back, own)
    step2, _ = fed_thoughts(student, tok, prompts, lambda j, x: from_thoughts(own, donor, 1)(torch.arange(10), j, x))
    assert torch.equal(step2[:, 0], own[:, 0]) and torch.equal(step2[:, 1], own[donor, 1])
    assert not torch.equal(step2[:, 2], own[:, 2])  # the later thought is the student's, computed from the new one


def test_answer_with_step_recomputes_the_later_steps():
    q = "a = 3 ; b = a + 5 ; c = b * 3 ; d = c - a ; ? d"
    assert answer_with_step(q, 1, 8, 10) == (8 * 3 - 3) % 10  # b's own value: the real answer
    assert answer_with_step(q, 1, 0, 10) == (0 * 3 - 3) % 10
    assert answer_with_step(q, 3, 4, 10) == 4
    for ex in generate(50, 1, steps=5, back_ref=0.5):
        for k, v in enumerate(intermediate_values(ex), 1):
            assert str(answer_with_step(ex.question, k, v, 10)) == ex.answer


def test_lori_analyze_reports_the_necessity_checks(trained, tmp_path, capsys):
    teacher, student, *_ = trained
    out = tmp_path / "analysis"
    assert main(["analyze", str(teacher), "--student", str(student), "--n", "12", "--out", str(out),
                 "--batch-size", "5", "--probe-examples", "1"]) == 0, capsys.readouterr().err
    nc = json.loads((out / "analysis.json").read_text())["student_analysis"]["necessity"]
    assert nc["n"] == 12 and nc["latent_steps"] == 3
    for k in ("clean", "zeroed", "noise", "shuffled", "swapped"):
        assert 0 <= nc[k]["accuracy"] <= 1 and 0 <= nc[k]["changed"] <= 1
    assert nc["clean"]["changed"] == 0 and nc["swapped"]["pairs"] == 6
    assert [r["step"] for r in nc["per_step"]] == [1, 2, 3] and all(r["implied"] is not None for r in nc["per_step"])
    report = (out / "report.md").read_text()
    assert "Are the thoughts necessary?" in report and "| noise of the same norm |" in report
