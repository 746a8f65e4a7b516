"""Latent-necessity checks (``lori analyze --student``): does the student's answer depend on its thoughts?

Greedy answers on the sampled problems with the thoughts (the embeddings fed at the K latent steps) replaced
(Cui et al. 2026, arXiv 2602.22441; ../shared/docs/fair-comparison.md): **zeroed**; **noise**, Gaussian, of each
thought's own norm (seeded); **shuffled**, problem i fed problem d(i)'s thoughts (d a seeded derangement);
**swapped** in pairs, with the share of answers equal to the partner's gold answer (the answer follows the
thoughts). **Per step k**: only the first thought of the group that carries step k (index (k-1)c with a group per
step; with fewer groups than steps, `thoughts.group_step`), the one the step-value probe reads,
is set to problem d(i)'s, the later thoughts computed by the student from it: the share of answers that change and,
for chains, the share equal to what step k's new value implies (``data.chains.answer_with_step``). A student whose
accuracy does not fall under these is not reasoning in its thoughts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ..config import Config
from ..data.chains import answer_with_step, intermediate_values
from ..evaluation.generate import decode, greedy_generate
from ..methods import METHODS
from ..methods.thoughts import group_step
from ..tasks import TASKS

Replace = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (problem rows, step j, thought [B, 1, d])


def answers(student, tokenizer, cfg: Config, prompts: list[list[int]], batch_size: int,
            replace: Replace | None = None) -> list[str]:
    """The student's greedy generations (text) with ``replace(rows, j, thought)`` choosing the thought fed at latent
    step j for the problems ``rows`` of the batch (None: its own)."""
    texts = []
    for s in range(0, len(prompts), batch_size):
        rows = torch.arange(s, min(s + batch_size, len(prompts)))
        hook = None if replace is None else (lambda j, x, rows=rows: replace(rows.to(x.device), j, x))
        g = greedy_generate(student.lm, prompts[s : s + batch_size], eos_id=tokenizer.eos_token_id,
                            pad_id=tokenizer.pad_token_id, max_new_tokens=cfg.eval.max_new_tokens,
                            **student.generation_kwargs(), replace_thoughts=hook)
        texts += [decode(tokenizer, t) for t in g.tokens]
    return texts


def donors(n: int, seed: int) -> tuple[list[int], list[int]]:
    """``(derangement, partner)``: problem i's donor (never i when n > 1) and its partner in a seeded pairing
    (``partner[partner[i]] == i``; the odd one out is its own partner)."""
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    donor, partner = [0] * n, list(range(n))
    for i in range(n):
        donor[perm[i]] = perm[(i + 1) % n]
    for i in range(0, n - 1, 2):
        partner[perm[i]], partner[perm[i + 1]] = perm[i + 1], perm[i]
    return donor, partner


def recorder(store: dict, n: int, K: int) -> Replace:
    """Feeds the student's own thoughts and keeps them in ``store["thoughts"]`` ``[n, K, d]``."""

    def record(rows, j, x):
        if "thoughts" not in store:
            store["thoughts"] = x.new_zeros(n, K, x.shape[-1])
        store["thoughts"][rows, j] = x[:, 0]
        return x

    return record


def from_thoughts(thoughts: torch.Tensor, source: list[int], step: int | None = None) -> Replace:
    """Problem i fed problem ``source[i]``'s recorded ``thoughts``: every thought, or only latent step ``step``'s."""
    src = torch.tensor(source, device=thoughts.device)

    def replace(rows, j, x):
        return thoughts[src[rows], j][:, None] if step is None or j == step else x

    return replace


@torch.no_grad()
def necessity_checks(student, tokenizer, cfg: Config, examples, batch_size: int, seed: int) -> dict:
    task = TASKS[cfg.data.task]
    thoughts = METHODS[cfg.method].thoughts
    K, c = thoughts.latent_steps(cfg), cfg.curriculum.thoughts_per_step
    n = len(examples)
    prompts = [METHODS[cfg.method].prompt(ex, tokenizer, cfg) for ex in examples]
    gold = [ex.answer for ex in examples]
    store: dict = {}
    clean = answers(student, tokenizer, cfg, prompts, batch_size, recorder(store, n, K))
    T = store["thoughts"]  # [n, K, d], the thoughts as fed
    clean_ans = [task.extract_answer(t) for t in clean]
    donor, partner = donors(n, seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(T.shape, generator=g).to(T.device, torch.float32)
    noise = (noise / noise.norm(dim=-1, keepdim=True) * T.float().norm(dim=-1, keepdim=True)).to(T.dtype)

    def score(texts: list[str]) -> dict:
        return {"accuracy": sum(task.is_correct(t, a) for t, a in zip(texts, gold)) / n,
                "changed": sum(task.extract_answer(t) != a for t, a in zip(texts, clean_ans)) / n}

    def run(replace: Replace) -> list[str]:
        return answers(student, tokenizer, cfg, prompts, batch_size, replace)

    out = {"n": n, "latent_steps": K, "seed": seed, "clean": score(clean)}
    out["zeroed"] = score(run(lambda rows, j, x: torch.zeros_like(x)))
    out["noise"] = score(run(lambda rows, j, x: noise[rows, j][:, None]))
    out["shuffled"] = score(run(from_thoughts(T, donor)))
    swapped = run(from_thoughts(T, partner))
    paired = [i for i in range(n) if partner[i] != i]
    out["swapped"] = score(swapped) | {
        "pairs": len(paired) // 2,
        # the answer follows the thoughts: it is the partner's gold answer (chance: partner_gold_is_own)
        "follows_partner": sum(task.is_correct(swapped[i], gold[partner[i]]) for i in paired) / max(len(paired), 1),
        "partner_gold_is_own": sum(task.normalize(gold[partner[i]]) == task.normalize(gold[i]) for i in paired)
        / max(len(paired), 1)}
    out["per_step"] = per_step(run, task, cfg, examples, T, donor, clean_ans, K // c, c)
    return out


def per_step(run, task, cfg: Config, examples, T, donor, clean_ans, groups: int, c: int) -> list[dict]:
    """The first thought of the group that carries step k (index g c, group g anchored to step k by
    ``thoughts.group_step``: g = k - 1 with a group per step) from problem ``donor[i]``; for chains, the answer
    step k's new value implies."""
    try:
        values = [intermediate_values(ex) for ex in examples] if cfg.data.task == "chains" else None
    except (ValueError, IndexError):
        values = None
    n = None if values is None else min(len(v) for v in values)
    G = groups if n is None else min(groups, n)
    rows = []
    for g in range(G):
        k = g + 1 if n is None else group_step(g, n, G) + 1
        texts = run(from_thoughts(T, donor, g * c))
        row = {"step": k, "thought": g * c + 1,
               "changed": sum(task.extract_answer(t) != a for t, a in zip(texts, clean_ans)) / len(texts),
               "accuracy": sum(task.is_correct(t, ex.answer) for t, ex in zip(texts, examples)) / len(texts),
               "implied": None, "follows_implied": None}
        if values is not None:
            implied = [answer_with_step(ex.question, k, values[donor[i]][k - 1], cfg.data.chain_modulus)
                       for i, ex in enumerate(examples)]
            moved = [i for i, ex in enumerate(examples) if str(implied[i]) != ex.answer]
            row["implied"] = len(moved)  # problems whose answer the new value changes
            row["follows_implied"] = (sum(task.is_correct(texts[i], str(implied[i])) for i in moved)
                                      / max(len(moved), 1))
        rows.append(row)
    return rows
