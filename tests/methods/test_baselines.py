"""The baselines iCoT-SI, Coconut and CODI on tiny models: losses (finite gradients, one golden value each),
curriculum renderings, CODI's distillation term, micro-batch invariance, and a train -> `lori eval` smoke run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lori.cli import main
from lori.config import ModelConfig, load_config
from lori.data import generate_multiplication
from lori.errors import ConfigError
from lori.losses import hidden_distance
from lori.methods import METHODS, coconut, codi, icot_si, no_cot
from lori.methods import thoughts as latent_family
from lori.methods.lori import method as lori_method
from lori.methods.common import step_norm
from lori.models.build import tiny_model
from lori.models.latent_student import PROJECTOR_FILE
from lori.training.checkpoint import list_checkpoints
from lori.training.loop import train
from lori.models.loading import builtin_tokenizer

TINY_MODEL = ModelConfig(arch="llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def setup(method: str, *overrides: str, n: int = 8):
    """A seeded tiny LLaMA wrapped by ``method``, its tokenizer, 3x3 examples, the config and the method's state."""
    examples = generate_multiplication(3, 3, n, seed=1)
    tok = builtin_tokenizer(examples)
    cfg = load_config(None, [f"method={method}", *overrides])
    torch.manual_seed(0)
    lm = tiny_model(TINY_MODEL, tok, 256)
    module = METHODS[method].wrap(lm, tok, cfg)
    # The default init (std 0.02) gives nearly uniform predictions (CE ~ log V whatever the loss); larger weights
    # make the golden values sensitive to what is supervised and how it is normalised.
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    state = METHODS[method].setup_training(module, cfg, examples)
    return module, tok, examples, cfg, state


def batch_of(method: str, examples, tok, cfg, stage: int):
    m = METHODS[method]
    items = [m.render(ex, tok, cfg, stage) | {"index": i} for i, ex in enumerate(examples)]
    return items, m.collate(items, tok.pad_token_id), step_norm(items, list(range(len(items))))


# Golden values: produced once by running this code (torch 2.13 CPU, transformers 5.23, float32) with
#   OMP_NUM_THREADS=1 .venv/bin/python -c "from tests.test_baselines import *; print(loss_of('codi')[2:])"
# for each method, and hard-coded; they must change whenever a loss definition, a rendering or the tiny-model
# initialisation changes. iCoT-SI at stage 1 of 2 (5 tokens + offset removed), Coconut at stage 1 of 2 (2 thoughts
# + remaining steps), CODI as published (no curriculum, K = 3 here).
CASES = {
    # method: (overrides, stage, golden loss, golden parts)
    "icot-si": (["curriculum.stages=2", "curriculum.remove_per_stage=5"], 1, 4.4191, {"ce": 4.4191}),
    "coconut": (["curriculum.stages=2", "curriculum.thoughts_per_step=2"], 1, 4.3166, {"ce": 4.3166}),
    "codi": (["codi.latent_steps=3"], 1, 8.3514, {"ce": 3.9610, "ce_teacher": 3.9562, "distill": 0.4341}),
}


def loss_of(method: str):
    overrides, stage, _, _ = CASES[method]
    module, tok, examples, cfg, state = setup(method, *overrides)
    _, batch, norm = batch_of(method, examples, tok, cfg, stage)
    loss, parts = METHODS[method].loss(module, batch, norm, state)
    return module, state, loss, parts


@pytest.mark.parametrize("method", list(CASES))
def test_loss_runs_backward_with_finite_gradients_and_golden_value(method):
    module, state, loss, parts = loss_of(method)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    if method == "codi":
        assert set(parts) == {"ce", "ce_teacher", "distill"}
        assert all(p.grad is not None for p in module.projector.parameters())
        cc = state.cfg
        expected = cc.alpha * parts["ce_teacher"] + cc.beta * parts["ce"] + cc.gamma * parts["distill"]
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    else:
        assert set(parts) == {"ce"} and float(loss.detach()) == float(parts["ce"])  # cross-entropy only
    assert float(loss.detach()) == pytest.approx(CASES[method][2], abs=1e-4)
    assert {k: round(float(v), 4) for k, v in parts.items()} == pytest.approx(CASES[method][3], abs=1e-4)


# ------------------------------------------------------------------------------------------------ iCoT-SI


