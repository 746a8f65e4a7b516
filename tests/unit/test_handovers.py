"""Step hand-overs and thought positions from the text: each step's result located through the tokenizer's character
offsets (lori.data.render.step_spans) on the built-in word tokenizer, a GPT-2-style byte-level BPE, the digit-wise BPE
of ``model.tokenizer: bpe`` and SmolLM2's real tokenizer, on chains, 4x4 multiplication and GSM8k-Aug; aligned
thought positions (curriculum.thought_positions) and which thought is anchored to which step."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from conftest import DATA, gpt2_style_bpe
from lori.config import load_config
from lori.data import read_examples
from lori.data.chains import generate
from lori.data.render import hands_over, result_span, segments, step_spans
from lori.errors import ConfigError
from lori.methods.lori.method import step_targets
from lori.methods.thoughts import aligned_positions, render_latent
from lori.models.hub import alias_source
from lori.models.loading import builtin_tokenizer
from lori.models.tokenizer import build_bpe_tokenizer

AUG_VALID = DATA / "gsm8k-aug" / "valid.txt"
MULT = DATA / "multiplication" / "4x4" / "test.txt"


@pytest.mark.parametrize("step,result", [
    ("<< b = 9 >>", "9"), ("<<600*30/100=180>>", "180"), ("<< v = 4 + 3 = 17 >>", "17"), ("<<3+2.5=5.5>>", "5.5"),
    ("7 6 9 2 0", "7 6 9 2 0"), ("+ 0 2 0 8 7 1 ( 7 8 9 0 8 1 )", "7 8 9 0 8 1"), ("+ 0 0 0 2 0 8 7 1", "0 0 0 2 0 8 7 1"),
    ("9", "9"),
])
def test_result_span_of_every_note_format(step, result):
    a, b = result_span(step)
    assert step[a:b] == result


def located_exactly(examples, tok) -> tuple[int, int, list[str]]:
    """``(steps located and right, steps, the unlocated ones)``: a located step is right when the rationale's text
    from the token after its hand-over starts with the step's result and the hand-over token does not hold any of it."""
    right = total = 0
    unlocated = []
    for ex in examples:
        spans, rat = step_spans(ex, tok), segments(ex, tok, False).rationale
        assert len(spans.ends) == len(ex.steps) and list(spans.ends) == sorted(spans.ends)
        for k, step in enumerate(ex.steps):
            total += 1
            h = spans.handovers[k]
            if k in spans.unlocated:
                assert h == -1
                unlocated.append(step)
            else:
                right += hands_over(tok, rat, h, step)
    return right, total, unlocated


def test_chains_hand_overs_are_the_equals_sign_exactly():
    exs = generate(50, 0, steps=6)
    tok = builtin_tokenizer(exs)
    for ex in exs:
        spans = step_spans(ex, tok)
        assert spans.ends == tuple(5 * (k + 1) for k in range(6))
        assert spans.handovers == tuple(5 * k + 2 for k in range(6)) and not spans.unlocated
    assert located_exactly(exs, tok)[:2] == (300, 300)


def test_multiplication_hand_overs_are_exact():
    exs = read_examples(MULT, "icot")[:200]
    tok = builtin_tokenizer(exs)
    right, total, unlocated = located_exactly(exs, tok)
    # every step but the first (its partial product starts the rationale: no token before it) is located
    assert not unlocated and right == total - len(exs)
    assert all(step_spans(ex, tok).handovers[0] == -1 for ex in exs)



@pytest.fixture(scope="module")
def gsm8k_aug():
    return read_examples(AUG_VALID, "icot")[:200]


@pytest.fixture(scope="module")
def smollm2():
    src = alias_source("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)


def test_gsm8k_aug_with_smollm2s_tokenizer(gsm8k_aug, smollm2):
    right, total, unlocated = located_exactly(gsm8k_aug, smollm2)
    assert total == 613 and right >= 0.99 * total
    # what is not located: a result starting with "." that the tokenizer glues to the "=" before it
    assert right + len(unlocated) == total and all("=." in step for step in unlocated), unlocated


def test_gsm8k_aug_with_byte_level_bpes(gsm8k_aug):
    texts = [f"{ex.question} || {ex.rationale} #### {ex.answer}" for ex in gsm8k_aug]
    for tok in (gpt2_style_bpe(texts), build_bpe_tokenizer(texts, 400)):
        right, total, unlocated = located_exactly(gsm8k_aug, tok)
        assert right >= 0.99 * total and right + len(unlocated) == total
        assert all("=." in step for step in unlocated), unlocated


def test_gsm8k_aug_with_the_word_tokenizer_is_reported_never_misanchored(gsm8k_aug):
    """A note is one word-level token, so no result starts at a token boundary: every step is reported unlocated
    (hand-over -1, no step anchor) rather than anchored at a wrong token."""
    tok = builtin_tokenizer(gsm8k_aug)
    right, total, unlocated = located_exactly(gsm8k_aug, tok)
    assert right == 0 and len(unlocated) == total


def test_a_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="character offsets"):
        step_spans(generate(1, 0, steps=2)[0], Slow())


