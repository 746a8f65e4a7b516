"""The running-sum auxiliary head (Bai et al. 2025, "Why can't transformers learn multiplication?", ``ajyl/icot``):
a No-CoT student whose hidden state is told what the chain of thought would have carried.

    [bos] question || #### c_0 c_1 ... c_{2N-1} <eos>        CE on "#### answer <eos>" (the No-CoT rendering)
    c^_k = sum_{i+j=k} a_i b_j + floor(c^_{k-1} / 10)          the column's running sum, c_k = c^_k mod 10
    L    = CE + aux_sum.weight * 1/(B n) sum_{b,k} (w . h^l_{b,p_k} + w_0 - c^_k / scale)^2

with ``h^l`` the hidden state of layer ``aux_sum.layer`` at position ``p_k`` (the one that predicts ``c_k``) and
``(w, w_0)`` a linear head trained with the model, used by training only and saved beside it
(``aux_sum_head.safetensors``). Generation is No-CoT's. Multiplication is the only task whose running sums it knows.
Choices and the authors' findings: docs/methods.md (Running-sum head).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import AuxSumConfig
from ..data.render import segments, supervised
from ..data.schema import Example
from ..errors import LoriError
from ..losses import IGNORE_INDEX, token_cross_entropy
from ..models.build import hidden_size, num_layers
from ..models.checkpoint_folders import resolve_checkpoint
from ..utils import pad
from . import common

HEAD_FILE = "aux_sum_head.safetensors"


def running_sums(example: Example) -> list[int]:
    """``c^_0 .. c^_{n-1}`` of ``a * b`` written digit by digit, least significant first (``5 6 3 2 * 7 4 3 4``),
    one per answer digit; the last carry is the answer's top digit, so ``c^_k mod 10`` is answer digit ``k``."""
    try:
        a, b = ([int(t) for t in side.split()] for side in example.question.split("*"))
        answer = [int(t) for t in example.answer.split()]
    except ValueError:
        raise LoriError(f"{example.source}: method aux-sum needs a multiplication question 'a_0 a_1 ... * b_0 b_1 "
                        f"...' and a digit answer (data.task: multiplication), got {example.question!r} -> "
                        f"{example.answer!r}") from None
    sums, carry = [], 0
    for k in range(len(answer)):
        c = sum(a[i] * b[k - i] for i in range(len(a)) if 0 <= k - i < len(b)) + carry
        sums.append(c)
        carry = c // 10
    if [c % 10 for c in sums] != answer:
        raise LoriError(f"{example.source}: the answer {example.answer!r} is not the product of the question "
                        f"{example.question!r} written least-significant digit first; aux-sum cannot read its "
                        f"running sums")
    return sums


def render(example: Example, tokenizer, cfg, stage: int = 1) -> dict:
    """No-CoT's rendering plus ``aux_pos`` (the positions predicting each answer digit) and ``aux_target``."""
    s = segments(example, tokenizer, cfg.model.chat_template)
    sums = running_sums(example)
    digits = s.answer[s.marker_len:-1]  # "#### answer <eos>" less the marker and the end token
    if len(digits) != len(sums):
        raise LoriError(f"{example.source}: the tokenizer writes the {len(sums)} answer digits as {len(digits)} "
                        f"tokens; aux-sum needs one token per digit (a tokenizer that splits digits, such as "
                        f"the built-in one or LLaMA's)")
    first = len(s.prompt) + s.marker_len - 1  # the last marker token predicts c_0
    out = supervised(s.prompt, s.answer)
    out["aux_pos"] = [first + k for k in range(len(sums))]
    out["aux_target"] = [float(c) / cfg.aux_sum.scale for c in sums]
    out["n_aux"] = len(sums)
    return out


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    batch = common.collate(items, pad_id)
    batch["aux_pos"] = pad([it["aux_pos"] for it in items], IGNORE_INDEX)[0]  # IGNORE_INDEX marks padding
    width = batch["aux_pos"].shape[1]
    batch["aux_target"] = torch.tensor([it["aux_target"] + [0.0] * (width - len(it["aux_target"])) for it in items])
    return batch


class AuxSumStudent(torch.nn.Module):
    """The language model and the running-sum head on layer ``layer``'s hidden state."""

    def __init__(self, lm, layer: int):
        super().__init__()
        self.lm = lm
        self.layer = layer
        self.head = torch.nn.Linear(hidden_size(lm), 1)

    def forward(self, input_ids, attention_mask):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.logits, self.head(out.hidden_states[self.layer]).squeeze(-1)


def wrap(lm, tokenizer, cfg, checkpoint=None) -> AuxSumStudent:
    n = num_layers(lm)
    layer = n // 2 if cfg.aux_sum.layer is None else cfg.aux_sum.layer
    if layer > n:
        raise LoriError(f"aux_sum.layer={layer}: the model has hidden states 0 (embeddings) to {n}")
    student = AuxSumStudent(lm, layer)
    # the head of the run being resumed, else that of the checkpoint the weights start from (a second, lower-lr
    # phase from an aux-sum run keeps its head; from any other checkpoint the head starts fresh)
    source = checkpoint or (resolve_checkpoint(cfg.model.init_from, "model.init_from") if cfg.model.init_from else None)
    if source is not None and (Path(source) / HEAD_FILE).is_file():
        student.head.load_state_dict(load_file(str(Path(source) / HEAD_FILE)))
    return student.to(next(lm.parameters()).device)


def setup_training(module, cfg, train_set, device=None) -> AuxSumConfig:
    return cfg.aux_sum


def loss(module, batch: dict[str, torch.Tensor], norm,
         state: AuxSumConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits, pred = module(batch["input_ids"], batch["attention_mask"])
    ce = token_cross_entropy(logits[:, :-1], batch["labels"][:, 1:], num_tokens=norm.tokens)
    pos = batch["aux_pos"]
    real = pos != IGNORE_INDEX
    got = pred.gather(1, pos.clamp(min=0))
    mse = ((got - batch["aux_target"].to(got.dtype)) ** 2 * real).sum() / norm.counts["aux"]
    total = ce + state.weight * mse
    return total, {"ce": ce.detach(), "aux_mse": mse.detach(),
                   **common.answer_parts(logits[:, :-1], batch["labels"][:, 1:], batch, norm)}


def extra_tensors(module: AuxSumStudent) -> dict:
    return {HEAD_FILE: module.head.state_dict()}


METHOD = common.Method(name="aux-sum", render=render, collate=collate, wrap=wrap, loss=loss,
                       paper="direct answer with the running-sum auxiliary head of Bai et al. 2025 (ajyl/icot)",
                       setup_training=setup_training, extra_tensors=extra_tensors, curriculum=False)
