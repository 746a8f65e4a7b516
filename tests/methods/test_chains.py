"""The reasoning-depth task (lori.data.chains): golden lines, the arithmetic of every line checked by an independent
evaluator, determinism, disjoint splits, a uniform answer, the knobs' errors; and the latent student's per-example
K (a curriculum batch whose examples have different step counts)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from lori.config import ModelConfig, load_config
from lori.data.chains import generate, intermediate_values
from lori.data.schema import Example
from lori.data.splits import load_split
from lori.errors import ConfigError, LoriError
from lori.methods.lori import method as lori_method
from lori.models.build import tiny_model
from lori.models.latent_student import LatentStudent, Projector
from lori.tasks import TASKS
from lori.models.loading import builtin_tokenizer

GOLDEN = [
    "a = 7 ; b = a * 7 ; c = b + 0 ; d = c - 9 ; ? d||<< b = 9 >> << c = 9 >> << d = 0 >> #### 0",
    "a = 7 ; b = a - 5 ; c = b - 8 ; d = c + 1 ; ? d||<< b = 2 >> << c = 4 >> << d = 5 >> #### 5",
]
GOLDEN_EXPRESSION = ("a = 0 ; b = a + 5 ; c = b - a ; d = c * 9 ; e = d + 7 ; ? e||<< b = 0 + 5 = 5 >> "
                     "<< c = 5 - 0 = 5 >> << d = 5 * 9 = 5 >> << e = 5 + 7 = 2 >> #### 2")


def evaluate_question(question: str, m: int) -> tuple[list[int], int]:
    """An independent reading of a chain: (the value of each defined variable in order, the asked one's value)."""
    *defs, ask = [p.strip() for p in question.split(";")]
    env: dict[str, int] = {}
    order = []
    for d in defs:
        name, expr = (x.strip() for x in d.split("="))
        tokens = expr.split()
        if len(tokens) == 1:
            env[name] = int(tokens[0]) % m
        else:
            x, op, y = tokens
            xv = env[x]
            yv = env[y] if y in env else int(y)
            env[name] = {"+": xv + yv, "-": xv - yv, "*": xv * yv}[op] % m
            order.append(env[name])
    assert ask.startswith("? ")
    return order, env[ask[2:]]


def test_golden_lines():
    assert [e.to_icot_line() for e in generate(2, 0, steps=3)] == GOLDEN
    assert generate(1, 0, steps=4, back_ref=1.0, rationale="expression")[0].to_icot_line() == GOLDEN_EXPRESSION


@pytest.mark.parametrize("steps,m,ops,back_ref,form", [(1, 10, "+-*", 0.0, "value"), (6, 10, "+-*", 0.5, "value"),
                                                         (8, 11, "+-", 1.0, "expression"), (16, 7, "*", 0.3, "value")])
def test_every_line_is_right(steps, m, ops, back_ref, form):
    for ex in generate(150 if steps == 1 else 300, 3, steps=steps, modulus=m, ops=ops, back_ref=back_ref, rationale=form):
        values, answer = evaluate_question(ex.question, m)
        assert len(ex.steps) == steps and intermediate_values(ex) == values
        assert ex.answer == str(answer) and values[-1] == answer
        ops_used = [d.split()[3] for d in ex.question.split(";")[1:-1]]
        assert ops_used[-1] in "+-" and set(ops_used[:-1]) <= set(ops)
        assert TASKS["chains"].is_correct(f"{ex.rationale} #### {ex.answer}", ex.answer)


def test_back_references_reach_past_the_previous_variable():
    qs = [ex.question for ex in generate(400, 0, steps=6, ops="+-", back_ref=1.0)]
    # every step but the first and the last uses an earlier variable; some reach back more than one step
    far = sum(" c = b + a" in q or " c = b - a" in q or " e = d + a" in q for q in qs)
    assert far > 50
    none = [ex.question for ex in generate(200, 0, steps=6, back_ref=0.0)]
    assert all(d.split()[-1].isdigit() for q in none for d in q.split(";")[1:-1])


def test_deterministic_distinct_and_excluding():
    a = generate(500, 7, steps=4)
    assert a == generate(500, 7, steps=4)
    assert a != generate(500, 8, steps=4)
    assert len({e.question for e in a}) == 500
    b = generate(500, 9, steps=4, exclude=a)
    assert not {e.question for e in a} & {e.question for e in b}


def test_answer_is_uniform():
    for m in (10, 7):
        counts = Counter(e.answer for e in generate(6000, 1, steps=5, modulus=m, back_ref=0.5))
        assert set(counts) == {str(v) for v in range(m)}
        expected = 6000 / m
        chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
        assert chi2 < 30  # chi-square with m - 1 <= 9 degrees of freedom: p < 0.001 beyond ~28


def test_generated_splits_are_disjoint():
    cfg = load_config(None, ["data.task=chains", "data.chain_steps=3", "data.train_size=2000", "data.valid_size=100",
                             "data.test_size=100"]).data
    train, valid, test = (load_split(cfg, s) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (2000, 100, 100)
    qs = [{e.question for e in s} for s in (train, valid, test)]
    assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])