def test_bpe_tokenizer_writes_numbers_digit_by_digit_and_round_trips():
    exs = generate(300, 1, steps=4, modulus=23)
    cfg = load_config(None, ["model.tokenizer=bpe"])
    tok, again = builtin_tokenizer(exs, cfg.model), builtin_tokenizer(exs, cfg.model)
    assert tok.get_vocab() == again.get_vocab()
    ex = next(e for e in exs if len(e.answer) == 2)
    s = segments(ex, tok, False)
    assert tok.decode(s.prompt + s.rationale + s.answer, skip_special_tokens=True) == \
        f"{ex.question} || {ex.rationale} #### {ex.answer}"
    assert [t.lstrip("Ġ") for t in tok.convert_ids_to_tokens(s.answer[1:-1]) if t.lstrip("Ġ")] == list(ex.answer)
    lengths = {e - b for ex in exs for b, e in zip((0, *step_spans(ex, tok).ends), step_spans(ex, tok).ends)}
    assert len(lengths) > 1  # steps of different lengths
    with pytest.raises(ConfigError, match="bpe_vocab_size"):
        load_config(None, ["model.bpe_vocab_size=100"])


# ------------------------------------------------------------------------------------------- aligned positions


def chains_cfg(*extra):
    return load_config(None, ["method=lori", "data.task=chains", "data.chain_steps=6", "curriculum.stages=6",
                              "lori.latent_steps=6", *extra])


def test_aligned_positions_are_the_fixed_chains_layout_at_every_stage():
    """The demo's fixed layout (offset 2, stride 5 for `<< b = 7 >>`) is the special case of aligned positions: the
    same positions, so the same numbers."""
    exs = generate(20, 0, steps=6)
    tok = builtin_tokenizer(exs)
    tok.add_special_tokens({"additional_special_tokens": ["<bot>", "<eot>"]})
    aligned = chains_cfg("curriculum.thought_positions=aligned", "curriculum.thought_offset=2",
                         "curriculum.thought_stride=5")
    for ex in exs:
        for k in range(1, 7):
            pos, suffix = aligned_positions(ex, tok, k, 1)
            assert pos == [1 + 2 + 5 * j for j in range(k)] and suffix == pos[-1] + 1
        item = render_latent(ex, tok, aligned, stage=3, latent_steps=6)
        assert item["thought_pos"] == [3, 8, 13] and item["suffix_pos"] == 14
        assert "thought_pos" not in render_latent(ex, tok, aligned, stage=7, latent_steps=6)  # final: fixed layout
        assert "thought_pos" not in render_latent(ex, tok, chains_cfg(), stage=3, latent_steps=6)


def test_aligned_positions_keep_the_teachers_positions_with_variable_steps():
    """Steps of 6 or 7 tokens and results of one or two: thought s sits where the teacher's rationale starts step s's
    result, and the language after <eot> starts exactly where the teacher wrote it."""
    exs = generate(200, 2, steps=4, modulus=23)
    tok = builtin_tokenizer(exs, load_config(None, ["model.tokenizer=bpe"]).model)
    for ex in exs:
        spans = step_spans(ex, tok)
        for k in range(1, 4):
            pos, suffix = aligned_positions(ex, tok, k, 1)
            assert pos == [h + 1 for h in spans.handovers[:k]]
            assert suffix + 1 == spans.ends[k - 1]  # <eot>, then step k at the teacher's position of its first token
        pos2, suffix2 = aligned_positions(ex, tok, 2, 2)  # two thoughts per step end at the result's position
        assert pos2 == [spans.handovers[0], spans.handovers[0] + 1, spans.handovers[1], spans.handovers[1] + 1]


