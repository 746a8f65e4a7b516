"""Methods: each module only says how it renders an example and computes its loss; everything else is shared.

A method module ends with ``METHOD = Method(name=..., render=..., ...)`` (``lori.methods.common.Method``), whose
fields are, the defaults being a plain causal-LM fine-tune's:
- ``name``; ``render(example, tokenizer, cfg, stage) -> dict`` of token lists plus ``n_target`` (supervised tokens)
  and optionally further ``n_<name>`` counts (summed over each step into ``Norm.counts[name]``);
  ``collate(items, pad_id) -> dict of tensors``; ``prompt(example, tokenizer, cfg)`` (the generation prompt);
- ``wrap(lm, tokenizer, cfg, checkpoint) -> module``: what is trained (the LM itself, or a wrapper holding it and
  the method's extra modules, restored from ``checkpoint`` when resuming);
- ``setup_training(module, cfg, train_set, device) -> state``: the method's training-only state (e.g. LoRi's
  teacher statistics and loss scales, on ``device``; None when it needs none), built once before training; the
  method keeps nothing on the module;
- ``loss(module, batch, norm, state) -> (loss, parts)``: the loss normalised by the step's global counts, and its
  detached parts for logging; ``module`` is what the loop trains (DDP-wrapped or not: the forward goes through it),
  ``state`` what ``setup_training`` returned;
- ``generation_kwargs(module, tokenizer, cfg)``: extra arguments for ``greedy_generate`` (latent steps, projector;
  iCoT-SI's answer position under ``curriculum.keep_positions``);
- ``extra_tensors(module)``: ``{file name: tensors}`` saved beside the LM in a checkpoint, or None;
- ``thoughts``: a latent method's :class:`lori.methods.thoughts.Thoughts` (K and the projector, chosen once from its
  config section; its ``render`` and ``wrap`` are the method's), None for explicit methods;
- ``teacher_cache``: it trains against the teacher statistics of ``lori precompute`` (``lori.teacher``,
  ``lori.cache_dir``); ``curriculum``: its rendering depends on the curriculum stage. The commands read these
  instead of branching on a method's name.

``thoughts.py`` holds what the latent methods (LoRi, Coconut, CODI) share: rendering, batching, the student wrapper.
"""

from . import aux_sum, coconut, codi, cot_sft, icot_si, lori, no_cot

METHODS = {m.METHOD.name: m.METHOD for m in (no_cot, cot_sft, lori, icot_si, coconut, codi, aux_sum)}