@pytest.mark.parametrize("override,words", [("data.chain_steps=0", "chain_steps"), ("data.chain_steps=26", "1..25"),
                                            ("data.chain_modulus=1", "chain_modulus"),
                                            ("data.chain_ops=+/", "chain_ops"),
                                            ("data.chain_back_ref=1.5", "chain_back_ref"),
                                            ("data.chain_rationale=full", "chain_rationale")])
def test_bad_knobs_name_the_field(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(None, ["data.task=chains", override])


def test_too_small_a_space_is_an_error():
    with pytest.raises(LoriError, match="cannot generate"):
        generate(400, 0, steps=1, modulus=3, ops="+")


# ----------------------------------------------------------------------------------------------------------------
# Per-example K in a curriculum batch


def _student(n_steps=(1, 3)):
    exs = [Example("a = 1 ; b = a + 2 ; ? b", ("<< b = 3 >>",), "3", "t:1"),
           Example("a = 1 ; b = a + 2 ; c = b * 3 ; d = c - 1 ; ? d", ("<< b = 3 >>", "<< c = 9 >>", "<< d = 8 >>"),
                   "8", "t:2")]
    tok = builtin_tokenizer(exs)
    torch.manual_seed(0)
    lm = tiny_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 128)
    cfg = load_config(None, ["method=lori", "curriculum.stages=3", "curriculum.thoughts_per_step=2"])
    student = lori_method.METHOD.wrap(lm, tok, cfg).eval()
    return student, tok, exs, cfg


def test_curriculum_batch_gives_every_example_its_own_thoughts():
    student, tok, exs, cfg = _student()
    items = [lori_method.METHOD.render(ex, tok, cfg, stage=3) | {"index": i} for i, ex in enumerate(exs)]
    assert [it["latent_steps"] for it in items] == [2, 6]  # min(stage, steps) x c
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    with torch.no_grad():
        together = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"],
                           latent_steps=batch["latent_steps"])
        for i, it in enumerate(items):
            one = lori_method.METHOD.collate([it], tok.pad_token_id)
            alone = student(one["prompt_ids"], one["prompt_mask"], one["suffix_ids"], one["suffix_mask"],
                            latent_steps=it["latent_steps"])
            S = one["suffix_ids"].shape[1]
            torch.testing.assert_close(together.logits[i, :S], alone.logits[0], atol=1e-5, rtol=1e-4)
            k = it["latent_steps"]
            torch.testing.assert_close(together.latent_states[i, :, :k], alone.latent_states[0], atol=1e-5,
                                       rtol=1e-4)


def test_render_all_counts_latent_positions(tmp_path):
    from lori.training.loop import render_all

    student, tok, exs, cfg = _student()
    from lori.methods import METHODS

    longest = max(sum(len(v) for k, v in lori_method.METHOD.render(ex, tok, cfg, 4).items() if k.endswith("_ids"))
                  for ex in exs)
    tight = load_config(None, ["method=lori", f"data.max_length={longest + cfg.lori.latent_steps - 1}"])
    with pytest.raises(LoriError, match="max_length"):
        render_all(METHODS["lori"], exs, tok, tight, stage=1)
    ok = load_config(None, ["method=lori", f"data.max_length={longest + cfg.lori.latent_steps}"])
    assert len(render_all(METHODS["lori"], exs, tok, ok, stage=1)) == 2


def test_pause_projector_ignores_the_fed_back_state():
    p = Projector(8, "pause")
    with torch.no_grad():
        p.pause.copy_(torch.arange(8.0))
    a, b = p(torch.randn(3, 1, 8)), p(torch.randn(3, 1, 8))
    assert torch.equal(a, b) and torch.equal(a[0, 0], torch.arange(8.0))
    assert math.isclose(sum(x.numel() for x in p.parameters()), 8)


def test_missing_projector_is_refused(tmp_path):
    student, tok, exs, cfg = _student()
    with pytest.raises(LoriError, match="projector"):
        student.load_projector(tmp_path)
    ident = LatentStudent(student.lm, 2, "identity", student.bot_id, student.eot_id)
    ident.load_projector(tmp_path)  # nothing to load


# ----------------------------------------------------------------------------------------------------------------
# Thought position stride and the loss-driven curriculum


