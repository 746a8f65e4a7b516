"""The latent-reasoning student: question -> ``<bot>`` -> K continuous thoughts -> ``<eot>`` -> answer.

Each thought is the last hidden state of the previous position, passed through a projector (a 2-layer MLP with a
LayerNorm, as in CODI, or identity as in Coconut) and fed back as the next input embedding. No sampling happens in the
latent loop. The same module serves training (:meth:`LatentStudent.forward`) and inference (its ``project`` is
what :func:`lori.evaluation.generate.greedy_generate` calls), and both run the one latent loop through a KV cache
(:func:`latent_loop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import LoriError
from .build import hidden_size
from .tokenizer import BOT, EOT

PROJECTOR_FILE = "projector.safetensors"


class Projector(nn.Module):
    """``h -> W2 gelu(W1 LayerNorm(h))`` (kind "mlp", ours), ``h -> LayerNorm(W2 gelu(W1 h))`` (kind "codi": the
    order of CODI's released code, src/model.py ``prj``), the identity (kind "identity", Coconut), or the **pause
    control** (kind "pause"): one learned embedding in place of every thought, whatever ``h`` is, so nothing is fed
    back and the K steps are pause tokens (Goyal et al. 2024) — if it matches the fed-back student, the thoughts
    carry nothing."""

    def __init__(self, dim: int, kind: str = "mlp"):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        elif kind == "codi":
            self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))
        elif kind == "pause":
            self.pause = nn.Parameter(torch.zeros(dim))
        elif kind not in ("identity", "soft"):
            raise ValueError(f"unknown projector {kind!r}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return h
        if self.kind == "pause":
            return self.pause.to(h.dtype).expand_as(h)
        return self.net(h)


def add_latent_tokens(lm, tokenizer) -> tuple[int, int]:
    """Make sure ``<bot>``/``<eot>`` exist as special tokens; new embeddings start at the mean embedding."""
    missing = [t for t in (BOT, EOT) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        old = lm.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > old:
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(BOT), tokenizer.convert_tokens_to_ids(EOT)


def thought_positions(last: torch.Tensor, counts: torch.Tensor, K: int, offset: int = 0, stride: int = 1):
    """Position ids of the latent loop: ``(thoughts [B, K], suffix_start [B, 1])``.

    ``last [B, 1]`` is the position of ``<bot>``, ``counts [B]`` each example's number of thoughts. Thought j sits at
    ``last + 1 + offset + j * stride`` and the suffix (``<eot>`` ...) right after the example's last thought, so with
    ``offset``/``stride`` matching the rationale's layout (chains: each thought where its step's result token was,
    offset 2 and stride 5 for ``<< b = 7 >>``) every token after the thoughts keeps the teacher's position at every
    curriculum stage. The default (0, 1) is consecutive positions. Masked thoughts (j >= count) get positions too;
    they are never attended to."""
    j = torch.arange(K, device=last.device)[None]
    first = last + 1 + offset
    thoughts = first + j * stride
    counts = counts.reshape(-1, 1).to(last.device)
    suffix = torch.where(counts > 0, first + (counts - 1) * stride + 1, last + 1)
    return thoughts, suffix


def latent_loop(lm, project, out, mask: torch.Tensor, positions: torch.Tensor, step_mask: torch.Tensor,
                keep_states: bool = True):
    """The latent loop through the KV cache, one for training (:meth:`LatentStudent.forward`) and generation
    (:func:`lori.evaluation.generate.greedy_generate`). ``out`` is the cached forward (with hidden states) whose last
    position feeds the first thought; step j feeds ``project(last hidden state)`` back as the next input embedding at
    ``positions[:, j]`` (:func:`thought_positions`), attended to where ``step_mask [B, K]`` is 1.

    Returns ``(out, mask, states)``: the last step's output (its ``past_key_values`` hold every step), ``mask``
    extended by the K steps, and per step the hidden states of every layer at it, ``[B, L+1, d]`` each (none without
    ``keep_states``)."""
    states = []
    for j in range(step_mask.shape[1]):
        mask = torch.cat([mask, step_mask[:, j : j + 1]], dim=1)
        out = lm(inputs_embeds=project(out.hidden_states[-1][:, -1:]), attention_mask=mask,
                 position_ids=positions[:, j : j + 1], past_key_values=out.past_key_values, use_cache=True,
                 output_hidden_states=True)
        if keep_states:
            states.append(torch.stack([s[:, -1] for s in out.hidden_states], dim=1))  # [B, L+1, d]
    return out, mask, states


@dataclass
class LatentOutput:
    logits: torch.Tensor  # [B, S, V] over the suffix positions (<eot> #### answer <eos>)
    latent_states: torch.Tensor  # [B, L+1, K, d] hidden states (embeddings + every layer) at the K thought inputs
    suffix_states: tuple[torch.Tensor, ...]  # L+1 tensors [B, S, d] over the suffix positions
    prompt_states: torch.Tensor | None = None  # [B, L+1, d] at the last prompt position (<bot>: feeds thought 1)


class LatentStudent(nn.Module):
    def __init__(self, lm, latent_steps: int, projector: str, bot_id: int, eot_id: int, position_offset: int = 0,
                 position_stride: int = 1):
        super().__init__()
        self.lm = lm
        self.latent_steps = latent_steps
        # where the thoughts sit (curriculum.thought_offset / thought_stride; thought_positions)
        self.position_offset, self.position_stride = position_offset, position_stride
        self.bot_id, self.eot_id = bot_id, eot_id
        dim = hidden_size(lm)
        self.projector = Projector(dim, projector).to(lm.get_input_embeddings().weight.dtype)
        # Train without the KV cache (set under train.sharding=fsdp, lori.training.sharding): a cached latent loop
        # sends gradients through the cache into earlier calls of a layer, past the hooks FSDP reshards by.
        self.uncached_training = False

    def project(self, h: torch.Tensor) -> torch.Tensor:
        if self.projector.kind == "soft":
            # The expected input embedding under the LM head's next-token distribution (a "soft token"): a thought
            # looks like the token the model would have written, so the teacher's circuits can read it.
            probs = torch.softmax(self.lm.get_output_embeddings()(h).float(), dim=-1)
            return (probs @ self.lm.get_input_embeddings().weight.float()).to(h.dtype)
        return self.projector(h)

    def forward(self, prompt_ids, prompt_mask, suffix_ids, suffix_mask, latent_steps=None,
                positions=None) -> LatentOutput:
        """Teacher-forced pass. ``prompt_ids`` [B, P] left-padded and ending in ``<bot>``; ``suffix_ids`` [B, S]
        right-padded, starting with ``<eot>``; ``latent_steps`` K: an int (every example), a [B] tensor of
        per-example counts (a curriculum stage where examples have different numbers of steps), or None (the
        student's). With per-example counts the loop runs ``max K`` steps and an example's steps past its own count
        are masked out (no attention, no position), so each example sees exactly its own K thoughts. Positions
        follow the attention mask, exactly as in generation; ``positions`` = ``(thoughts [B, K], suffix [B])``
        relative to ``<bot>`` replaces the fixed layout (curriculum.thought_positions=aligned)."""
        K, step_mask = self._latent_mask(latent_steps, prompt_ids)
        if self.training and (self.uncached_training or any(getattr(m, "gradient_checkpointing", False) is True
                                                           for m in self.lm.modules())):
            return self._forward_without_cache(prompt_ids, prompt_mask, suffix_ids, suffix_mask, K, step_mask,
                                               positions)
        mask = prompt_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=prompt_ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      output_hidden_states=True)
        tpos, start = self._positions(pos[:, -1:], step_mask, K, positions)
        prompt_states = torch.stack([s[:, -1] for s in out.hidden_states], dim=1)
        out, mask, states = latent_loop(self.lm, self.project, out, mask, tpos, step_mask)
        mask = torch.cat([mask, suffix_mask], dim=1)
        spos = start + torch.arange(suffix_ids.shape[1], device=suffix_ids.device)[None]
        out = self.lm(input_ids=suffix_ids, attention_mask=mask, position_ids=spos, past_key_values=out.past_key_values,
                      use_cache=True, output_hidden_states=True)
        latent = torch.stack(states, dim=2) if states else suffix_ids.new_zeros((0,))
        return LatentOutput(out.logits, latent, out.hidden_states, prompt_states)

    def _positions(self, last: torch.Tensor, step_mask: torch.Tensor, K: int, positions):
        """``(thoughts [B, K], suffix_start [B, 1])``: the fixed layout, or the given per-example one."""
        if positions is None:
            return thought_positions(last, step_mask.sum(1), K, self.position_offset, self.position_stride)
        thoughts, suffix = positions
        return last + thoughts[:, :K].to(last.device), last + suffix.reshape(-1, 1).to(last.device)

    def _latent_mask(self, latent_steps, like: torch.Tensor) -> tuple[int, torch.Tensor]:
        """``(K, step_mask [B, K])``: the loop length and which latent steps are real for each example."""
        B = like.shape[0]
        if latent_steps is None:
            latent_steps = self.latent_steps
        if torch.is_tensor(latent_steps):
            counts = latent_steps.to(like.device).long().reshape(B)
            K = int(counts.max()) if B else 0
            return K, (torch.arange(K, device=like.device)[None] < counts[:, None]).long()
        return int(latent_steps), torch.ones((B, int(latent_steps)), dtype=torch.long, device=like.device)

    def _forward_without_cache(self, prompt_ids, prompt_mask, suffix_ids, suffix_mask, K: int,
                               step_mask: torch.Tensor, positions=None) -> LatentOutput:
        """The same pass with the whole sequence re-run at every latent step and no KV cache: what training under
        gradient checkpointing needs, because Hugging Face layers drop the cache when they checkpoint (a cached
        latent loop would silently attend to nothing but the current step). Costs about K + 2 prompt-length
        forwards instead of one; the outputs equal the cached pass up to float rounding (tested)."""
        emb = self.lm.get_input_embeddings()
        seq, mask = emb(prompt_ids), prompt_mask

        ppos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        tpos, start = self._positions(ppos[:, -1:], step_mask, K, positions)
        spos = start + torch.arange(suffix_ids.shape[1], device=suffix_ids.device)[None]
        order = torch.cat([ppos, tpos, spos], dim=1)  # the position ids of the whole sequence

        def run(seq, mask):
            return self.lm(inputs_embeds=seq, attention_mask=mask, position_ids=order[:, : mask.shape[1]],
                           use_cache=False, output_hidden_states=True)

        out = run(seq, mask)
        states = []
        prompt_states = torch.stack([s[:, -1] for s in out.hidden_states], dim=1)
        for j in range(K):
            seq = torch.cat([seq, self.project(out.hidden_states[-1][:, -1:]).to(seq.dtype)], dim=1)
            mask = torch.cat([mask, step_mask[:, j : j + 1]], dim=1)
            out = run(seq, mask)
            states.append(torch.stack([s[:, -1] for s in out.hidden_states], dim=1))  # [B, L+1, d]
        S = suffix_ids.shape[1]
        out = run(torch.cat([seq, emb(suffix_ids)], dim=1), torch.cat([mask, suffix_mask], dim=1))
        latent = torch.stack(states, dim=2) if states else suffix_ids.new_zeros((0,))
        return LatentOutput(out.logits[:, -S:], latent, tuple(s[:, -S:] for s in out.hidden_states), prompt_states)

    def generation_kwargs(self) -> dict:
        return {"latent_steps": self.latent_steps, "project": self.project, "eot_id": self.eot_id,
                "position_offset": self.position_offset, "position_stride": self.position_stride}

    def load_projector(self, folder: str | Path) -> None:
        if self.projector.kind in ("identity", "soft"):
            return
        f = Path(folder) / PROJECTOR_FILE
        if not f.is_file():
            raise LoriError(f"{folder}: no {PROJECTOR_FILE}, but this latent student's projector is "
                            f"{self.projector.kind!r}; a random projector would be evaluated. Use the complete "
                            "checkpoint folder the training wrote (copy the projector with the weights)")
        try:
            tensors = load_file(str(f))
        except Exception as e:  # safetensors' SafetensorError: a truncated or damaged file
            raise LoriError(f"{f} is truncated or damaged ({str(e).splitlines()[0][:100]}); copy the checkpoint "
                            f"folder {folder} again, or use another checkpoint") from None
        self.projector.load_state_dict(tensors)
