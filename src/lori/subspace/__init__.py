"""The shared low-rank subspace (bases, streaming fit) and trajectory statistics in it."""

from lori.subspace.basis import (
    Basis,
    LayerGramAccumulator,
    SecondMomentAccumulator,
    fit_bases,
    fit_layer_factor,
    select_rank,
)
from lori.subspace.stats import masked_moments, triu_pack, triu_rank, triu_size, triu_unpack

__all__ = [
    "Basis",
    "LayerGramAccumulator",
    "SecondMomentAccumulator",
    "fit_bases",
    "fit_layer_factor",
    "masked_moments",
    "select_rank",
    "triu_pack",
    "triu_rank",
    "triu_size",
    "triu_unpack",
]
