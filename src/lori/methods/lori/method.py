"""LoRi (arXiv 2606.05315): a latent student aligned with the teacher's reasoning in a shared low-rank subspace.

Rendering: ``[bos] question || <bot>`` -> K continuous thoughts -> ``<eot> #### answer <eos>`` (the latent family's,
``methods/thoughts.py``, with K = ``lori.latent_steps`` and ``lori.projector``). Loss (docs/method.md, piece 6)::

    L = L_task + alpha (L_rat + beta L_anc)
    L_task = CE on "#### answer <eos>" (teacher-forced)
    L_rat  = sum_l w_l ( ||mu_S_l - mu_T_l||^2 + lam ||C_S_l - C_T_l||_F^2 )   over the K latent states
    L_anc  = sum_l w_l ||U_l^T h_S_anchor_l - a_T_l||^2                         at the position before the answer

The teacher's statistics come from the cache written by ``lori precompute``; training never runs the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import LoRiConfig
from ...data.schema import Example
from ...errors import LoriError
from ...losses import IGNORE_INDEX, anchor_loss, combine, rationale_loss, standardized_loss, teacher_energy
from ...models.build import num_layers
from ...models.latent_student import LatentOutput, LatentStudent
from ...subspace.basis import Basis
from ...subspace.stats import triu_unpack
from ...subspace.trajectory import step_states, trajectory_statistics
from ...utils import pad
from .. import thoughts
from ..common import Method
from ..thoughts import Thoughts
from .cache import TeacherStats, load_cache
from .teacher import fingerprint, render_teacher, resolve_layers, step_value_tokens, teacher_path


# ------------------------------------------------------------------------------------------------ the student
# The latent family's rendering, batching and wrapper (methods/thoughts.py), with LoRi's K and projector.

THOUGHTS = Thoughts(latent_steps=lambda cfg: cfg.lori.latent_steps, projector=lambda cfg: cfg.lori.projector)


@dataclass
class LoriState:
    """What LoRi's loss reads at every step, built once by :func:`setup_training` and passed to :func:`loss` by the
    training loop: the teacher statistics (the cache stays on the CPU; each step moves its examples' rows), the
    subspace basis and the fixed normalisers on the training device."""

    cfg: LoRiConfig
    stats: TeacherStats
    basis: Basis
    layers: list[int]
    scale: torch.Tensor  # [L]: the teacher's energy per layer over the whole cache
    anchor_scale: torch.Tensor  # [L]: the teacher's mean squared anchor norm per layer
    thoughts_per_step: int
    prefix_var: torch.Tensor | None = None  # [S, L, r]: the teacher's variance of each prefix mean across examples
    step_var: torch.Tensor | None = None  # [S, L, r]: the teacher's variance of each step's hand-over state


def _variance_across_examples(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x [N, S, L, r]`` with ``valid [N, S]`` -> the variance over the valid examples, ``[S, L, r]``."""
    m = valid[:, :, None, None].float()
    n = m.sum(0).clamp(min=1)
    mean = (x * m).sum(0) / n
    return (((x - mean) ** 2) * m).sum(0) / n


def setup_training(student: LatentStudent, cfg, train_set: list[Example], device=None) -> LoriState:
    """The teacher statistics (refusing a stale cache) and the fixed per-layer loss scales, on ``device``."""
    if cfg.lori.cache_dir is None:
        raise LoriError("lori.cache_dir is required for method: lori; run `lori precompute` with the same config")
    teacher = teacher_path(cfg)
    stats = load_cache(cfg.lori.cache_dir, fingerprint(cfg, teacher, train_set, num_layers(student.lm)))
    if stats.mu.shape[0] != len(train_set):
        raise LoriError(f"{cfg.lori.cache_dir}: {stats.mu.shape[0]} cached examples for {len(train_set)} training "
                        "examples; run `lori precompute` again")
    device = torch.device("cpu") if device is None else torch.device(device)
    # Fixed normalisers over the whole cache, so micro-batching never changes the loss.
    if stats.cov is not None:
        scale = teacher_energy(stats.mu, triu_unpack(stats.cov), centred=cfg.lori.centred, example_mask=stats.valid)
    else:  # a cache written with lori.cache_cov=false keeps the covariance's trace
        scale = teacher_energy(stats.mu, None, centred=cfg.lori.centred, example_mask=stats.valid,
                               trace=stats.cov_trace)
    anchor_scale = (stats.anchor[stats.valid] ** 2).sum(-1).mean(0)
    prefix_var = None if stats.prefix_mu is None else _variance_across_examples(stats.prefix_mu, stats.prefix_valid)
    step_var = None if stats.step_anchor is None else _variance_across_examples(stats.step_anchor, stats.step_valid)
    return LoriState(
        cfg=cfg.lori, stats=stats, basis=Basis.from_dict({k: v.to(device) for k, v in stats.basis.to_dict().items()}),
        layers=resolve_layers(cfg.lori, num_layers(student.lm)), scale=scale.to(device),
        anchor_scale=anchor_scale.to(device), thoughts_per_step=cfg.curriculum.thoughts_per_step,
        prefix_var=None if prefix_var is None else prefix_var.to(device),
        step_var=None if step_var is None else step_var.to(device),
    )


def loss(module, batch: dict[str, torch.Tensor], norm,
         state: LoriState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lc = state.cfg
    out, ce = thoughts.student_ce(module, batch, norm)
    parts = {"ce": ce.detach(), **thoughts.answer_parts(out, batch, norm)}
    # (choice) The cached statistics describe the whole rationale, so L_rat applies once every step is latent (the
    # final curriculum stage); the anchor hand-over to the answer exists at every stage and L_anc applies throughout.
    use_rat = (lc.first_order or lc.second_order) and bool(batch["final"])
    # (choice, lori.prefix_statistics) before the final stage: the thoughts' mean against the teacher's mean over
    # the rationale steps they replace
    use_prefix = lc.prefix_statistics and lc.first_order and not batch["final"]
    if not (use_rat or use_prefix or lc.anchor or lc.step_anchors):
        return ce, parts
    device = ce.device
    layers = state.layers
    h = out.latent_states[:, layers]  # [B, L, K, d]
    rows = torch.arange(h.shape[0], device=device)
    anchor_h = torch.stack([out.suffix_states[l][rows, batch["anchor"]] for l in layers], dim=1)  # [B, L, d]
    mask = torch.arange(h.shape[2], device=device)[None] < batch["latent_steps"].to(device)[:, None]  # [B, K]
    mu_s, C_s, a_s = trajectory_statistics(state.basis, h, mask, anchor_h, lc.centred)
    t = state.stats.batch(batch["index"].cpu(), device)
    rat = anc = None
    if use_prefix:
        if "prefix_mu" not in t:
            raise LoriError(f"{lc.cache_dir}: the cache has no per-prefix statistics (lori.prefix_statistics=true); "
                            "run `lori precompute` again")
        k = batch["prefix_steps"].to(device)
        rows_t = torch.arange(k.shape[0], device=device)
        mu_t = t["prefix_mu"][rows_t, (k - 1).clamp(min=0)]  # [B, L, r]
        valid = t["valid"] & (k > 0) & t["prefix_valid"][rows_t, (k - 1).clamp(min=0)]
        if lc.prefix_norm == "std":
            var = state.prefix_var[(k - 1).clamp(min=0)]  # [B, L, r]
            rat = standardized_loss(mu_s, mu_t, var, example_mask=valid, num_examples=norm.examples)
        else:
            rat, _ = rationale_loss(mu_s, None, mu_t, None, first_order=True, second_order=False,
                                    normalize=lc.normalize, centred=lc.centred, example_mask=valid,
                                    num_examples=norm.examples, scale=state.scale)
        parts["rat_prefix"] = rat.detach()
        use_rat = True
    elif use_rat:
        if lc.second_order and "cov" not in t:
            raise LoriError(f"{lc.cache_dir}: the cache has no covariance (written with lori.cache_cov=false) but "
                            "lori.second_order reads it; run `lori precompute` into another lori.cache_dir")
        C_s, C_t = (C_s, t["cov"]) if lc.second_order else (None, None)
        rat, rparts = rationale_loss(mu_s, C_s, t["mu"], C_t, lam=lc.lam, first_order=lc.first_order,
                                     second_order=lc.second_order, normalize=lc.normalize, centred=lc.centred,
                                     example_mask=t["valid"], num_examples=norm.examples,
                                     scale=state.scale)
        parts["rat_mean"], parts["rat_cov"] = rparts["mean"], rparts["cov"]
    if lc.anchor:
        anc = anchor_loss(a_s, t["anchor"], normalize=lc.normalize, example_mask=t["valid"],
                          num_examples=norm.examples, scale=state.anchor_scale,
                          layer_weights=None if lc.anchor_layer_mean else [1.0] * a_s.shape[1])
        parts["anc"] = anc.detach()
    total = ce if not (use_rat or lc.anchor) else combine(ce, rat, anc, alpha=lc.alpha, beta=lc.beta,
                                                          use_anchor=lc.anchor, use_rationale=use_rat)
    if lc.step_anchors:
        st = step_anchor_loss(state, out, batch, t, norm) if lc.step_target == "hidden" else \
            step_token_loss(module, state, out, batch, norm)
        parts["step_anc"] = st.detach()
        total = total + lc.alpha * lc.step_weight * st
    return total, parts


def step_targets(groups: torch.Tensor, carried: torch.Tensor, S: int) -> torch.Tensor:
    """Which step each thought group is anchored to, ``[B, S]`` (lori.step_anchors; docs/methods.md): the ``carried``
    steps are spread evenly over the ``groups`` (group g carries steps floor(g n / G) .. floor((g+1) n / G) - 1) and
    is anchored to the last of them, so with fewer groups than steps (K < L) the last thought carries the final
    value; with as many, group g is step g (:func:`lori.methods.thoughts.group_step` for one group)."""
    g = torch.arange(S, device=groups.device)[None]
    G = groups.clamp(min=1)[:, None]
    return ((g + 1) * carried[:, None] // G - 1).clamp(0, S - 1)


def step_anchor_loss(state: LoriState, out: LatentOutput, batch, t: dict, norm) -> torch.Tensor:
    """lori.step_anchors: for each thought group g, the state feeding its first thought (``<bot>`` for g = 0, else
    the thought before, index g c) against the teacher's hand-over state of its step (:func:`step_targets`),
    standardised per subspace direction by the teacher's variance across examples; summed over groups, averaged
    over examples."""
    if "step_anchor" not in t:
        raise LoriError(f"{state.cfg.cache_dir}: the cache has no step anchors (lori.step_anchors=true); run "
                        "`lori precompute` again")
    device = out.latent_states.device
    layers, c = state.layers, state.thoughts_per_step
    feed = torch.cat([out.prompt_states[:, layers, None], out.latent_states[:, layers, :-1]], dim=2)  # [B, L, K, d]
    S = t["step_anchor"].shape[1]
    groups = batch["groups"].to(device)
    carried = batch["carried"].to(device).clamp(max=S)  # the replaced steps; at the final stage every step
    steps = torch.arange(S, device=device)
    pos = (steps * c).clamp(max=feed.shape[2] - 1)[None].expand(feed.shape[0], -1)  # [B, S]
    z = step_states(state.basis, feed, pos)  # [B, S, L', r]
    target = step_targets(groups, carried, S)  # [B, S]
    rows = torch.arange(target.shape[0], device=device)[:, None]
    valid = (steps[None] < groups[:, None]) & t["step_valid"][rows, target] & t["valid"][:, None]
    B, _, L, r = z.shape
    # lori.step_norm: per direction in units of the teacher's variance across examples, or the raw squared error
    var = None if state.cfg.step_norm == "none" else state.step_var[target].reshape(B * S, L, r)
    return standardized_loss(z.reshape(B * S, L, r), t["step_anchor"][rows, target].reshape(B * S, L, r), var,
                             example_mask=valid.reshape(-1), num_examples=norm.examples)


def card(cfg) -> list[str]:
    """The model card's LoRi line (``lori export``): the subspace, the loss terms and their weights, the teacher."""
    lc = cfg.lori
    rank = f"rank {lc.rank}" if lc.energy is None else f"energy {lc.energy} (rank at most {lc.rank})"
    terms = [t for t, on in (("first-order", lc.first_order), ("second-order", lc.second_order),
                             ("answer anchor", lc.anchor), ("step anchors", lc.step_anchors),
                             ("per-prefix statistics", lc.prefix_statistics)) if on]
    teacher = Path(lc.teacher).name if lc.teacher else "?"
    return [f"- **LoRi subspace**: {rank}, layers {lc.layers or 'all'}; terms: {', '.join(terms) or 'none'} "
            f"(alpha {lc.alpha}, beta {lc.beta}, lambda {lc.lam}); teacher `{teacher}`."]


def step_token_loss(module, state: LoriState, out: LatentOutput, batch, norm) -> torch.Tensor:
    """lori.step_target=token: for each thought group, the cross-entropy of the LM head at the last-layer state that
    feeds its first thought (as in :func:`step_anchor_loss`) against the first token of its step's result in the
    teacher's rationale (``batch["step_tokens"]``); summed over groups, averaged over examples."""
    head = getattr(module, "module", module).lm.get_output_embeddings()
    targets = batch["step_tokens"].to(out.latent_states.device)  # [B, S], IGNORE_INDEX where there is no step
    c, S = state.thoughts_per_step, targets.shape[1]
    feed = torch.cat([out.prompt_states[:, -1, None], out.latent_states[:, -1, :-1]], dim=1)  # [B, K, d]
    steps = torch.arange(S, device=feed.device)
    pos = (steps * c).clamp(max=feed.shape[1] - 1)
    logits = head(feed[:, pos]).float()  # [B, S, V]
    groups = batch["groups"].to(feed.device)
    carried = batch["carried"].to(feed.device).clamp(max=S)
    targets = targets.gather(1, step_targets(groups, carried, S))  # each group's step (as the step anchors)
    valid = (steps[None] < groups[:, None]) & (targets != IGNORE_INDEX)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten(), reduction="none").view_as(valid)
    return torch.where(valid, ce, ce.new_zeros(())).sum() / norm.examples


def render(example: Example, tokenizer, cfg, stage: int) -> dict:
    """The latent family's rendering; with lori.step_target=token also ``step_tokens``, the first token of each
    step's result in the teacher's rationale (what the step-token loss predicts)."""
    item = THOUGHTS.render(example, tokenizer, cfg, stage)
    if cfg.lori.step_anchors and cfg.lori.step_target == "token":
        item["step_tokens"] = step_value_tokens(render_teacher(example, tokenizer, cfg.model.chat_template))
    return item


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    batch = thoughts.collate(items, pad_id)
    if "step_tokens" in items[0]:
        batch["step_tokens"] = pad([it["step_tokens"] for it in items], IGNORE_INDEX)[0]
    return batch


METHOD = Method(name="lori", render=render, prompt=thoughts.prompt, collate=collate, wrap=THOUGHTS.wrap,
                paper="LoRi, low-rank distillation of chain of thought into latent reasoning (arXiv 2606.05315)",
                setup_training=setup_training, loss=loss, generation_kwargs=thoughts.generation_kwargs,
                extra_tensors=thoughts.extra_tensors, thoughts=THOUGHTS, teacher_cache=True, card=card)