def test_icot_si_removes_tokens_from_the_left_per_stage():
    ex = generate_multiplication(3, 3, 1, seed=3)[0]
    tok = builtin_tokenizer([ex])
    cfg = load_config(None, ["method=icot-si", "curriculum.stages=3", "curriculum.remove_per_stage=4",
                             "curriculum.steps_per_stage=10"])
    prompt = tok.encode(f"{ex.question} ||", add_special_tokens=False)
    prompt = [tok.bos_token_id] + prompt if tok.bos_token_id is not None else prompt
    rationale = tok.encode(" " + ex.rationale, add_special_tokens=False)
    answer = tok.encode(f" #### {ex.answer}", add_special_tokens=False) + [tok.eos_token_id]
    assert len(rationale) > 3 * 4 + 3
    for stage in (1, 2, 3):
        item = icot_si.render(ex, tok, cfg, stage)
        offset = icot_si.removal_offset(ex, cfg, stage)
        n = stage * 4 + offset
        assert 0 <= offset <= 3  # lambda = 4: P(o >= 4) = e^-16
        assert item["input_ids"] == prompt + rationale[n:] + answer
        assert item["labels"] == [-100] * len(prompt) + rationale[n:] + answer
        assert item["n_target"] == len(rationale) - n + len(answer)
        assert icot_si.render(ex, tok, cfg, stage) == item  # deterministic: resume renders the same
    # The final stage is exactly the No-CoT rendering.
    assert cfg.curriculum.is_final(4)
    assert icot_si.render(ex, tok, cfg, 4) == no_cot.render(ex, tok, cfg, 4)
    # Without smoothing the count is exactly stage x remove_per_stage, capped at the rationale length.
    plain = load_config(None, ["method=icot-si", "curriculum.stages=9", "curriculum.remove_per_stage=4",
                               "curriculum.removal_smoothing_lambda=null"])
    for stage in range(1, 10):
        item = icot_si.render(ex, tok, plain, stage)
        assert item["input_ids"] == prompt + rationale[min(stage * 4, len(rationale)):] + answer


def test_icot_si_offsets_follow_the_removal_smoothing_distribution():
    """P(o) = (1 - e^-lambda) e^(-lambda o): the share of o = 0 and the mean match (a few thousand draws)."""
    examples = generate_multiplication(4, 4, 3000, seed=5)
    for lam in (4.0, 0.5):
        cfg = load_config(None, ["method=icot-si", "curriculum.stages=2", f"curriculum.removal_smoothing_lambda={lam}"])
        o = [icot_si.removal_offset(ex, cfg, 1) for ex in examples]
        assert min(o) >= 0
        p0 = 1 - math.exp(-lam)
        mean = math.exp(-lam) / (1 - math.exp(-lam))
        assert sum(x == 0 for x in o) / len(o) == pytest.approx(p0, abs=0.03)
        assert sum(o) / len(o) == pytest.approx(mean, abs=0.1 + 0.1 * mean)
    # Draws depend on the seed and the stage, not only on the example.
    cfg = load_config(None, ["method=icot-si", "curriculum.stages=2", "curriculum.removal_smoothing_lambda=0.5"])
    other = load_config(None, ["method=icot-si", "curriculum.stages=2", "curriculum.removal_smoothing_lambda=0.5",
                               "train.seed=1"])
    a = [icot_si.removal_offset(ex, cfg, 1) for ex in examples[:200]]
    assert a != [icot_si.removal_offset(ex, other, 1) for ex in examples[:200]]
    assert a != [icot_si.removal_offset(ex, cfg, 2) for ex in examples[:200]]


# ------------------------------------------------------------------------------------------------ Coconut


def test_coconut_renders_exactly_as_lori_and_trains_with_ce_only():
    ex = generate_multiplication(3, 3, 1, seed=3)[0]
    tok = builtin_tokenizer([ex])
    common = ["curriculum.stages=2", "curriculum.thoughts_per_step=2", "curriculum.steps_per_stage=10"]
    cfg = load_config(None, ["method=coconut", *common])
    assert coconut.final_thoughts(cfg) == 4  # stages x c, Coconut's pad_latent_to_max
    as_lori = load_config(None, ["method=lori", *common, "lori.latent_steps=4"])
    for stage, thoughts in [(1, 2), (2, 4), (3, 4)]:
        item = coconut.METHOD.render(ex, tok, cfg, stage)
        assert item == lori_method.METHOD.render(ex, tok, as_lori, stage)
        assert item["latent_steps"] == thoughts
    assert coconut.METHOD.render(ex, tok, load_config(None, ["method=coconut", *common, "coconut.latent_steps=7"]),
                          3)["latent_steps"] == 7
    # The student: identity projector by default (nothing extra in the checkpoint), CE only.
    module, tok, examples, cfg, state = setup("coconut", *common)
    assert module.projector.kind == "identity" and METHODS["coconut"].extra_tensors(module) is None
    assert module.latent_steps == 4
    _, batch, norm = batch_of("coconut", examples, tok, cfg, 1)
    loss, parts = coconut.loss(module, batch, norm, state)
    _, ce = latent_family.student_ce(module, batch, norm)
    assert float(loss.detach()) == float(ce.detach()) and set(parts) == {"ce"}


