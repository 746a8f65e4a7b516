"""Per-answer-token cross-entropy (``ce_ans1..ce_ansN`` in metrics.jsonl): the diagnostic that shows which answer
digits a student has learned (the middle digits of a 4x4 product are where students fail)."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from lori.config import load_config
from lori.data.schema import Example
from lori.losses import answer_token_ce
from lori.models.loading import builtin_tokenizer
from lori.training.loop import answer_length, train

I = -100


def test_answer_token_ce_golden_values():
    # Two rows over 6 positions; row 0: rationale r, answer a1 a2, eos; row 1: answer a1 a2, eos, then padding.
    # Logits put probability p on the label, so each token's CE is -log p, worked out by hand below.
    V = 4
    labels = torch.tensor([[I, 3, 1, 2, 0, I],
                           [I, 1, 2, 0, I, I]])
    probs = {(0, 1): 0.9, (0, 2): 0.5, (0, 3): 0.25, (0, 4): 0.8,
             (1, 1): 0.1, (1, 2): 0.5, (1, 3): 0.99}
    logits = torch.zeros(2, 6, V)
    for (b, t), p in probs.items():
        # log-probabilities: the label gets log p, the other V - 1 tokens share 1 - p
        logp = torch.full((V,), math.log((1 - p) / (V - 1)))
        logp[labels[b, t]] = math.log(p)
        logits[b, t] = logp
    ce = answer_token_ce(logits, labels, answer_len=2, num_examples=2)
    # answer token 1: row 0 position 2 (p 0.5), row 1 position 1 (p 0.1); token 2: p 0.25 and 0.5; the
    # rationale token (p 0.9) and the eos tokens (p 0.8, 0.99) are not answer tokens.
    want = torch.tensor([(-math.log(0.5) - math.log(0.1)) / 2, (-math.log(0.25) - math.log(0.5)) / 2])
    torch.testing.assert_close(ce, want)
    # a global normaliser: the same rows in a step of 4 examples count half
    torch.testing.assert_close(answer_token_ce(logits, labels, 2, num_examples=4), want / 2)


def test_answer_token_ce_sums_to_the_answer_part_of_the_cross_entropy():
    torch.manual_seed(0)
    B, T, V, A = 3, 9, 7, 4
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[:, :2] = I  # prompt
    labels[2, 7:] = I  # a shorter row, right-padded
    ce = answer_token_ce(logits, labels, answer_len=A, num_examples=B)
    total = 0.0
    for b in range(B):
        sup = (labels[b] != I).nonzero().flatten()
        answer = sup[-(A + 1):-1]  # the A tokens before the row's last supervised token (eos)
        total += F.cross_entropy(logits[b, answer], labels[b, answer], reduction="sum")
    torch.testing.assert_close(ce.sum() * B, total)


def test_answer_length_is_set_only_when_every_answer_has_one_length():
    same = [Example("1 2 * 3 4", ("3 6",), "3 0 1 0"), Example("5 6 * 7 8", ("5 6",), "9 8 3 4")]
    other = Example("1 * 2", (), "2")
    tok = builtin_tokenizer([*same, other])
    assert answer_length(same, tok) == 4
    assert answer_length([*same, other], tok) is None


TINY = ["data.digits=[2,2]", "data.train_size=200", "data.valid_size=8", "data.test_size=8", "model.hidden_size=32",
        "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64", "train.steps=4",
        "train.global_batch=8", "train.micro_batch=4", "train.log_every=2", "train.eval_every=0", "train.eval_size=4",
        "eval.max_new_tokens=24"]


def test_every_method_without_a_cache_logs_each_answer_digit(tmp_path):
    # 2x2 products have 4 answer digits; explicit (causal-LM) and latent (Coconut, CODI) losses both log them.
    for method in ["no-cot", "icot-si", "coconut", "codi"]:
        out = tmp_path / method
        train(load_config(None, [*TINY, f"out_dir={out}", f"method={method}", "curriculum.stages=1",
                                 "curriculum.steps_per_stage=2"]))
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in rows if "loss" in r]
        assert logged, method
        for r in logged:
            digits = [r[f"ce_ans{j}"] for j in range(1, 5)]
            assert "ce_ans5" not in r
            assert all(math.isfinite(v) and v > 0 for v in digits), (method, r)
            # the answer digits are a part of the supervised tokens whose mean is "ce"
            assert sum(digits) / 4 < 3 * r["ce"] + 1, (method, r)