def test_a_latent_student_runs_the_positions_it_is_given():
    from lori.models.build import tiny_model
    from lori.models.latent_student import LatentStudent

    exs = generate(4, 0, steps=3)
    tok = builtin_tokenizer(exs)
    cfg = load_config(None, ["method=lori", "data.task=chains", "data.chain_steps=3", "curriculum.stages=3",
                             "lori.latent_steps=3", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                             "model.intermediate_size=64", "curriculum.thought_positions=aligned",
                             "curriculum.thought_offset=2", "curriculum.thought_stride=5"])
    torch.manual_seed(0)
    student = LatentStudent(tiny_model(cfg.model, tok, max_positions=128), 3, "identity",
                            *tok.convert_tokens_to_ids(["<bot>", "<eot>"]), position_offset=2, position_stride=5)
    from lori.methods.thoughts import collate

    batch = collate([render_latent(ex, tok, cfg, 2, 3) | {"index": i} for i, ex in enumerate(exs)], tok.pad_token_id)
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
    with torch.no_grad():
        fixed = student(*args, latent_steps=batch["latent_steps"])
        given = student(*args, latent_steps=batch["latent_steps"], positions=(batch["thought_pos"], batch["suffix_pos"]))
        K, mask = student._latent_mask(batch["latent_steps"], batch["prompt_ids"])
        plain = student._forward_without_cache(*args, K, mask, (batch["thought_pos"], batch["suffix_pos"]))
        other = student(*args, latent_steps=batch["latent_steps"],
                        positions=(batch["thought_pos"] * 0 + torch.arange(2)[None] + 1, batch["suffix_pos"] * 0 + 3))
    torch.testing.assert_close(given.logits, fixed.logits)  # chains: aligned == the fixed layout
    torch.testing.assert_close(plain.logits, given.logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(other.logits, given.logits)  # the positions reach the model


def test_thought_positions_setting_is_checked():
    assert load_config(None, []).curriculum.thought_positions == "fixed"
    with pytest.raises(ConfigError, match="thought_positions"):
        load_config(None, ["curriculum.thought_positions=teacher"])


# ------------------------------------------------------------------------- which thought is anchored to which step


def test_step_targets_spread_steps_over_thought_groups():
    def targets(groups, carried, S=8):
        return step_targets(torch.tensor([groups]), torch.tensor([carried]), S)[0, :groups].tolist()

    assert targets(6, 6) == [0, 1, 2, 3, 4, 5]  # one step per thought: group g is step g
    assert targets(3, 3) == [0, 1, 2]  # a curriculum stage: the replaced steps
    assert targets(3, 6) == [1, 3, 5]  # K = L/2: each thought carries two steps, anchored to the second
    assert targets(2, 3) == [0, 2]  # the tail merges into the last thought, which carries the final value
    assert targets(1, 5) == [4]


def test_two_steps_per_group_compress_every_stage():
    """curriculum.steps_per_group=2: stage k replaces the first 2k steps with k thoughts, each group anchored to the
    second of its steps (K = L/2), with the same anchoring rule as the final stage; the aligned positions are those of
    one thought per step at its second step; SIM-CoT's decoder writes both steps of a group."""
    from lori.methods.sim_cot import group_targets
    from lori.methods.thoughts import group_step

    exs = generate(20, 0, steps=6)
    tok = builtin_tokenizer(exs)
    tok.add_special_tokens({"additional_special_tokens": ["<bot>", "<eot>"]})
    cfg = chains_cfg("curriculum.steps_per_group=2", "curriculum.stages=3", "lori.latent_steps=3",
                     "curriculum.thought_positions=aligned")
    for ex in exs:
        for stage, (thoughts, carried, rest) in {1: (1, 2, 4), 2: (2, 4, 2), 3: (3, 6, 0), 4: (3, 6, 0)}.items():
            item = render_latent(ex, tok, cfg, stage=stage, latent_steps=3)
            assert (item["latent_steps"], item["groups"], item["carried"]) == (thoughts, thoughts, carried)
            assert item["prefix_steps"] == (carried if stage <= 3 else 0)
            language = tok.decode(item["suffix_ids"][1:]).split("####")[0].split()
            assert len(language) == 5 * rest  # the steps left as language: five words each
            groups, carried_t = torch.tensor([thoughts]), torch.tensor([carried])
            assert step_targets(groups, carried_t, 6)[0, :thoughts].tolist() == [1, 3, 5][:thoughts]
            assert [group_step(g, carried, thoughts) for g in range(thoughts)] == [1, 3, 5][:thoughts]
        one_per_step, _ = aligned_positions(ex, tok, 6, 1)
        for k in (2, 4, 6):
            pos, suffix = aligned_positions(ex, tok, k, 1, per=2)
            assert pos == one_per_step[1:k:2] and suffix == one_per_step[k - 1] + 1
        assert aligned_positions(ex, tok, 3, 1, per=2)[0] == [one_per_step[1], one_per_step[2]]  # a short last group
        sim = chains_cfg("method=sim-cot", "curriculum.steps_per_group=2", "curriculum.stages=3")
        texts = [tok.decode(t[:-1]) for t in group_targets(ex, tok, sim, 2, final=False)]
        assert texts == [" ".join(ex.steps[0:2]), " ".join(ex.steps[2:4])]
    with pytest.raises(ConfigError, match="steps_per_group"):
        chains_cfg("curriculum.steps_per_group=0")
