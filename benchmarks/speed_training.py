"""The training side of benchmarks/speed.py: ``Point`` (one benchmark shape: a random-init tiny teacher saved as a
checkpoint, the LoRi and CODI configs on it, its examples) with the training step of each method, timed in turn,
the on-the-fly teacher that stands in for the cache, and LoRi's loss terms alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from lori.config import load_config
from lori.data.splits import load_split
from lori.losses import anchor_loss, rationale_loss
from lori.methods import METHODS
from lori.methods.common import step_norm
from lori.methods.lori.teacher import render_teacher, teacher_trajectories
from lori.models.build import load_pretrained, tiny_model
from lori.models.loading import builtin_tokenizer
from lori.subspace.trajectory import trajectory_statistics
from speed_common import MEMORY_STEPS, PeakMemory, interleaved_medians, to_device

# Each method's protocol object (lori.methods.common.Method): render, collate, wrap, loss, prompt, ...
cot_sft, no_cot, codi, lori_method = (METHODS[k] for k in ("cot-sft", "no-cot", "codi", "lori"))


def training_step(module, loss_fn, batch, norm, autocast, before_step=None) -> Callable[[], None]:
    """One optimizer step (forward + backward + AdamW) of ``module`` on ``batch``, as a closure with its own AdamW.
    ``before_step`` runs first in every step (timed with it): the on-the-fly teacher forward."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95))
    module.train()

    def step():
        with autocast():
            if before_step is not None:
                before_step()
            loss, _ = loss_fn(module, batch, norm)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class OnTheFlyStats:
    """Stands in for the cache (``lori.methods.lori.cache.TeacherStats``) in ``lori.methods.lori.loss``: ``batch`` returns
    the statistics of a teacher forward run in the same step instead of reading them from the cache."""

    def __init__(self, basis):
        self.basis = basis
        self.current: dict[str, torch.Tensor] | None = None

    def batch(self, index, device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.current.items()}


def loss_term_fns(state, batch: int, K: int, device) -> dict[str, Callable[[], None]]:
    """LoRi's loss terms alone, forward + backward, on student states of a step's shapes (``h [B, L, K, d]``, the
    anchor ``[B, L, d]``; random, as the values do not change the cost), with the cache rows of ``batch`` examples,
    as four closures to time (:func:`interleaved_medians`, beside the LoRi step they are a share of):

    - *cache read*: ``state.stats.batch`` (index the rows, unpack the covariance triangles, move to the device);
    - *projection*: ``U_l^T h`` at the K states and the anchor (O(B L K d r));
    - *+ first order*: the masked mean, the mean term of L_rat and L_anc (O(B L K r));
    - *full*: ``trajectory_statistics`` (mean and covariance, O(B L K r^2)) with the whole ``rationale_loss`` and
      ``anchor_loss`` (covariance term O(B L r^2)) as ``lori.methods.lori.loss`` calls them.

    :func:`term_split` turns their medians into the pieces."""
    lc, basis = state.cfg, state.basis
    L, d = len(state.layers), basis.dim
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(batch, L, K, d, generator=g).to(device)
    a0 = torch.randn(batch, L, d, generator=g).to(device)
    mask = torch.ones(batch, K, dtype=torch.bool, device=device)
    index = torch.arange(batch) % state.stats.mu.shape[0]
    t = state.stats.batch(index, device)

    def read():
        state.stats.batch(index, device)

    def projection():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        (basis.project(h).sum() + basis.project_anchor(a).sum()).backward()

    def first_order():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        z, za = basis.project(h), basis.project_anchor(a)
        mu = z.mean(2)  # every position valid here, as in the final stage
        rat, _ = rationale_loss(mu, None, t["mu"], None, first_order=True, second_order=False, normalize=lc.normalize,
                                centred=lc.centred, example_mask=t["valid"], scale=state.scale)
        anc = anchor_loss(za, t["anchor"], normalize=lc.normalize, example_mask=t["valid"], scale=state.anchor_scale)
        (rat + anc).backward()

    def full():
        h, a = h0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        mu, C, za = trajectory_statistics(basis, h, mask, a, lc.centred)
        rat, _ = rationale_loss(mu, C, t["mu"], t["cov"], lam=lc.lam, normalize=lc.normalize, centred=lc.centred,
                                example_mask=t["valid"], scale=state.scale)
        anc = anchor_loss(za, t["anchor"], normalize=lc.normalize, example_mask=t["valid"], scale=state.anchor_scale)
        (rat + anc).backward()

    return {"terms:read": read, "terms:projection": projection, "terms:first": first_order, "terms:full": full}


def term_split(med: dict[str, float]) -> dict[str, float]:
    """``{"read", "projection", "moments", "covariance", "total"}`` from the medians of :func:`loss_term_fns`:
    moments = first order - projection, covariance = full - first order, total = read + full (differences of
    medians: a piece of a few microseconds can read slightly off)."""
    r, p, f1, f = (med[f"terms:{k}"] for k in ("read", "projection", "first", "full"))
    return {"read": r, "projection": p, "moments": f1 - p, "covariance": f - f1, "total": r + f}