@pytest.mark.parametrize("offset,stride", [(0, 1), (2, 4)])
def test_thought_positions_cached_equals_uncached_and_generation(offset, stride):
    from lori.evaluation.generate import greedy_generate
    from lori.models.latent_student import thought_positions

    t, start = thought_positions(torch.tensor([[9], [9]]), torch.tensor([3, 0]), 3, offset=2, stride=5)
    assert t.tolist() == [[12, 17, 22], [12, 17, 22]] and start.tolist() == [[23], [10]]
    student, tok, exs, cfg = _student()
    student.position_offset, student.position_stride = offset, stride
    items = [lori_method.METHOD.render(ex, tok, cfg, stage=4) | {"index": i} for i, ex in enumerate(exs)]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
    with torch.no_grad():
        cached = student(*args, latent_steps=batch["latent_steps"])
        K, mask = student._latent_mask(batch["latent_steps"], batch["prompt_ids"])
        plain = student._forward_without_cache(*args, K, mask)
    torch.testing.assert_close(cached.logits, plain.logits, atol=1e-5, rtol=1e-4)
    # greedy generation runs the same positions: its first answer token is the teacher-forced argmax after <eot>
    gen = greedy_generate(student.lm, [it["prompt_ids"] for it in items], eos_id=tok.eos_token_id,
                          pad_id=tok.pad_token_id, max_new_tokens=1, **student.generation_kwargs())
    first = [int(cached.logits[i, 0].argmax()) for i in range(2)]
    assert gen.tokens == [[] if t == tok.eos_token_id else [t] for t in first]
    if stride > 1:
        student.position_offset, student.position_stride = 0, 1
        with torch.no_grad():
            other = student(*args, latent_steps=batch["latent_steps"])
        assert not torch.allclose(other.logits, cached.logits)


def test_loss_driven_curriculum_advances_and_resumes_exactly(tmp_path):
    import json

    from lori.training.loop import train

    base = ["method=coconut", "data.task=chains", "data.chain_steps=3", "data.train_size=200", "data.valid_size=8",
            "data.test_size=8", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
            "model.intermediate_size=64", "train.steps=14", "train.global_batch=8", "train.micro_batch=8",
            "train.log_every=1", "train.eval_every=0", "train.eval_size=4", "eval.max_new_tokens=8",
            "curriculum.stages=3", "curriculum.steps_per_stage=5", "curriculum.advance_window=2",
            "curriculum.thought_stride=5", "coconut.latent_steps=3"]

    def stages(run):
        return [r["stage"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    # a threshold every stage meets: each stage ends after advance_window steps; the final stage takes the rest
    train(load_config(None, [*base, f"out_dir={tmp_path / 'fast'}", "curriculum.advance_below=1000"]))
    assert stages(tmp_path / "fast") == [1, 1, 2, 2, 3, 3] + [4] * 8
    # a threshold no stage meets: the clock (steps_per_stage) decides, as without advance_below
    train(load_config(None, [*base, f"out_dir={tmp_path / 'slow'}", "curriculum.advance_below=1e-9"]))
    assert stages(tmp_path / "slow") == [1] * 5 + [2] * 5 + [3] * 4
    # stopped mid-stage and resumed: the same stages and losses as the uninterrupted run
    cut = [*base, f"out_dir={tmp_path / 'cut'}", "curriculum.advance_below=1000"]
    train(load_config(None, [*cut, "train.stop_at=3"]))
    train(load_config(None, cut))
    full = [json.loads(x) for x in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["loss"]) for r in full if "loss" in r] == \
        [(r["stage"], r["loss"]) for r in resumed if "loss" in r]


def test_step_value_probe_counts_each_step_and_reads_the_right_states():
    from lori.analysis.measure import step_value_probe
    from lori.data.multiplication import make_example

    student, tok, exs, cfg = _student()
    cfg.lori.latent_steps, cfg.curriculum.thoughts_per_step = 3, 1
    student.latent_steps = 3
    rows = step_value_probe(student, tok, cfg, exs, batch_size=1)
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["n"] for r in rows] == [2, 1, 1]
    assert all(0 <= r["share"] <= 1 for r in rows)
    # an LM head that says "3" (step 1's value in both problems) for every state: step 1 is then right for both
    three, V = tok.convert_tokens_to_ids("3"), len(tok)

    class SaysThree(torch.nn.Module):
        weight = torch.zeros(1)

        def forward(self, h):
            return torch.nn.functional.one_hot(torch.full(h.shape[:-1], three), V).float()

    student.lm.get_output_embeddings = lambda: SaysThree()
    rows = step_value_probe(student, tok, cfg, exs, batch_size=2)
    assert rows[0]["share"] == 1.0 and rows[1]["share"] == 0.0  # step 2 writes 9, not 3
    assert step_value_probe(student, tok, cfg, [make_example("1 2", "3 4")], batch_size=1) is None
