"""Methods: each module only says how it renders an example and computes its loss; everything else is shared.

A method module ends with ``METHOD = Method(name=..., render=..., paper=..., ...)`` (``lori.methods.common.Method``):
how it renders and batches an example, builds its prompt, wraps the language model, sets up its training-only state,
computes its loss, generates and saves its extra tensors, its model-card lines, and what it needs (``thoughts``,
``teacher_cache``, ``curriculum``), the defaults being a plain causal-LM fine-tune's. The commands read these
instead of branching on a method's name; docs/methods.md (The Method record) lists every field with its signature.

``thoughts.py`` holds what the latent methods (LoRi, Coconut, CODI) share: rendering, batching, the student wrapper.
"""

from . import aux_sum, coconut, codi, cot_sft, icot_si, lori, no_cot

METHODS = {m.METHOD.name: m.METHOD for m in (no_cot, cot_sft, lori, icot_si, coconut, codi, aux_sum)}
