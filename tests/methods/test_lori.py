"""LoRi end to end on tiny models: latent loop, cache equality, gradient flow, fingerprint refusal, resume."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from lori.config import ModelConfig, load_config
from lori.data import generate_multiplication
from lori.errors import LoriError
from lori.evaluation.generate import greedy_generate
from lori.methods.lori import method as lori_method
from lori.methods.common import Norm
from lori.models.build import tiny_model
from lori.models.latent_student import LatentStudent
from lori.methods.lori.teacher import render_teacher
from lori.methods.lori.teacher import precompute, teacher_trajectories
from lori.methods.lori.cache import load_cache
from lori.subspace.stats import triu_unpack
from lori.subspace.trajectory import trajectory_statistics
from lori.models.loading import builtin_tokenizer

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
DATA = ["data.digits=[2,2]", "data.train_size=60", "data.valid_size=10", "data.test_size=10"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, save_random_teacher):
    """A random tiny LLaMA teacher saved as a checkpoint folder, and its training examples."""
    cfg = load_config(None, ["method=lori", *TINY, *DATA])
    from lori.data.splits import load_split

    train = load_split(cfg.data, "train")
    return save_random_teacher(tmp_path_factory.mktemp("teacher"), cfg.model, train), train


def lori_cfg(teacher_dir, cache_dir, *extra):
    return load_config(None, ["method=lori", *TINY, *DATA, f"lori.teacher={teacher_dir}", f"lori.cache_dir={cache_dir}",
                              "lori.rank=4", "lori.calib_size=40", "lori.shard_size=25", "lori.precompute_batch=16",
                              "lori.latent_steps=3", *extra])


def tiny_student(latent_steps=3, projector="mlp", arch="llama"):
    examples = generate_multiplication(2, 2, 8, seed=1)
    tok = builtin_tokenizer(examples)
    torch.manual_seed(0)
    lm = tiny_model(ModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 128)
    cfg = load_config(None, ["method=lori", f"lori.latent_steps={latent_steps}", f"lori.projector={projector}"])
    return lori_method.METHOD.wrap(lm, tok, cfg), tok, examples, cfg


def render(ex, tok, cfg, stage=None):
    return lori_method.METHOD.render(ex, tok, cfg, cfg.curriculum.stages + 1 if stage is None else stage)


def naive_latent(student: LatentStudent, prompt: list[int], suffix: list[int]):
    """Re-run the whole sequence at every step, no KV cache: the reference for the cached latent loop."""
    emb = student.lm.get_input_embeddings()
    seq = emb(torch.tensor([prompt]))
    out = student.lm(inputs_embeds=seq, output_hidden_states=True)
    states = []
    for _ in range(student.latent_steps):
        seq = torch.cat([seq, student.project(out.hidden_states[-1][:, -1:])], dim=1)
        out = student.lm(inputs_embeds=seq, output_hidden_states=True)
        states.append(torch.stack([s[:, -1] for s in out.hidden_states], dim=1))
    seq = torch.cat([seq, emb(torch.tensor([suffix]))], dim=1)
    out = student.lm(inputs_embeds=seq, output_hidden_states=True)
    return out.logits[:, -len(suffix):], torch.stack(states, dim=2)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_latent_loop_with_cache_equals_without(arch):
    student, tok, examples, cfg = tiny_student(arch=arch)
    student.eval()
    items = [render(ex, tok, cfg) | {"index": i} for i, ex in enumerate(examples[:4])]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    with torch.no_grad():
        out = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"])
        for i, it in enumerate(items):
            logits, states = naive_latent(student, it["prompt_ids"], it["suffix_ids"])
            S = len(it["suffix_ids"])
            torch.testing.assert_close(out.logits[i : i + 1, :S], logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.latent_states[i : i + 1], states, atol=1e-4, rtol=1e-4)


def test_latent_generation_matches_training_forward():
    """Greedy latent generation (KV cache, batched, left-padded) gives the tokens the teacher-forced pass predicts."""
    student, tok, examples, cfg = tiny_student()
    student.eval()
    prompts = [lori_method.METHOD.prompt(ex, tok, cfg) for ex in examples[:4]]
    gen = greedy_generate(student.lm, prompts, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_new_tokens=6,
                          **student.generation_kwargs())
    for p, toks, steps in zip(prompts, gen.tokens, gen.steps):
        suffix = [student.eot_id]
        with torch.no_grad():
            for _ in range(6):
                logits, _ = naive_latent(student, p, suffix)
                nxt = int(logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                suffix.append(nxt)
        assert toks == suffix[1:]
        assert steps == student.latent_steps + 1 + len(toks) + (1 if len(toks) < 6 else 0)


def test_cached_statistics_equal_on_the_fly(teacher, tmp_path):
    folder, train = teacher
    cfg = lori_cfg(folder, tmp_path / "cache")
    precompute(cfg)
    stats = load_cache(tmp_path / "cache")
    assert stats.mu.shape == (60, 2, 4) and stats.cov.shape == (60, 2, 10)
    from lori.models.build import load_pretrained

    lm, tok = load_pretrained(folder)
    items = [render_teacher(ex, tok, False) for ex in train[30:35]]
    h, mask, anchor = teacher_trajectories(lm, items, [1, 2], tok.pad_token_id)
    mu, C, a = trajectory_statistics(stats.basis, h, mask, anchor, centred=True)
    torch.testing.assert_close(stats.mu[30:35], mu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(triu_unpack(stats.cov[30:35]), C, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.anchor[30:35], a, atol=1e-5, rtol=1e-4)
    # The same example in another batch (other padding) gives the same statistics.
    h1, m1, a1 = teacher_trajectories(lm, items[2:3], [1, 2], tok.pad_token_id)
    mu1, C1, _ = trajectory_statistics(stats.basis, h1, m1, a1, centred=True)
    torch.testing.assert_close(mu1[0], mu[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(C1[0], C[2], atol=1e-5, rtol=1e-4)


def test_stale_cache_is_refused(teacher, tmp_path):
    folder, train = teacher
    precompute(lori_cfg(folder, tmp_path / "cache"))
    student, tok, _, _ = tiny_student()
    with pytest.raises(LoriError, match="rank"):
        lori_method.setup_training(student, lori_cfg(folder, tmp_path / "cache", "lori.rank=3"), train)
    with pytest.raises(LoriError, match="data"):
        lori_method.setup_training(student, lori_cfg(folder, tmp_path / "cache"), train[:-1])
    with pytest.raises(LoriError, match="different setup"):  # precompute into it with other options
        precompute(lori_cfg(folder, tmp_path / "cache", "lori.centred=false"))


def test_precompute_timer_wraps_every_stage_and_changes_no_file(teacher, tmp_path):
    folder, _ = teacher
    precompute(lori_cfg(folder, tmp_path / "plain"))
    seen = []

    @contextlib.contextmanager
    def timer(stage, items):
        seen.append((stage, len(items), "open"))
        yield
        seen[-1] = (stage, len(items), "closed")

    precompute(lori_cfg(folder, tmp_path / "timed"), timer=timer)
    assert all(done == "closed" for *_, done in seen)
    stages = [(stage, n) for stage, n, _ in seen]
    # 40 calibration examples in batches of 16; 60 examples in shards of 25, each cut into batches of 16
    shard = lambda *sizes: [x for n in sizes for x in (("forward", n), ("statistics", n))]  # noqa: E731
    assert stages == [("load", 0), ("calibrate", 16), ("calibrate", 16), ("calibrate", 8), ("fit", 0),
                      *shard(16, 9), ("write", 25), *shard(16, 9), ("write", 25), *shard(10), ("write", 10)]
    files = sorted((tmp_path / "plain").glob("*.safetensors"))
    assert len(files) == 4  # the basis and three shards
    for plain in files:
        assert (tmp_path / "timed" / plain.name).read_bytes() == plain.read_bytes(), plain.name


def test_interrupted_precompute_resumes_without_redoing_shards(teacher, tmp_path, monkeypatch):
    folder, _ = teacher
    cfg = lori_cfg(folder, tmp_path / "cache")
    from lori.methods.lori import cache as cache_mod

    calls = []
    real = cache_mod.CacheWriter.write_shard

    def crash_on_second(self, i, *a, **kw):
        calls.append(i)
        if i == 1:
            raise KeyboardInterrupt("simulated crash")
        return real(self, i, *a, **kw)

    monkeypatch.setattr(cache_mod.CacheWriter, "write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        precompute(cfg)
    with pytest.raises(LoriError, match="incomplete"):
        load_cache(tmp_path / "cache")
    first = (tmp_path / "cache" / "stats-00000.safetensors").stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(cache_mod.CacheWriter, "write_shard", real)
    monkeypatch.setattr(cache_mod.CacheWriter, "write_shard", lambda self, i, *a, **kw: (calls.append(i), real(self, i, *a, **kw)))
    precompute(cfg)
    assert calls == [1, 2]  # 60 examples in shards of 25: shard 0 was kept
    assert (tmp_path / "cache" / "stats-00000.safetensors").stat().st_mtime_ns == first
    assert load_cache(tmp_path / "cache").mu.shape[0] == 60


def test_gradients_reach_student_and_projector_only(teacher, tmp_path):
    folder, train = teacher
    cfg = lori_cfg(folder, tmp_path / "cache")
    precompute(cfg)
    from lori.models.build import load_pretrained

    lm, tok = load_pretrained(folder)
    student = lori_method.METHOD.wrap(lm, tok, cfg)
    state = lori_method.setup_training(student, cfg, train)
    items = [render(ex, tok, cfg) | {"index": i} for i, ex in enumerate(train[:8])]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    loss, parts = lori_method.loss(student, batch, Norm(tokens=sum(it["n_target"] for it in items), examples=8), state)
    assert set(parts) == {"ce", "rat_mean", "rat_cov", "anc"} and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    assert all(p.grad is not None for p in student.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.lm.parameters())
    stats = state.stats
    assert not stats.mu.requires_grad and not stats.basis.U.requires_grad and stats.basis.U.grad is None


def test_ablation_switches_change_the_loss_parts(teacher, tmp_path):
    folder, train = teacher
    precompute(lori_cfg(folder, tmp_path / "cache"))
    from lori.models.build import load_pretrained

    for extra, expected in [(["lori.anchor=false"], {"ce", "rat_mean", "rat_cov"}),
                            (["lori.second_order=false"], {"ce", "rat_mean", "rat_cov", "anc"})]:
        cfg = lori_cfg(folder, tmp_path / "cache", *extra)
        lm, tok = load_pretrained(folder)
        student = lori_method.METHOD.wrap(lm, tok, cfg)
        state = lori_method.setup_training(student, cfg, train)
        items = [render(ex, tok, cfg) | {"index": i} for i, ex in enumerate(train[:4])]
        batch = lori_method.METHOD.collate(items, tok.pad_token_id)
        _, parts = lori_method.loss(student, batch, Norm(tokens=sum(it["n_target"] for it in items), examples=4), state)
        assert set(parts) == expected
        if "lori.second_order=false" in extra:
            assert float(parts["rat_cov"]) == 0.0


def test_curriculum_renderings_at_each_stage():
    """Stage k replaces the first k steps by k x c thoughts; the final stage replaces all (K = lori.latent_steps)."""
    ex = generate_multiplication(3, 3, 1, seed=3)[0]
    assert len(ex.steps) == 3
    tok = builtin_tokenizer([ex])
    cfg = load_config(None, ["method=lori", "curriculum.stages=2", "curriculum.thoughts_per_step=2",
                             "curriculum.steps_per_stage=10", "lori.latent_steps=5"])
    assert [cfg.curriculum.stage_at(s) for s in (0, 9, 10, 19, 20, 500)] == [1, 1, 2, 2, 3, 3]
    answer = tok.encode(f" #### {ex.answer}", add_special_tokens=False) + [tok.eos_token_id]
    for stage, thoughts, rest in [(1, 2, ex.steps[1:]), (2, 4, ex.steps[2:]), (3, 5, ())]:
        item = lori_method.METHOD.render(ex, tok, cfg, stage)
        language = tok.encode(" ".join(rest), add_special_tokens=False) if rest else []
        assert item["latent_steps"] == thoughts
        assert item["suffix_ids"] == [tok.convert_tokens_to_ids("<eot>")] + language + answer
        assert item["suffix_ids"][item["anchor"]] == tok.convert_tokens_to_ids("####")
        assert item["final"] == (stage == 3)


def test_prefix_statistics_are_the_mean_over_the_first_steps(teacher, tmp_path):
    """The cache's per-prefix means equal the mean of the projected teacher states over each step prefix, and a
    LoRi loss at an intermediate stage with lori.prefix_statistics compares the thoughts with the right prefix."""
    folder, train = teacher
    cfg = lori_cfg(folder, tmp_path / "cache", "curriculum.stages=2", "curriculum.thoughts_per_step=1",
                   "lori.prefix_statistics=true")
    precompute(cfg)
    stats = load_cache(tmp_path / "cache")
    from lori.models.build import load_pretrained

    lm, tok = load_pretrained(folder)
    for i in (0, 7, 33):
        r = render_teacher(train[i], tok, False)
        assert len(r.ends) == len(train[i].steps) and r.ends[-1] == r.length
        h, mask, _ = teacher_trajectories(lm, [r], list(range(1, 3)), tok.pad_token_id)
        z = stats.basis.project(h)[0]  # [L, T, r]
        for k, end in enumerate(r.ends):
            torch.testing.assert_close(stats.prefix_mu[i, k], z[:, :end].mean(1), atol=1e-5, rtol=1e-4)
        assert bool(stats.prefix_valid[i, : len(r.ends)].all()) and not bool(stats.prefix_valid[i, len(r.ends):].any())
    # the full prefix is the whole-rationale mean
    last = torch.tensor([len(ex.steps) - 1 for ex in train])
    torch.testing.assert_close(stats.prefix_mu[torch.arange(len(train)), last], stats.mu, atol=1e-5, rtol=1e-4)

    from lori.models.loading import build_model
    from lori.methods import METHODS

    student, tok = build_model(lori_cfg(folder, tmp_path / "cache", "curriculum.stages=2",
                                        "lori.prefix_statistics=true", f"model.init_from={folder}"),
                               METHODS["lori"], train)
    state = lori_method.setup_training(student, cfg, train)
    items = [lori_method.METHOD.render(ex, tok, cfg, stage=1) | {"index": i} for i, ex in enumerate(train[:6])]
    assert {it["prefix_steps"] for it in items} == {1} and {it["latent_steps"] for it in items} == {1}
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    loss, parts = lori_method.loss(student, batch, Norm(tokens=sum(it["n_target"] for it in items), examples=6), state)
    assert "rat_prefix" in parts and float(parts["rat_prefix"]) > 0 and "rat_mean" not in parts
    loss.backward()
    assert student.projector.net[1].weight.grad.abs().sum() > 0
    off = load_config(None, ["method=lori", *TINY, *DATA, "curriculum.stages=2"])
    off_state = dataclasses.replace(state, cfg=off.lori)  # prefix_statistics=false: no rationale term before the
    norm = Norm(tokens=sum(it["n_target"] for it in items), examples=6)  # final stage
    _, parts = lori_method.loss(student, batch, norm, off_state)
    assert "rat_prefix" not in parts and "rat_mean" not in parts


def test_step_anchors_point_at_each_steps_handover_and_train_the_thoughts(tmp_path, save_random_teacher):
    """lori.step_anchors on chains: the teacher's hand-over of step k is the `=` that predicts its value; the cache
    holds the projected teacher state there; the loss compares the state feeding step k's thoughts with it."""
    from lori.data.splits import load_split
    from lori.models.build import load_pretrained
    from lori.methods import METHODS
    from lori.models.loading import build_model

    data = ["data.task=chains", "data.chain_steps=3", "data.train_size=40", "data.valid_size=5", "data.test_size=5"]
    cfg0 = load_config(None, ["method=lori", *TINY, *data])
    train = load_split(cfg0.data, "train")
    folder, tok = save_random_teacher(tmp_path / "teacher", cfg0.model, train), builtin_tokenizer(train)
    cfg = lori_cfg(folder, tmp_path / "cache", *data, "curriculum.stages=3", "lori.step_anchors=true",
                   "lori.shard_size=40")
    precompute(cfg)
    stats = load_cache(tmp_path / "cache")
    lm, tok = load_pretrained(folder)
    r = render_teacher(train[0], tok, False)
    rationale = tok.convert_ids_to_tokens(r.input_ids[r.start : r.start + r.length])
    assert [rationale[p] for p in r.handovers] == ["="] * 3
    assert [rationale[p + 1] for p in r.handovers] == [s.split()[3] for s in train[0].steps]  # the values
    h, _, _ = teacher_trajectories(lm, [r], [1, 2], tok.pad_token_id)
    z = stats.basis.project(h)[0]  # [L, T, r]
    torch.testing.assert_close(stats.step_anchor[0], z[:, list(r.handovers)].transpose(0, 1), atol=1e-5, rtol=1e-4)

    student, tok = build_model(cfg, METHODS["lori"], train)
    state = lori_method.setup_training(student, cfg, train)
    for stage, replaced in ((2, 2), (4, 3)):
        items = [lori_method.METHOD.render(ex, tok, cfg, stage) | {"index": i} for i, ex in enumerate(train[:4])]
        assert {it["groups"] for it in items} == {replaced} and {it["carried"] for it in items} == {replaced}
        batch = lori_method.METHOD.collate(items, tok.pad_token_id)
        student.zero_grad()
        norm = Norm(tokens=sum(it["n_target"] for it in items), examples=4)
        loss, parts = lori_method.loss(student, batch, norm, state)
        assert float(parts["step_anc"]) > 0
        loss.backward()
        assert student.lm.get_input_embeddings().weight.grad.abs().sum() > 0
    batch["groups"][:] = 0  # no thought group: the term is exactly zero
    _, parts = lori_method.loss(student, batch, Norm(tokens=1, examples=4), state)
    assert float(parts["step_anc"]) == 0.0
    # two steps per group (curriculum.steps_per_group=2): stage 1 replaces steps 1-2 with one thought anchored to
    # the teacher's hand-over of step 2, which is exactly the one-step-per-group term with step 2's target
    pair = dataclasses.replace(cfg, curriculum=dataclasses.replace(cfg.curriculum, steps_per_group=2))
    items = [lori_method.METHOD.render(ex, tok, pair, 1) | {"index": i} for i, ex in enumerate(train[:4])]
    assert {(it["latent_steps"], it["groups"], it["carried"]) for it in items} == {(1, 1, 2)}
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    _, parts = lori_method.loss(student, batch, Norm(tokens=1, examples=4), state)
    out = student(batch["prompt_ids"], batch["prompt_mask"], batch["suffix_ids"], batch["suffix_mask"],
                  latent_steps=batch["latent_steps"])
    rows = torch.arange(4)
    t = state.stats.batch(batch["index"], "cpu")
    z = state.basis.project(out.prompt_states[:, state.layers, None])[:, :, 0]  # the <bot> state feeds thought 1
    expected = ((z - t["step_anchor"][rows, 1]) ** 2 / (state.step_var[1] + 1e-6)).mean(-1)  # [B, L]: step 2's
    torch.testing.assert_close(parts["step_anc"], expected.mean(1).sum() / 4, atol=1e-5, rtol=1e-4)


