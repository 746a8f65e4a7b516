"""The shared low-rank subspace (bases, streaming fit) and trajectory statistics in it."""

from lori.subspace.basis import (
    Basis,
    LayerGramAccumulator,
    SecondMomentAccumulator,
    fit_bases,
    fit_layer_factor,
    select_rank,
)
from lori.subspace.spectrum import (
    effective_rank_entropy,
    energy_at_rank,
    mode_spectra,
    participation_ratio,
    principal_cosines,
    rank_for_energy,
    spectrum_summary,
)
from lori.subspace.stats import masked_moments, triu_pack, triu_rank, triu_size, triu_unpack
from lori.subspace.trajectory import prefix_means, step_states, trajectory_statistics

__all__ = [
    "Basis",
    "LayerGramAccumulator",
    "SecondMomentAccumulator",
    "effective_rank_entropy",
    "energy_at_rank",
    "fit_bases",
    "fit_layer_factor",
    "masked_moments",
    "mode_spectra",
    "participation_ratio",
    "prefix_means",
    "principal_cosines",
    "rank_for_energy",
    "select_rank",
    "spectrum_summary",
    "step_states",
    "trajectory_statistics",
    "triu_pack",
    "triu_rank",
    "triu_size",
    "triu_unpack",
]
