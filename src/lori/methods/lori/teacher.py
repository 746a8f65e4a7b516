"""LoRi's teacher side (``lori precompute``): run the frozen teacher once over the training data, fit the shared
low-rank subspace on a calibration subset, and write the per-example LoRi statistics (mean, covariance, anchor per
layer) to a cache.

Training a LoRi student then never runs the teacher. The same ``lori.subspace.trajectory.trajectory_statistics``
computes the teacher's statistics here and the student's during training, so cached and on-the-fly statistics agree
by construction. Several processes (``torchrun --nproc_per_node N -m lori precompute ...``) deal the calibration and
statistics batches round-robin and the main process alone writes, so a cache written by N processes holds, batch for
batch, what one process writes (docs/training.md, Several processes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from dataclasses import dataclass

from ...config import Config, LoRiConfig, check_subspace
from ...data.render import answer_anchor, explicit_cot, segments, step_spans
from ...data.schema import Example
from ...data.splits import load_split
from ...distributed import all_reduce_sum, broadcast_object, gather_to_main, process_state
from ...errors import ConfigError, LoriError
from ...losses.task import IGNORE_INDEX
from ...models.build import hidden_size, num_layers
from ...models.checkpoint_folders import resolve_checkpoint
from ...models.loading import open_model
from ...subspace import Basis, LayerGramAccumulator, SecondMomentAccumulator, fit_bases, fit_layer_factor
from ...subspace.stats import triu_pack
from ...subspace.trajectory import prefix_means, step_states, trajectory_statistics
from ...utils import check_writable, pad
from .cache import CacheWriter, cache_bytes, examples_digest, teacher_digests

# ------------------------------------------------------------------------------------------------ the teacher side
# The cache's fingerprint and the teacher's rendering, read by the statistics pass and by method.py's setup_training.

RENDER_VERSION = "v4"  # bump when the rendering of teacher trajectories changes (v4: hand-overs from character offsets)


def resolve_layers(lcfg: LoRiConfig, n_layers: int) -> list[int]:
    layers = lcfg.layers or list(range(1, n_layers + 1))
    bad = [l for l in layers if not 1 <= l <= n_layers]
    if bad:
        raise ConfigError(f"lori.layers: {bad} out of range; the teacher has layers 1..{n_layers}")
    return layers


def teacher_path(cfg: Config) -> Path:
    if cfg.lori.teacher is None:
        raise ConfigError("lori.teacher is required: the explicit-CoT (cot-sft) checkpoint to distil from")
    return resolve_checkpoint(cfg.lori.teacher, "lori.teacher")


def fingerprint(cfg: Config, teacher: Path, train: list[Example], n_layers: int) -> dict:
    lc = cfg.lori
    # lori.cache_dtype, cache_steps, cache_cov and basis enter only when not the default, so that a cache written
    # before they existed (float32, with the per-step statistics and the covariance, PCA basis) keeps its fingerprint
    storage = ({"cache_dtype": lc.cache_dtype} if lc.cache_dtype != "float32" else {}) | (
        {} if lc.cache_steps else {"cache_steps": False}) | ({} if lc.cache_cov else {"cache_cov": False}) | (
        {} if lc.basis == "pca" else {"basis": lc.basis}) | (
        {"basis_seed": lc.basis_seed} if lc.basis == "random" else {})
    return {
        **teacher_digests(teacher),
        "data": examples_digest(train),
        "layers": resolve_layers(lc, n_layers),
        "rank": lc.rank,
        "energy": lc.energy,
        "shared_basis": lc.shared_basis,
        "layer_rank": lc.layer_rank,
        "centred": lc.centred,
        "calib_size": lc.calib_size,
        "render": RENDER_VERSION,
    } | storage


@dataclass
class Rendered:
    input_ids: list[int]
    start: int  # first rationale position
    length: int  # rationale positions
    anchor: int  # position of the last `####` marker token
    ends: tuple[int, ...] = ()  # end (exclusive, in rationale positions) of each step
    # per step, the rationale position whose next token is the step's result (the `=` of `<< b = 7 >>`): where the
    # teacher hands the step's value over (lori.step_anchors); -1 if that is before the rationale
    handovers: tuple[int, ...] = ()
    unlocated: tuple[int, ...] = ()  # steps whose result does not start at a token boundary (hand-over -1)


def render_teacher(example: Example, tokenizer, chat_template: bool) -> Rendered:
    """The teacher's explicit-CoT rendering of ``example`` (``chat_template``: ``model.chat_template``), with the
    rationale's bounds, its steps' ends and hand-overs (lori.data.render.step_spans), and the answer anchor."""
    s = segments(example, tokenizer, chat_template)
    spans = step_spans(example, tokenizer)
    ends = tuple(min(len(s.rationale), e) for e in spans.ends)
    return Rendered(explicit_cot(s)["input_ids"], len(s.prompt), len(s.rationale), answer_anchor(s), ends,
                    spans.handovers, spans.unlocated)


def step_value_tokens(r: Rendered) -> list[int]:
    """Per step, the first token of its result in the teacher's rationale: the token after the hand-over position
    (``IGNORE_INDEX`` for a step whose result lies outside the rationale)."""
    return [r.input_ids[r.start + h + 1] if 0 <= h + 1 < r.length else IGNORE_INDEX for h in r.handovers]


@torch.no_grad()
def teacher_trajectories(lm, items: list[Rendered], layers: list[int], pad_id: int):
    """Teacher forward on a batch: ``h [B, L, T, d]`` at rationale positions, ``mask [B, T]``, ``anchor [B, L, d]``."""
    device = next(lm.parameters()).device
    ids, attn = pad([it.input_ids for it in items], pad_id)
    out = lm(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True)
    hs = torch.stack([out.hidden_states[l] for l in layers], dim=1).float()  # [B, L, S, d]
    T = max(1, max(it.length for it in items))
    pos = torch.zeros((len(items), T), dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.bool)
    for i, it in enumerate(items):
        pos[i, : it.length] = torch.arange(it.start, it.start + it.length)
        mask[i, : it.length] = True
    pos, mask = pos.to(device), mask.to(device)
    idx = pos[:, None, :, None].expand(-1, hs.shape[1], -1, hs.shape[-1])
    h = torch.gather(hs, 2, idx)
    anchor_idx = torch.tensor([it.anchor for it in items], device=device)
    anchor = hs[torch.arange(len(items), device=device), :, anchor_idx]  # [B, L, d]
    return h, mask, anchor


def check_cache_dir(cfg: Config) -> None:
    """Refuse a config without a writable ``lori.cache_dir`` (before any work; nothing is created)."""
    if cfg.lori.cache_dir is None:
        if cfg.method != "lori":
            raise ConfigError(f"lori precompute writes the teacher statistics a LoRi student trains on, but this "
                              f"config's method is {cfg.method}, which reads none: give a LoRi preset (e.g. "
                              "configs/chains-lori.yaml), or set method=lori with lori.teacher and lori.cache_dir")
        raise ConfigError("lori.cache_dir is required: where to write the teacher statistics")
    check_writable(Path(cfg.lori.cache_dir), "lori.cache_dir")


Timer = Callable[[str, Sequence[Rendered]], AbstractContextManager]  # timer(stage, items) -> a context manager


def _untimed(stage: str, items: Sequence[Rendered]) -> AbstractContextManager:
    return nullcontext()


def _size_ratio(raw: int, cached: int) -> str:
    """The cache against the raw trajectories: 11.0x smaller, or 2.5x larger (full width with its covariance)."""
    return f"{raw / max(cached, 1):.1f}x smaller" if cached <= raw else f"{cached / max(raw, 1):.1f}x larger"


def precompute(cfg: Config, timer: Timer | None = None) -> Path:
    """Write the teacher-statistics cache of ``cfg`` (resuming what an interrupted call left) and return its folder.

    ``timer(stage, items)``, if given, returns a context manager that wraps each stage (benchmarks/speed.py times
    them); nothing computed changes. Stages: "load" (the teacher), "calibrate" / "forward" (a teacher forward on
    ``items`` in the calibration / statistics pass), "fit" (the basis), "statistics" (of the forward just run),
    "write" (the shard of ``items``)."""
    span = timer or _untimed
    lc = cfg.lori
    check_cache_dir(cfg)
    state = process_state()
    rank, world, main, device = state.process_index, state.num_processes, state.is_main_process, state.device
    teacher = teacher_path(cfg)
    train = load_split(cfg.data, "train")
    with span("load", ()):
        lm, tokenizer = open_model(teacher, cfg)
    lm.eval().requires_grad_(False)
    lm.to(device)
    layers = resolve_layers(lc, num_layers(lm))
    # The subspace's bounds, before the calibration pass and before the cache folder exists.
    check_subspace(lc, hidden_size(lm), num_layers(lm), f"the teacher {teacher}")
    fp = fingerprint(cfg, teacher, train, num_layers(lm))
    # Every process reads the same manifest before any is written (the barrier below); only the main one writes.
    writer = CacheWriter(Path(lc.cache_dir), fp, len(train), lc.shard_size, lc.cache_dtype)
    have_basis = writer.has_basis()
    todo = [i for i in range(writer.n_shards) if not writer.done(i)]
    if main:
        for partial in writer.remove_partial_files():
            print(f"[lori] removed {partial}: a file an interrupted precompute did not finish writing")
    state.wait_for_everyone()
    rendered = [render_teacher(ex, tokenizer, cfg.model.chat_template) for ex in train]
    unlocated = [(ex.source, ex.steps[k]) for ex, r in zip(train, rendered) for k in r.unlocated]
    d = hidden_size(lm)
    pad_id = tokenizer.pad_token_id
    bs = lc.precompute_batch
    t0 = time.perf_counter()
    if main:
        print(f"[lori] precompute: teacher {teacher}, {len(train)} examples, layers {layers}, cache {lc.cache_dir}"
              + (f", {world} processes" if world > 1 else ""))

    if have_basis:
        basis = Basis.from_dict(load_file(str(Path(lc.cache_dir) / "basis.safetensors")))
        if main:
            print("[lori] subspace: reusing the fitted basis in the cache")
    else:
        calib = sorted(random.Random(cfg.data.seed).sample(range(len(train)), min(lc.calib_size, len(train))))
        acc = SecondMomentAccumulator(len(layers), d)
        batches = [calib[i : i + bs] for i in range(0, len(calib), bs)]
        mine = batches[rank::world]
        for b in tqdm(mine, desc="calibrate subspace", leave=False, disable=not main):
            items = [rendered[i] for i in b]
            with span("calibrate", items):
                h, mask, _ = teacher_trajectories(lm, items, layers, pad_id)
            acc.update(h.cpu(), mask.cpu())
        acc.load_state_dict(all_reduce_sum(acc.state_dict(), world, device))
        with span("fit", ()):
            basis = fit_bases(acc, rank=lc.rank, energy=lc.energy, shared=lc.shared_basis, kind=lc.basis,
                              seed=lc.basis_seed) if main else None
        basis = Basis.from_dict(broadcast_object(basis.to_dict() if main else None, world))
        if lc.layer_rank is not None:
            gram = LayerGramAccumulator(basis)
            for b in mine:
                items = [rendered[i] for i in b]
                with span("calibrate", items):
                    h, mask, _ = teacher_trajectories(lm, items, layers, pad_id)
                gram.update(h.cpu(), mask.cpu())
            gram.load_state_dict(all_reduce_sum(gram.state_dict(), world, device))
            with span("fit", ()):
                basis = fit_layer_factor(basis, gram, rank=lc.layer_rank, energy=None) if main else None
            basis = Basis.from_dict(broadcast_object(basis.to_dict() if main else None, world))
        if main:
            info = {"kind": lc.basis, "rank": basis.rank, "layer_rank": basis.layer_rank,
                    "energy_captured": [round(float(e), 4) for e in basis.energy_captured]}
            writer.write_basis(basis, info)
            print(f"[lori] subspace: {lc.basis} basis of rank {basis.rank}; energy captured per layer "
                  f"{', '.join(f'{e:.3f}' for e in info['energy_captured'])}")

    basis_dev = Basis.from_dict({k: v.to(device) for k, v in basis.to_dict().items()})
    max_steps = max(1, max(len(r.ends) for r in rendered))
    raw_bytes = 4 * sum((r.length + 1) * len(layers) * d for r in rendered)  # fp32 trajectories + anchors
    if main and len(todo) < writer.n_shards:
        print(f"[lori] resuming: {writer.n_shards - len(todo)} of {writer.n_shards} shards already complete")
    bar = tqdm(total=sum(writer.shard_range(i)[1] - writer.shard_range(i)[0] for i in todo), desc="precompute",
               disable=not main)
    for i in todo:
        start, end = writer.shard_range(i)
        # The batches one process would run, dealt round-robin: the same arithmetic on any number of processes.
        chunks = list(range(start, end, bs))
        mine = {}
        for s in chunks[rank::world]:
            chunk = rendered[s : min(s + bs, end)]
            with span("forward", chunk):
                h, mask, anchor = teacher_trajectories(lm, chunk, layers, pad_id)
            with span("statistics", chunk):
                mu, C, a = trajectory_statistics(basis_dev, h, mask, anchor, lc.centred)
                per_step = (None,) * 4
                if lc.cache_steps:
                    ends, _ = pad([r.ends for r in chunk], 0, width=max_steps)
                    prefix = prefix_means(basis_dev, h, ends.to(h.device))
                    hand, _ = pad([r.handovers for r in chunk], -1, width=max_steps)
                    steps = step_states(basis_dev, h, hand.to(h.device))
                    per_step = (prefix.cpu(), (ends > 0), steps.cpu(), hand >= 0)
                # without lori.cache_cov only the covariance's trace, what the energy normalisers read
                cov = triu_pack(C) if lc.cache_cov else torch.diagonal(C, dim1=-2, dim2=-1).sum(-1)
                mine[s] = (mu.cpu(), cov.cpu(), a.cpu(), mask.any(-1).cpu(), *per_step)
            if world == 1:
                bar.update(len(chunk))
        gathered = gather_to_main(mine, world, rank)
        if main:
            if world > 1:
                bar.update(end - start)
            parts = {s: v for part in gathered for s, v in part.items()}
            mus, covs, anchors, valid, *per_step = zip(*(parts[s] for s in chunks))
            per_step = [torch.cat(x) if lc.cache_steps else None for x in per_step]
            cov = torch.cat(covs)
            with span("write", rendered[start:end]):
                writer.write_shard(i, torch.cat(mus), cov if lc.cache_cov else None, torch.cat(anchors),
                                   torch.cat(valid), cov_trace=None if lc.cache_cov else cov,
                                   **dict(zip(("prefix_mu", "prefix_valid", "step_anchor", "step_valid"), per_step)))
    bar.close()
    if main:
        size = cache_bytes(Path(lc.cache_dir))
        n_steps = sum(len(r.handovers) for r in rendered)
        writer.finish({"raw_trajectory_bytes": raw_bytes, "cache_bytes": size,
                       "handovers": {"steps": n_steps, "unlocated": len(unlocated),
                                     "unlocated_examples": [f"{src}: {step}" for src, step in unlocated[:20]]}})
        if unlocated:
            print(f"[lori] hand-overs: {len(unlocated)} of {n_steps} steps have a result that does not start at a "
                  f"token boundary (e.g. {unlocated[0][0]}: {unlocated[0][1]!r}); their step anchors are left out")
        print(f"[lori] cache: {size / 2**20:.1f} MiB ({lc.cache_dtype}, {lc.basis} basis of rank {basis.rank}"
              f"{'' if lc.cache_cov else ', no covariance'}{'' if lc.cache_steps else ', no per-step statistics'}) "
              f"for {len(train)} examples, against {raw_bytes / 2**20:.1f} MiB "
              f"of raw fp32 teacher trajectories ({_size_ratio(raw_bytes, size)}); "
              f"{time.perf_counter() - t0:.0f}s")
        if not writer.manifest["complete"]:  # pragma: no cover - every shard was just written
            raise LoriError(f"{lc.cache_dir}: precompute ended with missing shards")
    state.wait_for_everyone()
    return Path(lc.cache_dir)
