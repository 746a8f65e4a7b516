"""Losses: the task cross-entropy, the LoRi rationale / anchor distillation terms and CODI's hidden-state distance."""

from lori.losses.codi import hidden_distance
from lori.losses.lori import anchor_loss, combine, rationale_loss, standardized_loss, teacher_energy
from lori.losses.task import IGNORE_INDEX, answer_token_ce, token_cross_entropy

__all__ = ["IGNORE_INDEX", "anchor_loss", "answer_token_ce", "combine", "hidden_distance", "rationale_loss", "standardized_loss",
           "teacher_energy", "token_cross_entropy"]
