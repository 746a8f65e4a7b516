"""SIM-CoT on tiny models: the decoder's targets per group (merged and padded as the authors' code does), the loss
against a one-example-at-a-time computation by hand, a golden value, gradients into the student's thoughts, and a
train -> resume -> `lori eval` run with the decoder saved beside the model and never used in generation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lori.cli import main
from lori.config import ModelConfig, load_config
from lori.data import chains
from lori.errors import ConfigError
from lori.methods import METHODS, sim_cot
from lori.methods.common import step_norm
from lori.models.build import tiny_model
from lori.models.loading import builtin_tokenizer
from lori.training.loop import train

TINY = ModelConfig(arch="llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def setup(*overrides, n: int = 6):
    examples = chains.generate(n, 1, steps=3)
    tok = builtin_tokenizer(examples)
    cfg = load_config(None, ["method=sim-cot", "curriculum.stages=3", *overrides])
    torch.manual_seed(0)
    module = METHODS["sim-cot"].wrap(tiny_model(TINY, tok, 256), tok, cfg)
    with torch.no_grad():  # larger weights than the default init, so the values depend on what is supervised
        for p in module.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    return module, tok, examples, cfg, METHODS["sim-cot"].setup_training(module, cfg, examples)


def batch_of(examples, tok, cfg, stage):
    items = [METHODS["sim-cot"].render(ex, tok, cfg, stage) | {"index": i} for i, ex in enumerate(examples)]
    return METHODS["sim-cot"].collate(items, tok.pad_token_id), step_norm(items, list(range(len(items))))


def test_each_group_writes_its_step_the_last_takes_the_rest_and_missing_ones_the_answer():
    ex = chains.generate(1, 0, steps=3)[0]
    tok = builtin_tokenizer([ex])
    cfg = load_config(None, ["method=sim-cot", "curriculum.stages=3"])
    text = lambda ids: tok.decode(ids)  # noqa: E731
    eos = tok.eos_token_id
    one = sim_cot.group_targets(ex, tok, cfg, 1, final=False)
    assert len(one) == 1 and one[0][-1] == eos and text(one[0][:-1]).strip() == ex.steps[0]
    merged = sim_cot.group_targets(ex, tok, cfg, 2, final=True)
    assert [text(t[:-1]).strip() for t in merged] == [ex.steps[0], f"{ex.steps[1]} {ex.steps[2]}"]
    padded = sim_cot.group_targets(ex, tok, cfg, 5, final=True)
    assert [text(t[:-1]).strip() for t in padded] == [*ex.steps, f"#### {ex.answer}", f"#### {ex.answer}"]
    assert all(t.count(eos) == 1 and t[-1] == eos for t in padded)
    # a stage renders one group per replaced step; the final stage K // c groups
    item = METHODS["sim-cot"].render(ex, tok, load_config(None, ["method=sim-cot", "curriculum.stages=3",
                                                                "curriculum.thoughts_per_step=2"]), 2)
    assert item["latent_steps"] == 4 and len(item["decoder_targets"]) == 2
    with pytest.raises(ConfigError, match="sim_cot.latent_steps"):
        load_config(None, ["method=sim-cot", "curriculum.stages=0"])


def by_hand(module, batch, examples, tok, cfg, stage, c):
    """The decoder term one example and one group at a time, no padding: the thoughts as the latent loop feeds
    them (re-run one example alone), then the step's word embeddings, CE summed over the target, 1/G, mean."""
    total = 0.0
    for b, ex in enumerate(examples):
        item = METHODS["sim-cot"].render(ex, tok, cfg, stage)
        one = METHODS["sim-cot"].collate([item | {"index": 0}], tok.pad_token_id)
        out = module(one["prompt_ids"], one["prompt_mask"], one["suffix_ids"], one["suffix_mask"],
                     latent_steps=one["latent_steps"])
        fed = module.project(torch.cat([out.prompt_states[:, -1:], out.latent_states[:, -1, :-1]], dim=1))[0]
        targets = item["decoder_targets"]
        for g, t in enumerate(targets):
            seq = torch.cat([fed[g * c : (g + 1) * c], module.lm.get_input_embeddings()(torch.tensor(t))])
            logits = module.decoder(inputs_embeds=seq[None], position_ids=torch.arange(1, len(seq) + 1)[None]).logits
            total = total + F.cross_entropy(logits[0, c - 1 : -1], torch.tensor(t), reduction="sum") / len(targets)
    return total / len(examples)


