"""The optimizer, its learning-rate schedule and the batch arithmetic of the training loop.

AdamW over the trainable parameters, weight decay on matrices only (biases and norms have ndim < 2); the schedule
is a linear warmup, then constant or cosine down to ``train.min_lr_ratio`` at ``train.steps``. The global batch is
micro batch x processes x gradient-accumulation steps.
"""

from __future__ import annotations

import math

import torch

from ..config import Config
from ..errors import ConfigError


def lr_lambda(cfg: Config):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def batch_arithmetic(cfg: Config, world: int) -> int:
    """Gradient-accumulation steps from global batch = micro batch x processes x accumulation."""
    t = cfg.train
    per_step = t.micro_batch * world
    if t.global_batch % per_step:
        raise ConfigError(
            f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch ({t.micro_batch}) x "
            f"processes ({world}); e.g. set train.micro_batch={math.gcd(t.global_batch, t.micro_batch)}"
        )
    return t.global_batch // per_step


def build_optimizer(module: torch.nn.Module, cfg: Config):
    """AdamW over ``module``'s trainable parameters and its LambdaLR schedule (:func:`lr_lambda`)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr, betas=tuple(cfg.train.betas),
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