class Point:
    """One benchmark shape: a random-init tiny teacher of ``hidden`` width saved in ``folder/teacher``, the config
    of LoRi (K, rank, cache options) and CODI (same K) on it, its training examples and tokenizer. Every model of
    the point loads from that checkpoint."""

    def __init__(self, folder: Path, args, device, *, hidden: int, latent_steps: int, rank: int, n_examples: int,
                 cache_dtype: str, cache_steps: bool):
        self.teacher_dir, self.cache_dir = folder / "teacher", folder / "cache"
        self.device, self.K, self.hidden = device, latent_steps, hidden
        self.cfg = load_config(None, [
            "method=lori", f"model.arch={args.arch}", f"model.hidden_size={hidden}",
            f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
            f"model.intermediate_size={4 * hidden}", f"data.digits=[{args.digits[0]},{args.digits[1]}]",
            f"data.train_size={n_examples}", "data.valid_size=1", "data.test_size=1", f"data.seed={args.seed}",
            f"lori.teacher={self.teacher_dir}", f"lori.cache_dir={self.cache_dir}", f"lori.latent_steps={latent_steps}",
            f"lori.rank={min(rank, hidden)}", f"lori.calib_size={n_examples}", f"lori.cache_dtype={cache_dtype}",
            f"lori.cache_steps={str(cache_steps).lower()}", f"codi.latent_steps={latent_steps}",
        ])
        self.seed = args.seed
        self.train = load_split(self.cfg.data, "train")
        tok = builtin_tokenizer(self.train)
        torch.manual_seed(args.seed)
        teacher = tiny_model(self.cfg.model, tok, max_positions=self.cfg.data.max_length)
        teacher.save_pretrained(self.teacher_dir)
        tok.save_pretrained(self.teacher_dir)
        self.n_params = sum(p.numel() for p in teacher.parameters())
        del teacher
        _, self.tok = load_pretrained(self.teacher_dir)  # the tokenizer as every checkpoint user sees it
        self.pad = self.tok.pad_token_id

    def with_cache(self, folder: Path, **lori_fields):
        """This point's config with another cache folder and lori.* options (same teacher, data and K)."""
        return dataclasses.replace(self.cfg, lori=dataclasses.replace(self.cfg.lori, cache_dir=str(folder),
                                                                      **lori_fields))

    def lm(self):
        return load_pretrained(self.teacher_dir, self.cfg.model.dtype)[0].to(self.device)

    def student(self, method=lori_method):
        torch.manual_seed(self.seed)  # same projector init in every measurement
        s = method.wrap(self.lm(), self.tok, self.cfg)
        state = method.setup_training(s, self.cfg, self.train, self.device)
        return s.to(self.device), state

    def batch(self, key: str, n: int):
        """(batch on the device, Norm, positions per example) of the first ``n`` training examples for a method."""
        method = {"cot": cot_sft, "nocot": no_cot, "codi": codi, "lori": lori_method}[key]
        stage = 1  # curriculum.stages = 0: stage 1 is the final rendering (K thoughts, no language steps)
        items = [method.render(ex, self.tok, self.cfg, stage) | {"index": i} for i, ex in enumerate(self.train[:n])]
        batch = method.collate(items, self.pad)
        width = (batch["input_ids"].shape[1] if "input_ids" in batch else
                 batch["prompt_ids"].shape[1] + self.K + batch["suffix_ids"].shape[1])
        if "teacher_input_ids" in batch:  # CODI: the latent student's positions + the teacher pass's
            width = f"{width} + {batch['teacher_input_ids'].shape[1]}"
        return to_device(batch, self.device), step_norm(items, list(range(len(items)))), width

    def step_fn(self, key: str, n: int, autocast) -> tuple[Callable[[], None], object]:
        """(one training step of a method on the first ``n`` examples, positions per example); the closure holds the
        model. ``key``: cot, nocot, codi, lori (precomputed cache) or fly (LoRi with the teacher run in the step)."""
        b, norm, width = self.batch("lori" if key == "fly" else key, n)
        if key in ("cot", "nocot"):
            return training_step(self.lm(), (cot_sft if key == "cot" else no_cot).loss, b, norm, autocast), width
        if key == "codi":
            model, state = self.student(codi)
            return training_step(model, lambda m, bb, nn: codi.loss(m, bb, nn, state), b, norm, autocast), width
        model, state = self.student()
        before = self._on_the_fly(state, n) if key == "fly" else None
        return training_step(model, lambda m, bb, nn: lori_method.loss(m, bb, nn, state), b, norm, autocast,
                             before), width

    def step_times(self, keys: list[str], n: int, steps: int, autocast, terms: bool = False):
        """Median step seconds of each method in ``keys``, interleaved (with LoRi's loss terms alone if ``terms``),
        then each method's peak memory over MEMORY_STEPS steps on its own (built alone). Returns ({key: (seconds, bytes, positions)},
        the term split or None)."""
        fns, widths = {}, {}
        for k in keys:
            fns[k], widths[k] = self.step_fn(k, n, autocast)
        if terms:
            _, state = self.student()
            fns |= loss_term_fns(state, n, self.K, self.device)
        med = interleaved_medians(fns, self.device, steps)
        del fns
        out = {}
        for k in keys:
            with PeakMemory(self.device) as mem:
                fn, _ = self.step_fn(k, n, autocast)
                for _ in range(MEMORY_STEPS):
                    fn()
                del fn
            out[k] = (med[k], mem.bytes, widths[k])
        return out, term_split(med) if terms else None

    def _on_the_fly(self, state, n: int):
        """Replace the cache in ``state`` with a teacher forward run in the same step; return that forward."""
        frozen = self.lm().eval().requires_grad_(False)
        basis = state.basis
        fresh = OnTheFlyStats(type(basis).from_dict({k: v.to(self.device) for k, v in basis.to_dict().items()}))
        state.stats = fresh
        rendered = [render_teacher(ex, self.tok, self.cfg.model.chat_template) for ex in self.train[:n]]

        def teacher_forward():
            with torch.no_grad():
                h, mask, anchor = teacher_trajectories(frozen, rendered, state.layers, self.pad)
                mu, C, a = trajectory_statistics(fresh.basis, h, mask, anchor, self.cfg.lori.centred)
            fresh.current = {"mu": mu.float(), "cov": C.float(), "anchor": a.float(), "valid": mask.any(-1)}

        return teacher_forward