@pytest.mark.parametrize("name,overrides,K,projector", [
    ("lori", ["lori.latent_steps=5", "lori.projector=soft"], 5, "soft"),
    ("coconut", ["curriculum.stages=3", "curriculum.thoughts_per_step=2"], 6, "identity"),
    ("codi", ["codi.latent_steps=4", "codi.projector=mlp"], 4, "mlp"),
])
def test_a_latent_method_chooses_k_and_its_projector_once(name, overrides, K, projector):
    """The final stage renders the K the student runs, with the projector its config section names: both come from
    the method's one Thoughts, which the commands (export, analyze) read too."""
    ex = generate_multiplication(3, 3, 1, seed=3)[0]
    tok = builtin_tokenizer([ex])
    cfg = load_config(None, [f"method={name}", *overrides])
    m = METHODS[name]
    assert (m.thoughts.latent_steps(cfg), m.thoughts.projector(cfg)) == (K, projector)
    assert m.render(ex, tok, cfg, cfg.curriculum.stages + 1)["latent_steps"] == K
    torch.manual_seed(0)
    student = m.wrap(tiny_model(TINY_MODEL, tok, 256), tok, cfg)
    assert (student.latent_steps, student.projector.kind) == (K, projector)
    assert student.generation_kwargs()["latent_steps"] == K


def test_explicit_methods_declare_no_thoughts_and_only_lori_a_teacher_cache():
    assert {n for n, m in METHODS.items() if m.thoughts is None} == {"no-cot", "cot-sft", "icot-si", "aux-sum"}
    assert {n for n, m in METHODS.items() if m.teacher_cache} == {"lori"}
    assert {n for n, m in METHODS.items() if not m.curriculum} == {"no-cot", "cot-sft", "aux-sum"}


def test_configs_without_a_curriculum_are_refused_where_meaningless():
    with pytest.raises(ConfigError, match="icot-si"):
        load_config(None, ["method=icot-si"])
    with pytest.raises(ConfigError, match="coconut.latent_steps"):
        load_config(None, ["method=coconut"])
    assert load_config(None, ["method=coconut", "coconut.latent_steps=3"]).coconut.latent_steps == 3
    with pytest.raises(ConfigError, match="removal_smoothing_lambda"):
        load_config(None, ["curriculum.removal_smoothing_lambda=0"])
    with pytest.raises(ConfigError, match="codi.gamma"):
        load_config(None, ["codi.gamma=-1"])


# ------------------------------------------------------------------------------------------------ CODI


def test_hidden_distance_is_zero_on_equal_states_and_never_reaches_the_teacher():
    torch.manual_seed(0)
    s = torch.randn(4, 3, 16, requires_grad=True)
    for kind in ("smooth_l1", "l1"):
        assert float(hidden_distance(s, s.detach().clone(), kind=kind).detach()) == 0.0
    t = (s.detach() + 0.5 * torch.randn(4, 3, 16)).requires_grad_(True)
    d = hidden_distance(s, t, kind="l1")
    assert float(d.detach()) > 0
    gs, gt = torch.autograd.grad(d, (s, t), allow_unused=True)
    assert gt is None and gs is not None and gs.abs().sum() > 0
    # By hand: mean over d of |s - t| / std_d(t), mean over layers, mean over examples.
    ref = ((s - t).abs().mean(-1) / t.std(-1)).mean()
    torch.testing.assert_close(d, ref)
    # Summing micro-batches with the global example count gives the full-batch value.
    full = hidden_distance(s, t, num_examples=4)
    halves = hidden_distance(s[:2], t[:2], num_examples=4) + hidden_distance(s[2:], t[2:], num_examples=4)
    torch.testing.assert_close(full, halves)


