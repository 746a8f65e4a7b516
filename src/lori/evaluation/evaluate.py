"""Accuracy, generated tokens, latency and throughput of one model on one split, under the one matching policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.schema import Example
from .generate import decode, generate_batches, greedy_generate
from .metrics import wilson_ci
from .results import ResultRow


@dataclass
class Evaluation:
    row: ResultRow
    predictions: list[dict]  # one per problem: question, gold, generated text, correct, steps


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    lm,
    tokenizer,
    prompts: list[list[int]],
    examples: list[Example],
    task,
    *,
    method: str,
    checkpoint: str,
    batch_size: int,
    max_new_tokens: int,
    latency_problems: int,
    latent_steps: int = 0,
    project: Callable | None = None,
    eot_id: int | None = None,
    position_offset: int = 0,
    position_stride: int = 1,
    answer_gap: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Greedy-generate an answer for every prompt and score it with ``task.is_correct``.

    Throughput is problems per second over the whole batched run (batch ``batch_size``); latency is the mean wall
    time per problem over the first ``latency_problems`` problems run one at a time (batch 1). ``row.truncated``
    counts the problems whose generation hit ``max_new_tokens`` without ending (each prediction says so too).
    """
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    gen_kwargs = dict(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
                      latent_steps=latent_steps, project=project, eot_id=eot_id,
                      position_offset=position_offset, position_stride=position_stride,
                      answer_gap=answer_gap)
    _sync(device)
    t0 = time.perf_counter()
    g = generate_batches(lm, prompts, batch_size, progress=progress, desc=f"eval {method}", **gen_kwargs)
    tokens, steps, truncated = g.tokens, g.steps, g.truncated
    _sync(device)
    elapsed = time.perf_counter() - t0
    latency = []
    for p in prompts[:latency_problems]:
        _sync(device)
        t = time.perf_counter()
        greedy_generate(lm, [p], **gen_kwargs)
        _sync(device)
        latency.append(time.perf_counter() - t)
    lm.train(was_training)

    predictions, correct = [], 0
    for ex, toks, n, cut in zip(examples, tokens, steps, truncated):
        text = decode(tokenizer, toks)
        ok = bool(task.is_correct(text, ex.answer))
        correct += ok
        predictions.append({"source": ex.source, "question": ex.question, "gold": ex.answer,
                            "generated": text, "correct": ok, "steps": n, "truncated": cut})
    n = len(examples)
    row = ResultRow(
        method=method,
        checkpoint=checkpoint,
        accuracy=correct / n if n else 0.0,
        ci95=wilson_ci(correct, n),
        mean_generated_tokens=sum(steps) / n if n else 0.0,
        latency_ms_per_problem=1000 * sum(latency) / len(latency) if latency else float("nan"),
        throughput_problems_per_s=n / elapsed if elapsed > 0 else float("nan"),
        truncated=sum(truncated),
    )
    return Evaluation(row, predictions)