@pytest.mark.parametrize("stage,c", [(2, 1), (4, 1), (4, 2)])
def test_decoder_loss_equals_the_one_example_computation(stage, c):
    module, tok, examples, cfg, state = setup(f"curriculum.thoughts_per_step={c}")
    batch, norm = batch_of(examples, tok, cfg, stage)
    out, _ = sim_cot.thoughts.student_ce(module, batch, norm)
    got = sim_cot.decoder_loss(module, out, batch, c, norm)
    torch.testing.assert_close(got, by_hand(module, batch, examples, tok, cfg, stage, c), rtol=2e-4, atol=1e-4)


# Golden value: produced once by running this code (torch 2.13 CPU, transformers 5.23, float32), final stage of 3,
# c = 1; it must change whenever the loss, its rendering or the tiny-model initialisation changes.
GOLDEN = {"loss": 34.1125, "ce": 4.8777, "decoder_ce": 29.2348}


def test_golden_value_and_the_decoder_teaches_the_thoughts():
    module, tok, examples, cfg, state = setup()
    batch, norm = batch_of(examples, tok, cfg, 4)
    loss, parts = METHODS["sim-cot"].loss(module, batch, norm, state)
    assert float(loss.detach()) == pytest.approx(float(parts["ce"] + parts["decoder_ce"]), rel=1e-6)
    got = {"loss": round(float(loss.detach()), 4), **{k: round(float(parts[k]), 4) for k in ("ce", "decoder_ce")}}
    assert got == pytest.approx(GOLDEN, abs=1e-4), got
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in module.decoder.named_parameters()
               if "embed" not in n)
    # the decoder's gradient reaches the student through its thoughts (identity projector: the last hidden states)
    g_all = module.lm.model.layers[0].mlp.down_proj.weight.grad.clone()
    module.zero_grad()
    _, ce = sim_cot.thoughts.student_ce(module, batch, norm)
    ce.backward()
    assert not torch.allclose(g_all, module.lm.model.layers[0].mlp.down_proj.weight.grad)


SMOKE = ["method=sim-cot", "data.task=chains", "data.chain_steps=3", "data.train_size=40", "data.valid_size=5",
         "data.test_size=8", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
         "model.intermediate_size=64", "train.global_batch=8", "train.micro_batch=4", "train.log_every=2",
         "train.eval_every=0", "train.save_every=2", "train.keep_checkpoints=4", "eval.max_new_tokens=8",
         "curriculum.stages=1", "curriculum.steps_per_stage=3"]  # resumed at step 2: inside stage 1


def test_train_saves_the_decoder_resumes_it_and_evaluates_without_it(tmp_path, capsys):
    run = tmp_path / "run"
    final = train(load_config(None, [*SMOKE, f"out_dir={run}", "train.steps=4"]))
    assert (final / sim_cot.DECODER_FILE).is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["decoder_ce"] > 0 for r in rows if "loss" in r)
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / final.name)
    capsys.readouterr()
    resumed = train(load_config(None, [*SMOKE, f"out_dir={again}", "train.steps=4"]))
    assert "resumed from" in capsys.readouterr().out and resumed.name == final.name
    for name in ("model.safetensors", sim_cot.DECODER_FILE):
        a, b = load_file(str(final / name)), load_file(str(resumed / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # a second phase from the run's weights starts from its decoder too
    phase2 = load_config(None, [*SMOKE, f"out_dir={tmp_path / 'p2'}", f"model.init_from={run}"])
    from lori.models.loading import build_model
    from lori.data.splits import load_split

    module, _ = build_model(phase2, METHODS["sim-cot"], load_split(phase2.data, "train"))
    saved = load_file(str(final / sim_cot.DECODER_FILE))
    assert all(torch.equal(module.decoder.state_dict()[k], saved[k]) for k in saved)
    capsys.readouterr()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval"), "eval.limit=4",
                 "eval.latency_problems=1"]) == 0, capsys.readouterr().err
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert row["method"] == "sim-cot" and row["mean_generated_tokens"] >= 1 + 1  # K thoughts + <eot>