def test_codi_renders_teacher_and_student_with_the_anchor_on_the_last_marker():
    module, tok, examples, cfg, state = setup("codi")
    marker = tok.convert_tokens_to_ids("####")
    for ex in examples[:3]:
        item = codi.render(ex, tok, cfg, 1)
        teacher = item["teacher"]
        cot = METHODS["cot-sft"].render(ex, tok, cfg, 1)
        assert teacher["input_ids"] == cot["input_ids"] and teacher["labels"] == cot["labels"]
        assert item["n_teacher"] == cot["n_target"]
        assert teacher["input_ids"][teacher["anchor"]] == marker
        assert item["suffix_ids"][item["anchor"]] == marker
        assert teacher["input_ids"][teacher["anchor"] + 1:] == item["suffix_ids"][item["anchor"] + 1:]  # same answer
        assert item["latent_steps"] == 6 and item["prompt_ids"][-1] == tok.convert_tokens_to_ids("<bot>")
    assert module.projector.kind == "codi" and set(METHODS["codi"].extra_tensors(module)) == {PROJECTOR_FILE}


def test_codi_distillation_gradient_flows_through_the_student_only():
    """With alpha = beta = 0 the loss is the distillation term; its gradient equals that of the same distance
    against teacher states computed without gradient: the teacher pass contributes nothing."""
    module, tok, examples, cfg, state = setup("codi", "codi.alpha=0", "codi.beta=0", "codi.latent_steps=2", n=4)
    _, batch, norm = batch_of("codi", examples, tok, cfg, 1)
    loss, parts = codi.loss(module, batch, norm, state)
    assert float(loss.detach()) == float(parts["distill"]) > 0
    params = [p for p in module.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        t = module.lm(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                      output_hidden_states=True)
    rows = torch.arange(4)
    h_t = torch.stack([h[rows, batch["teacher_anchor"]] for h in t.hidden_states], dim=1)
    out, _ = latent_family.student_ce(module, batch, norm)
    h_s = torch.stack([h[rows, batch["anchor"]] for h in out.suffix_states], dim=1)
    ref = hidden_distance(h_s, h_t, num_examples=4)
    torch.testing.assert_close(loss, ref)
    g2 = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_codi_loss_is_invariant_to_micro_batching():
    """Teacher tokens, student tokens and examples are all normalised by step-global counts."""
    module, tok, examples, cfg, state = setup("codi", "codi.latent_steps=2")
    items, batch, norm = batch_of("codi", examples, tok, cfg, 1)
    assert norm.counts["teacher"] == sum(it["n_teacher"] for it in items) and norm.tokens < norm.counts["teacher"]
    full, _ = codi.loss(module, batch, norm, state)
    halves = sum(codi.loss(module, codi.collate(part, tok.pad_token_id), norm, state)[0]
                 for part in (items[:3], items[3:]))
    torch.testing.assert_close(full, halves, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ smoke runs

SMOKE = [
    "data.digits=[2,2]", "data.train_size=64", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.steps=6", "train.global_batch=8", "train.micro_batch=4", "train.log_every=2", "train.eval_every=0",
    "train.eval_size=4", "train.save_every=100", "eval.max_new_tokens=16",
    "curriculum.stages=1", "curriculum.steps_per_stage=3",
]


@pytest.mark.parametrize("method", ["icot-si", "coconut", "codi"])
def test_train_smoke_and_lori_eval(method, tmp_path, capsys):
    run = tmp_path / "run"
    extra = {"codi": ["codi.latent_steps=2"], "coconut": ["curriculum.thoughts_per_step=2"], "icot-si": []}[method]
    final = train(load_config(None, [*SMOKE, f"method={method}", f"out_dir={run}", *extra]))
    assert list_checkpoints(run) == [final] and final.name == "step-000006"
    assert (final / PROJECTOR_FILE).is_file() == (method == "codi")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [(r["step"], r["stage"]) for r in losses] == [(2, 1), (4, 2), (6, 2)]  # stage 2 = final
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["ce"]) for r in losses)
    if method == "codi":
        assert all(math.isfinite(r["ce_teacher"]) and math.isfinite(r["distill"]) for r in losses)
    out = tmp_path / "eval"
    capsys.readouterr()
    rc = main(["eval", str(run), "--out", str(out), "eval.limit=4", "eval.latency_problems=1"])
    assert rc == 0, capsys.readouterr().err
    (row,) = json.loads((out / "results.json").read_text())["results"]
    assert row["method"] == method and 0 <= row["accuracy"] <= 1 and row["mean_generated_tokens"] > 0
    if method != "icot-si":  # latent students: K thoughts + <eot> before any answer token
        K = {"coconut": 2, "codi": 2}[method]
        assert row["mean_generated_tokens"] >= K + 1
