"""The built-in tokenizer, tiny LLaMA / Qwen2 / GPT-2 models (save and reload), and batched KV-cache greedy
generation (batched == one by one == a naive full-sequence argmax loop)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lori.config import ModelConfig
from lori.data import generate_multiplication
from lori.evaluation.generate import greedy_generate
from lori.models.build import load_pretrained, tiny_model
from lori.models.tokenizer import BOS, BOT, EOS, EOT, PAD, UNK, build_word_tokenizer
from lori.models.loading import builtin_tokenizer

ARCHS = ["llama", "qwen2", "gpt2"]
EXAMPLES = generate_multiplication(2, 2, 30, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer(EXAMPLES)


def _tiny(arch: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = tiny_model(cfg, tokenizer, max_positions=64)
    # Random init (std 0.02) gives nearly flat logits; larger weights give clear argmax winners, so generation
    # compares code paths rather than float noise between near-tied tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


# ------------------------------------------------------------------------------------------------ tokenizer


def test_word_tokenizer_round_trips_text(tokenizer):
    for ex in EXAMPLES[:10]:
        for text in (ex.question, ex.rationale, ex.answer, f"{ex.question} || {ex.rationale} #### {ex.answer}"):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text


def test_word_tokenizer_specials(tokenizer):
    assert tokenizer.pad_token == PAD and tokenizer.bos_token == BOS and tokenizer.eos_token == EOS
    assert tokenizer.unk_token == UNK
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, UNK, BOT, EOT, "||", "####")}
    assert len(set(ids.values())) == len(ids)
    assert tokenizer.unk_token_id not in (ids[BOT], ids[EOT], ids["||"], ids["####"])
    assert tokenizer.padding_side == "left"
    # Special ids do not depend on the data, so a teacher and its students share them.
    other = build_word_tokenizer(["9 8 7 * 6"])
    assert {t: other.convert_tokens_to_ids(t) for t in ids} == ids
    # Unknown symbols map to <unk>; decoding skips specials on request.
    assert tokenizer.encode("zzz", add_special_tokens=False) == [tokenizer.unk_token_id]
    assert tokenizer.decode([ids[BOS], *tokenizer.encode("1 2", add_special_tokens=False), ids[EOS]],
                            skip_special_tokens=True) == "1 2"


def test_word_tokenizer_is_deterministic():
    a = build_word_tokenizer(["3 1 * 2", "b a"])
    b = build_word_tokenizer(["b a", "2 * 3 1"])
    assert a.get_vocab() == b.get_vocab()


def test_word_tokenizer_saves_and_reloads(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.get_vocab() == tokenizer.get_vocab()
    assert len(again) == len(tokenizer)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(again, attr) == getattr(tokenizer, attr), attr
    assert again.convert_tokens_to_ids([BOT, EOT]) == tokenizer.convert_tokens_to_ids([BOT, EOT])
    assert again.padding_side == "left"
    texts = [ex.question + " || " + ex.rationale for ex in EXAMPLES[:5]] + ["1 2"]
    for text in texts:
        assert again.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
        assert again.decode(again.encode(text, add_special_tokens=False)) == text
    batch = again(["1 2", "1 2 3 4"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][:2] == [again.pad_token_id] * 2  # left padding
    assert batch["attention_mask"][0] == [0, 0, 1, 1]


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_forward_save_reload(arch, tokenizer, tmp_path):
    model = _tiny(arch, tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 32)
    assert model.config.get_text_config().num_hidden_layers == 2
    ids = torch.tensor([tokenizer.encode(EXAMPLES[0].question + " ||", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    again, tok = load_pretrained(tmp_path)
    again.eval()
    assert type(again) is type(model)
    assert tok.get_vocab() == tokenizer.get_vocab() and tok.padding_side == "left"
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, logits)
    for (name, p), (name2, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name


# ------------------------------------------------------------------------------------------------ generation


def _naive_greedy(model, prompt: list[int], eos_id: int, max_new_tokens: int) -> tuple[list[int], int]:
    """No cache, no padding: re-run the whole sequence and take the argmax of the last position."""
    seq, out, steps = list(prompt), [], 0
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids = torch.tensor([seq])
            nxt = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
            steps += 1
            if nxt == eos_id:
                break
            out.append(nxt)
            seq.append(nxt)
    return out, steps


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_batched_equals_single_equals_naive(arch, tokenizer):
    model = _tiny(arch, tokenizer, seed=1)
    bos = [tokenizer.bos_token_id]
    prompts = [
        bos + tokenizer.encode(EXAMPLES[0].question + " ||", add_special_tokens=False),
        bos + tokenizer.encode("3 ||", add_special_tokens=False),
        bos + tokenizer.encode(EXAMPLES[1].question + " || " + EXAMPLES[1].steps[0], add_special_tokens=False),
        bos,
    ]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: real left padding
    kw = dict(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, max_new_tokens=12)
    batched = greedy_generate(model, prompts, **kw)
    singles = [greedy_generate(model, [p], **kw) for p in prompts]
    naive = [_naive_greedy(model, p, tokenizer.eos_token_id, 12) for p in prompts]
    assert batched.tokens == [s.tokens[0] for s in singles]
    assert batched.steps == [s.steps[0] for s in singles]
    assert batched.tokens == [n[0] for n in naive]
    assert batched.steps == [n[1] for n in naive]
    assert all(1 <= s <= 12 for s in batched.steps)
    # The check means something only if the sequences are not all trivially empty / identical.
    assert sum(len(t) for t in batched.tokens) > 0
    assert len({tuple(t) for t in batched.tokens}) > 1


def test_greedy_generate_stops_at_eos(tokenizer):
    """A model that always prefers EOS generates nothing and takes one step; other rows are unaffected."""
    model = _tiny("llama", tokenizer, seed=2)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.eos_token_id] = 1e4
    model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    g = greedy_generate(model, [[tokenizer.bos_token_id], [tokenizer.bos_token_id] * 3],
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, max_new_tokens=5)
    assert g.tokens == [[], []] and g.steps == [1, 1]