# Golden values, as the baselines have (tests/methods/test_baselines.py): produced once by running this code (torch
# 2.13 CPU, transformers 5.23, float32) with
#   OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/methods/test_lori.py -k golden   (the assertion prints the values)
# and hard-coded; they must change whenever the LoRi loss, its rendering, the cache's statistics or the tiny-model
# initialisation changes. The student is the seeded random teacher itself with a seeded projector (its latent
# states are then not the teacher's rationale states, so every term is non-zero); final stage, K = 3, 8 examples.
LORI_GOLDEN = {"loss": 39.07063, "ce": 3.005201, "rat_mean": 8.208340, "rat_cov": 86.25006, "anc": 0.09433906}


def test_lori_loss_golden_value(teacher, tmp_path):
    from lori.models.build import load_pretrained

    folder, train = teacher
    cfg = lori_cfg(folder, tmp_path / "cache", "lori.lam=0.5", "lori.alpha=0.7", "lori.beta=2.0")
    precompute(cfg)
    lm, tok = load_pretrained(folder)
    torch.manual_seed(0)  # the projector's initialisation
    student = lori_method.METHOD.wrap(lm, tok, cfg)
    state = lori_method.setup_training(student, cfg, train)
    items = [render(ex, tok, cfg) | {"index": i} for i, ex in enumerate(train[:8])]
    batch = lori_method.METHOD.collate(items, tok.pad_token_id)
    loss, parts = lori_method.loss(student, batch, Norm(tokens=sum(it["n_target"] for it in items), examples=8), state)
    got = {"loss": float(loss.detach())} | {k: float(v) for k, v in parts.items()}
    # L = L_task + alpha (L_rat + beta L_anc), L_rat = mean + lam cov (docs/methods.md), from the parts by hand
    assert got["loss"] == pytest.approx(got["ce"] + 0.7 * (got["rat_mean"] + 0.5 * got["rat_cov"] + 2.0 * got["anc"]),
                                        rel=1e-6)
    assert got == pytest.approx(LORI_GOLDEN, rel=1e-4), f"{got}"
