"""The running-sum auxiliary head (``method: aux-sum``, Bai et al. 2025): its targets, where it reads the hidden
state, its loss, its checkpoint and its refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lori.cli import main
from lori.config import ModelConfig, load_config
from lori.data import generate_multiplication
from lori.data.schema import Example
from lori.errors import ConfigError, LoriError
from lori.methods import METHODS, aux_sum
from lori.methods.common import step_norm
from lori.models.build import tiny_model
from lori.models.loading import builtin_tokenizer
from lori.training.loop import train

TINY_MODEL = ModelConfig(arch="llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)

EX = Example("5 6 3 2 * 7 4 3 4", (), "5 5 6 0 8 2 0 1", source="valid.txt:1")  # 2365 x 4347 = 10280655


def test_running_sums_by_hand():
    # a = 5 6 3 2, b = 7 4 3 4 (least significant first):
    # c^0 = 5*7 = 35; c^1 = 5*4 + 6*7 + 3 = 65; c^2 = 5*3 + 6*4 + 3*7 + 6 = 66; c^3 = 5*4 + 6*3 + 3*4 + 2*7 + 6 = 70;
    # c^4 = 6*4 + 3*3 + 2*4 + 7 = 48; c^5 = 3*4 + 2*3 + 4 = 22; c^6 = 2*4 + 2 = 10; c^7 = 1
    assert aux_sum.running_sums(EX) == [35, 65, 66, 70, 48, 22, 10, 1]
    for ex in generate_multiplication(3, 4, 20, seed=5):
        sums = aux_sum.running_sums(ex)
        assert " ".join(str(c % 10) for c in sums) == ex.answer


def test_running_sums_refuse_what_is_not_a_product_and_name_the_line():
    with pytest.raises(LoriError, match=r"valid.txt:1.*not the product"):
        aux_sum.running_sums(Example(EX.question, (), "5 5 6 0 8 2 0 2", source="valid.txt:1"))
    with pytest.raises(LoriError, match=r"chains.txt:4.*multiplication"):
        aux_sum.running_sums(Example("A -> B", (), "B", source="chains.txt:4"))


def test_the_head_reads_the_position_that_predicts_each_digit():
    tok = builtin_tokenizer([EX])
    cfg = load_config(None, ["method=aux-sum", "aux_sum.scale=10"])
    item = aux_sum.render(EX, tok, cfg)
    digits = [tok.convert_tokens_to_ids(t) for t in tok.tokenize(" " + EX.answer)]
    assert len(item["aux_pos"]) == 8 == item["n_aux"]
    for pos, d in zip(item["aux_pos"], digits, strict=True):
        assert item["input_ids"][pos + 1] == d and item["labels"][pos + 1] == d  # position p_k predicts c_k
    assert item["aux_target"] == [3.5, 6.5, 6.6, 7.0, 4.8, 2.2, 1.0, 0.1]  # c^_k / scale
    # the rendering is No-CoT's plus the head's fields
    plain = METHODS["no-cot"].render(EX, tok, cfg, 1)
    assert {k: item[k] for k in plain} == plain


def test_loss_is_ce_plus_weighted_mse_of_the_head_on_layer_l():
    examples = generate_multiplication(3, 3, 6, seed=1)
    tok = builtin_tokenizer(examples)
    cfg = load_config(None, ["method=aux-sum", "aux_sum.weight=0.5", "aux_sum.layer=1"])
    torch.manual_seed(0)
    module = aux_sum.wrap(tiny_model(TINY_MODEL, tok, 256), tok, cfg)
    items = [aux_sum.render(ex, tok, cfg) | {"index": i} for i, ex in enumerate(examples)]
    items[0]["aux_pos"] = items[0]["aux_pos"][:-1]  # a shorter row: padding must not count
    items[0]["aux_target"] = items[0]["aux_target"][:-1]
    items[0]["n_aux"] -= 1
    batch, norm = aux_sum.collate(items, tok.pad_token_id), step_norm(items, list(range(len(items))))
    state = aux_sum.setup_training(module, cfg, examples)
    loss, parts = aux_sum.loss(module, batch, norm, state)
    # by hand: the head on hidden state 1 at each listed position, squared error summed over the 6x6 - 1 positions
    h = module.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True).hidden_states[1]
    err = [(module.head(h[b, p]).squeeze() - t) ** 2
           for b, it in enumerate(items) for p, t in zip(it["aux_pos"], it["aux_target"], strict=True)]
    assert len(err) == 35
    torch.testing.assert_close(parts["aux_mse"], (sum(err) / 35).detach())
    torch.testing.assert_close(loss.detach(), parts["ce"] + 0.5 * parts["aux_mse"])
    loss.backward()
    assert module.head.weight.grad.abs().sum() > 0
    # the head reads layer 1: the last block gets gradient from the cross-entropy alone
    assert all(p.grad is not None for p in module.lm.parameters() if p.requires_grad)


def test_default_layer_is_the_middle_block_and_a_layer_past_the_model_is_refused():
    tok = builtin_tokenizer([EX])
    lm = tiny_model(TINY_MODEL, tok, 64)  # 2 layers
    assert aux_sum.wrap(lm, tok, load_config(None, ["method=aux-sum"])).layer == 1
    with pytest.raises(LoriError, match=r"aux_sum.layer=3.*0 \(embeddings\) to 2"):
        aux_sum.wrap(lm, tok, load_config(None, ["method=aux-sum", "aux_sum.layer=3"]))
    with pytest.raises(ConfigError, match="aux_sum.weight"):
        load_config(None, ["aux_sum.weight=-1"])


SMOKE = ["method=aux-sum", "data.digits=[2,2]", "data.train_size=64", "data.valid_size=8", "data.test_size=8",
         "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
         "train.global_batch=8", "train.micro_batch=4", "train.log_every=2", "train.eval_every=0",
         "train.eval_size=4", "train.save_every=2", "train.keep_checkpoints=4", "eval.max_new_tokens=16"]


def test_train_saves_the_head_resumes_it_and_evaluates_as_no_cot(tmp_path, capsys):
    run = tmp_path / "run"
    final = train(load_config(None, [*SMOKE, f"out_dir={run}", "train.steps=4"]))
    assert (final / aux_sum.HEAD_FILE).is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("aux_mse" in r and "ce_ans4" in r for r in rows if "loss" in r)
    # resuming reads the head back: the run resumed from its step-2 checkpoint ends where the uninterrupted one did
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / final.name)
    capsys.readouterr()
    resumed = train(load_config(None, [*SMOKE, f"out_dir={again}", "train.steps=4"]))  # train.resume: auto
    assert "resumed from" in capsys.readouterr().out and resumed.name == final.name
    for name in ("model.safetensors", aux_sum.HEAD_FILE):
        a, b = load_file(str(final / name)), load_file(str(resumed / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # a second phase started from the run's weights (model.init_from) starts from its head too
    phase2 = load_config(None, [*SMOKE, f"out_dir={tmp_path / 'phase2'}", f"model.init_from={run}"])
    tok = builtin_tokenizer(generate_multiplication(2, 2, 4, seed=0))
    lm = tiny_model(phase2.model, tok, 64)
    head = aux_sum.wrap(lm, tok, phase2).head.state_dict()
    saved = load_file(str(final / aux_sum.HEAD_FILE))
    assert all(torch.equal(head[k], saved[k]) for k in saved)
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval"), "eval.limit=4",
                 "eval.latency_problems=1"]) == 0, capsys.readouterr().err
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert row["method"] == "aux-sum" and 0 < row["mean_generated_tokens"] <= 16
