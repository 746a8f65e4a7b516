"""Losses: the task cross-entropy and the LoRi rationale / anchor distillation terms."""

from lori.losses.lori import anchor_loss, combine, rationale_loss, teacher_energy
from lori.losses.task import IGNORE_INDEX, token_cross_entropy

__all__ = ["IGNORE_INDEX", "anchor_loss", "combine", "rationale_loss", "teacher_energy", "token_cross_entropy"]
