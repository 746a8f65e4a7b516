"""Typed run configuration: the single source of truth for every command.

A YAML preset is a serialized :class:`Config`; command-line overrides are dotted keys (``train.lr=3e-4``).
Every key and value is checked: an unknown key or a bad value raises :class:`ConfigError` naming the dotted key
and what is allowed. The resolved config is printed at start and saved with every run and checkpoint.

Paths (:data:`PATH_KEYS`): a relative path written in a YAML file is relative to **that file's folder**, wherever
the command runs (the shipped presets in ``configs/`` say ``../out/...``, and ``model.name`` counts as a path only
when it is written like one, ``./`` or ``../``, or names a folder there); :func:`load_tree` makes it absolute. A path
given as a command-line override is relative to the working directory, as any path typed in a shell. A saved config
(``config.yaml``, a checkpoint's ``lori_config.yaml``) holds absolute paths, so it means the same from any folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import ConfigError, LoriError

MethodName = Literal["cot-sft", "no-cot", "lori", "icot-si", "coconut", "codi", "aux-sum", "sim-cot"]
Arch = Literal["llama", "qwen2", "gpt2"]


@dataclass
class DataConfig:
    task: str = "multiplication"  # a key of lori.tasks.TASKS: answer extraction and matching
    format: str = "icot"  # a key of lori.data.READERS; never inferred from the path
    train_file: str | None = None  # None: generate (multiplication only)
    valid_file: str | None = None  # None: generate a held-out set disjoint from train and test
    test_file: str | None = None  # None: generate a held-out set disjoint from train and valid
    digits: list[int] = field(default_factory=lambda: [4, 4])  # N x M for generated multiplication
    train_size: int = 80_000  # generated training problems (ignored when train_file is set)
    valid_size: int = 500
    test_size: int = 1_000
    seed: int = 0  # generator seed; splits use seed, seed+1, seed+2
    # Generated chains (task: chains; lori.data.chains): L steps mod m over named variables.
    chain_steps: int = 4  # L: the depth; the answer needs every step in order
    chain_modulus: int = 10  # values are 0..m-1; the answer is uniform, chance = 1/m
    chain_ops: str = "+-*"  # a subset of "+-*" (`*` by a constant coprime with m)
    chain_back_ref: float = 0.0  # share of +/- steps whose operand is an earlier variable, not a constant
    chain_rationale: Literal["value", "expression", "values"] = "value"  # << c = 5 >>, << c = 2 + 3 = 5 >> or 5
    max_length: int = 512  # rendered examples longer than this are an error, not silently cut

    def __post_init__(self) -> None:
        if len(self.digits) != 2 or min(self.digits) < 1:
            raise ConfigError(f"data.digits must be two positive integers like [4, 4], got {self.digits}")
        for key in ("train_size", "valid_size", "test_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        # here (an upward import, allowed in tests/unit/test_layers.py): lori.data's __init__ loads torch via lori.utils
        from .data.chains import check_options

        try:
            check_options(self.chain_steps, self.chain_modulus, self.chain_ops, self.chain_back_ref,
                          self.chain_rationale)
        except LoriError as e:
            raise ConfigError(str(e)) from None


@dataclass
class ModelConfig:
    # "tiny": a model built from config with random weights (arch below) and the project's small-vocabulary
    # tokenizer; otherwise a Hugging Face hub id or local folder, used with its own tokenizer.
    name: str = "tiny"
    arch: Arch = "llama"  # architecture of a tiny model
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    # a tiny model's tokenizer: word (one token per whitespace-separated symbol) or bpe (a byte-level BPE of
    # bpe_vocab_size tokens trained on the training texts: multi-token numbers, as real tokenizers write them)
    tokenizer: Literal["word", "bpe"] = "word"
    bpe_vocab_size: int = 320
    init_from: str | None = None  # a checkpoint folder to start from (e.g. the teacher for a student)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Wrap the question in the tokenizer's chat template (user turn; the assistant turn starts with `||`).
    chat_template: bool = False
    # Recompute activations in the backward pass (less memory, ~30% more compute). Latent students then run their
    # latent loop without a KV cache (lori.models.latent_student), which costs more per step.
    gradient_checkpointing: bool = False
    # LoRA through peft (lori.models.lora): null = full fine-tuning. The method's own modules (LoRi's projector)
    # and the <bot>/<eot> embeddings of latent students stay fully trainable; checkpoints hold merged weights.
    lora_r: int | None = None
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # peft names; all-linear = every
    # linear layer except the output head

    def __post_init__(self) -> None:
        if self.bpe_vocab_size < 300:
            raise ConfigError(f"model.bpe_vocab_size must be >= 300 (256 bytes + specials + merges), got "
                              f"{self.bpe_vocab_size}")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.lora_r is not None and self.lora_r < 1:
            raise ConfigError(f"model.lora_r must be >= 1 or null (no LoRA), got {self.lora_r}")
        if self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("model.lora_alpha must be > 0 and model.lora_dropout in [0, 1)")
        if not self.lora_target_modules:
            raise ConfigError("model.lora_target_modules must name at least one module (or ['all-linear'])")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )


@dataclass
class TrainConfig:
    steps: int = 1_500  # optimizer steps in the whole run (the schedule is defined over these)
    global_batch: int = 64  # examples per optimizer step over all processes
    micro_batch: int = 64  # examples per forward pass per process; accumulation is derived
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = None  # max global grad norm; None = no clipping
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on a GPU that supports it
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250  # validation loss + accuracy on eval_size validation problems; 0 = only at end
    eval_size: int = 200
    # keep OUT/checkpoints/best: the checkpoint with the best validation accuracy among those of the final
    # curriculum stage (validated every eval_every steps and at the end); lori compare scores it
    keep_best: bool = False
    save_every: int = 500
    keep_checkpoints: int = 2  # newest N checkpoints kept (>= 1), older ones deleted
    # "auto": newest checkpoint in out_dir; "never": start over (deletes out_dir's checkpoints and metrics); or a
    # checkpoint folder. A resume refuses changed settings (lori.training.identity).
    resume: str = "auto"
    stop_at: int | None = None  # stop after this step (checkpoint saved), e.g. to stage a run or test resume
    # Experiment trackers through accelerate (lori.training.trackers): its tracker names, a registered one, or "all"
    # (every installed one); metrics.jsonl is always written.
    log_with: list[str] = field(default_factory=list)
    tensorboard: bool = False  # shorthand for "tensorboard" in log_with (kept for older configs)
    # "fsdp": the weights, gradients and optimizer state sharded over the processes (FSDP2, lori.training.sharding;
    # torchrun --nproc_per_node N ... train.sharding=fsdp); "none": every process holds the whole model (DDP).
    sharding: Literal["none", "fsdp"] = "none"

    def __post_init__(self) -> None:
        for key in ("steps", "global_batch", "micro_batch", "log_every", "save_every", "eval_size",
                    "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.stop_at is not None and self.stop_at < 1:
            raise ConfigError(f"train.stop_at must be >= 1 or null (run to train.steps), got {self.stop_at}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ConfigError("train.warmup_steps and train.eval_every must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if self.log_with:  # installed or not is checked when a run starts (an eval need not have them)
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # here: reading a config loads no accelerate/torch

            known = ["all", *LOGGER_TYPE_TO_CLASS]
            for name in self.log_with:
                if name not in known:
                    raise ConfigError(f"train.log_with: unknown tracker {name!r}; choose among {', '.join(known)} "
                                      "(or register one with accelerate.tracking.register_tracker_class)")


@dataclass
class EvalConfig:
    split: Literal["valid", "test"] = "test"
    batch_size: int = 128  # batched greedy generation (throughput is measured at this batch size)
    max_new_tokens: int = 160
    limit: int | None = None  # evaluate the first N problems only
    latency_problems: int = 16  # problems timed one by one at batch size 1

    def __post_init__(self) -> None:
        for key in ("batch_size", "max_new_tokens", "latency_problems"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be >= 1, got {getattr(self, key)}"
                                  + (" (the latency column times this many problems one by one)"
                                     if key == "latency_problems" else ""))
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit must be >= 1 or null (every problem), got {self.limit}")


@dataclass
class CurriculumConfig:
    """A staged curriculum. Latent methods (Coconut's; LoRi and CODI combine with it): stage k = 1..stages replaces
    the first k x steps_per_group rationale steps by k x thoughts_per_step latent thoughts and keeps the rest as
    supervised language;
    after ``stages x steps_per_stage`` optimizer steps the final stage replaces every step (K = the method's
    latent_steps). iCoT-SI: stage k deletes the first k x remove_per_stage rationale tokens (plus a random offset);
    the final stage deletes the whole rationale (No-CoT format)."""

    stages: int = 0  # 0: no curriculum, the final rendering from the first step
    steps_per_stage: int = 500
    thoughts_per_step: int = 1  # c
    # s: rationale steps one group of c thoughts replaces (stage k: the first k x s steps become k groups); 2 is
    # compression, K = L/2 thoughts for L steps, each group anchored to the last step it carries (docs/methods.md)
    steps_per_group: int = 1
    reset_optimizer: bool = True  # fresh optimizer state at every stage change (as Coconut and iCoT-SI do)
    # iCoT-SI only (Deng et al. 2024; their repo's --remove_per_epoch 8 with one stage = one epoch). The paper's exact
    # schedule, one token at a time with an optimizer reset each, is remove_per_stage=1 with steps_per_stage = 1/8 epoch.
    remove_per_stage: int = 8
    # iCoT-SI removal smoothing: each example (per stage) loses o extra tokens, P(o) = (1 - e^-lambda) e^(-lambda o),
    # o = 0, 1, ... (their --removal_smoothing_lambda 4: P(o=0) = 0.98); null = no offset.
    removal_smoothing_lambda: float | None = 4.0
    # Advance on the loss: a stage ends once its training CE, averaged over advance_window steps, is below
    # advance_below (steps_per_stage then the most it may take); null: every stage is exactly steps_per_stage steps.
    advance_below: float | None = None
    advance_window: int = 25
    # The final stage's guaranteed share of train.steps: each earlier stage is capped at
    # min(steps_per_stage, floor((1 - final_share) x train.steps / stages)) steps, so the final stage starts by step
    # (1 - final_share) x train.steps whatever the loss does. null: steps_per_stage alone (the final stage may never
    # come within train.steps).
    final_share: float | None = None
    # iCoT-SI only: the text left after the removed rationale tokens keeps the position ids it had in the teacher's
    # rendering (the latent methods' thought_offset/stride do the same for theirs); at the final stage, and in
    # generation, the answer starts stages x remove_per_stage positions after the prompt.
    keep_positions: bool = False
    # Thought j sits at position(<bot>) + 1 + thought_offset + j * thought_stride, <eot> right after; matching the
    # rationale's layout keeps the language after the thoughts at the teacher's positions (docs/methods.md).
    thought_offset: int = 0
    thought_stride: int = 1
    # fixed: every stage uses that layout. aligned: before the final stage each example's thoughts sit where its own
    # teacher rationale wrote the replaced steps' results (steps of any length; lori.data.render.step_spans); the
    # final stage and generation, which have no rationale, use the fixed layout.
    thought_positions: Literal["fixed", "aligned"] = "fixed"

    def __post_init__(self) -> None:
        if self.advance_below is not None and not self.advance_below > 0:
            raise ConfigError(f"curriculum.advance_below must be > 0 or null, got {self.advance_below}")
        if self.thought_stride < 1 or self.thought_offset < 0:
            raise ConfigError(f"curriculum.thought_stride must be >= 1 and curriculum.thought_offset >= 0, got "
                              f"{self.thought_stride} and {self.thought_offset}")
        if self.advance_window < 1:
            raise ConfigError(f"curriculum.advance_window must be >= 1, got {self.advance_window}")
        if self.steps_per_group < 1:
            raise ConfigError(f"curriculum.steps_per_group must be >= 1, got {self.steps_per_group}")
        if self.stages < 0 or self.steps_per_stage < 1 or self.thoughts_per_step < 1:
            raise ConfigError("curriculum.stages must be >= 0, curriculum.steps_per_stage and "
                              "curriculum.thoughts_per_step >= 1")
        if self.remove_per_stage < 1:
            raise ConfigError(f"curriculum.remove_per_stage must be >= 1, got {self.remove_per_stage}")
        if self.removal_smoothing_lambda is not None and not self.removal_smoothing_lambda > 0:
            raise ConfigError(f"curriculum.removal_smoothing_lambda must be > 0 or null (no offset), got "
                              f"{self.removal_smoothing_lambda}")
        if self.final_share is not None and not 0 < self.final_share < 1:
            raise ConfigError(f"curriculum.final_share must be in (0, 1) or null, got {self.final_share}")

    def stage_cap(self, train_steps: int) -> int:
        """The most steps an earlier stage may take in a run of ``train_steps``: ``steps_per_stage``, lowered by
        ``final_share`` to ``floor((1 - final_share) x train_steps / stages)`` when it would not leave that share."""
        if self.final_share is None or not self.stages:
            return self.steps_per_stage
        # rounded first: 0.7 x 1000 / 7 is 99.99999999999999 in floats
        return min(self.steps_per_stage, math.floor(round((1 - self.final_share) * train_steps / self.stages, 9)))

    def stage_at(self, step: int, cap: int | None = None) -> int:
        """Stage of optimizer step ``step`` (0-based) with stages of ``cap`` steps (default ``steps_per_stage``; the
        loop passes :meth:`stage_cap`): 1..stages, or stages + 1 for the final stage."""
        return min(step // (cap or self.steps_per_stage) + 1, self.stages + 1) if self.stages else 1

    def is_final(self, stage: int) -> bool:
        return stage > self.stages


@dataclass
class LoRiConfig:
    """LoRi low-rank distillation (docs/method.md). Every "(choice)" of the method is a field here."""

    teacher: str | None = None  # the frozen explicit-CoT teacher checkpoint (run folder or step-* folder)
    cache_dir: str | None = None  # precomputed teacher statistics (lori precompute writes, lori train reads)
    layers: list[int] | None = None  # hidden-state layers 1..L to align; None = all
    rank: int | None = 16  # subspace rank r (a cap when energy is set)
    energy: float | None = None  # choose r as the smallest rank keeping this fraction of the spectrum
    shared_basis: bool = False  # one hidden-mode basis for all layers instead of one per layer
    layer_rank: int | None = None  # optional layer-mode (HOSVD) factor rank; None = no layer factor
    centred: bool = True  # covariance (centred) or uncentred second moment
    calib_size: int = 2_000  # training examples used to fit the subspace
    shard_size: int = 10_000  # examples per cache shard
    precompute_batch: int = 256
    # (choice) the dtype of the cached statistics, read back as float32; bfloat16 halves the cache, float16 overflows
    # past 65504 (refused, naming the statistic). Part of the cache's fingerprint (docs/methods.md, Storage).
    cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # the per-step statistics in the cache (for lori.prefix_statistics, lori.step_anchors); false leaves them out, a
    # smaller cache for a config that reads neither. Part of the cache's fingerprint.
    cache_steps: bool = True
    # the covariance in the cache (the upper triangle, r(r+1)/2 values per layer); false keeps only its trace (what
    # the energy normalisers read), for a config without L_rat's second-order term. Part of the fingerprint.
    cache_cov: bool = True
    # (control) the subspace: "pca" the teacher's leading directions (the method); "random" a seeded random
    # orthonormal basis of the same rank per layer (seed basis_seed); "full" no projection (the identity, rank =
    # the hidden width: CCoT's full-width setting). Part of the fingerprint.
    basis: Literal["pca", "random", "full"] = "pca"
    basis_seed: int = 0
    latent_steps: int = 5  # K continuous thoughts
    # "mlp": LayerNorm then Linear-GELU-Linear (ours); "codi": Linear-GELU-Linear then LayerNorm (CODI's order);
    # "identity": the hidden state as is (Coconut); "pause": one learned embedding, nothing fed back (the control)
    projector: Literal["mlp", "codi", "identity", "soft", "pause"] = "mlp"
    alpha: float = 1.0  # L = L_task + alpha (L_rat + beta L_anc)
    beta: float = 1.0
    lam: float = 1.0  # weight of the second-order (covariance) term inside L_rat
    first_order: bool = True
    second_order: bool = True
    anchor: bool = True
    # (choice) at an intermediate stage, L_rat's first-order term compares the thoughts' mean with the teacher's over
    # its first k rationale steps (per-prefix cache statistics); false: L_rat at the final stage only
    prefix_statistics: bool = False
    # (choice) the prefix term's units: "std" divides each subspace direction by the teacher's variance across
    # examples (what distinguishes one problem from another weighs as much as what all share); "energy" as L_rat
    prefix_norm: Literal["std", "energy"] = "std"
    # (choice) step anchors: the state feeding step k's thoughts is pulled towards the teacher's state where it hands
    # step k's result over, in units of the teacher's spread across examples (docs/methods.md); weight step_weight
    step_anchors: bool = False
    step_weight: float = 1.0
    # (control) the step anchors' target: "hidden" the teacher's hand-over state (above); "token" the cross-entropy
    # of the LM head at the fed state against the first token of step k's result (no cache statistics needed)
    step_target: Literal["hidden", "token"] = "hidden"
    # (control) "std" divides each direction of the hidden step target by the teacher's variance across examples;
    # "none" the raw squared error (at lori.basis=full: the plain hidden-state MSE)
    step_norm: Literal["std", "none"] = "std"
    # (choice) divide each term by the teacher's per-layer energy (losses/lori.py), so that layers weigh alike
    normalize: bool = True
    # (choice) the anchor term averages its layers (1/L, like L_rat, so beta balances the two); false: the literal sum
    anchor_layer_mean: bool = True

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"lori.rank must be >= 1 or null, got {self.rank}")
        if self.rank is None and self.energy is None:
            raise ConfigError("lori.rank and lori.energy cannot both be null: set a rank or an energy threshold")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"lori.energy must be in (0, 1], got {self.energy}")
        if self.latent_steps < 1:
            raise ConfigError(f"lori.latent_steps must be >= 1, got {self.latent_steps}")
        if self.layers is not None and (not self.layers or min(self.layers) < 1):
            raise ConfigError(f"lori.layers must be null (all) or a non-empty list of layer numbers >= 1, "
                              f"got {self.layers}")
        if not (self.first_order or self.second_order or self.anchor or self.step_anchors):
            raise ConfigError("lori.first_order, lori.second_order, lori.anchor and lori.step_anchors are all false: "
                              "that is Coconut (method: coconut) or lori.alpha=0; enable a term")
        for key in ("calib_size", "shard_size", "precompute_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"lori.{key} must be >= 1, got {getattr(self, key)}")
        readers = {"prefix_statistics": self.prefix_statistics,
                   "step_anchors": self.step_anchors and self.step_target == "hidden"}
        if not self.cache_steps and any(readers.values()):
            on = [k for k, v in readers.items() if v]
            raise ConfigError(f"lori.cache_steps=false leaves the per-step statistics out of the cache, but "
                              f"{' and '.join('lori.' + k for k in on)} read them; set lori.cache_steps=true")
        if not self.cache_cov and self.second_order:
            raise ConfigError("lori.cache_cov=false leaves the covariance out of the cache, but lori.second_order "
                              "reads it; set lori.second_order=false or lori.cache_cov=true")
        if self.basis == "full" and self.energy is not None:
            raise ConfigError("lori.basis=full keeps every direction (rank = the hidden width), so lori.energy has "
                              "no rank to choose; set lori.energy=null")
        for key in ("alpha", "beta", "lam", "step_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"lori.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class CoconutConfig:
    """Coconut (Hao et al. 2024): LoRi's latent student and curriculum, trained with cross-entropy only."""

    # K of the final stage; null: curriculum.stages x curriculum.thoughts_per_step, Coconut's rule (its
    # pad_latent_to_max: 3 stages x c=2 = 6 thoughts on GSM8K).
    latent_steps: int | None = None
    projector: Literal["identity", "mlp", "codi", "soft", "pause"] = "identity"  # Coconut feeds the last hidden state back

    def __post_init__(self) -> None:
        if self.latent_steps is not None and self.latent_steps < 1:
            raise ConfigError(f"coconut.latent_steps must be >= 1 or null, got {self.latent_steps}")


@dataclass
class SimCotConfig:
    """SIM-CoT (arXiv 2509.20317, InternLM/SIM-CoT) on Coconut's student and curriculum: an auxiliary decoder reads
    each group of c thoughts and writes its rationale step (docs/methods.md); dropped at inference."""

    latent_steps: int | None = None  # K of the final stage; null: curriculum.stages x curriculum.thoughts_per_step
    projector: Literal["identity", "mlp", "codi", "soft", "pause"] = "identity"
    weight: float = 1.0  # of the decoder's cross-entropy, averaged over the groups (the authors' 1.0)

    def __post_init__(self) -> None:
        if self.latent_steps is not None and self.latent_steps < 1:
            raise ConfigError(f"sim_cot.latent_steps must be >= 1 or null, got {self.latent_steps}")
        if self.weight < 0:
            raise ConfigError(f"sim_cot.weight must be >= 0, got {self.weight}")


@dataclass
class CodiConfig:
    """CODI (Shen et al. 2025): L = alpha CE_teacher + beta CE_student + gamma L_distill (docs/methods.md).
    Defaults are the authors' GPT-2 script (scripts/train_gpt2_gsm8k-aug.sh); their LLaMA-3.2-1B script uses
    gamma = 20."""

    latent_steps: int = 6  # K continuous thoughts (--num_latent 6, GPT-2 and LLaMA)
    # "codi": Linear-GELU-Linear then LayerNorm, CODI's order; "mlp": LoRi's LayerNorm-first projector
    projector: Literal["codi", "mlp", "identity", "soft", "pause"] = "codi"
    alpha: float = 1.0  # teacher CE (their ref_loss_factor)
    beta: float = 1.0  # student CE
    gamma: float = 1.0  # distillation (their distill_loss_factor: 1 for GPT-2, 20 for LLaMA-3.2-1B)
    # their code's default (smooth_l1, beta 1), which produced the published numbers; the paper writes L1
    distance: Literal["smooth_l1", "l1"] = "smooth_l1"

    def __post_init__(self) -> None:
        if self.latent_steps < 1:
            raise ConfigError(f"codi.latent_steps must be >= 1, got {self.latent_steps}")
        for key in ("alpha", "beta", "gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"codi.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class AuxSumConfig:
    """The running-sum auxiliary head of Bai et al. 2025 (``ajyl/icot``) on a No-CoT student (``method: aux-sum``,
    multiplication only): a linear head on the hidden state of layer ``layer`` at the position that predicts answer
    digit k regresses the column's running sum c^_k = sum_{i+j=k} a_i b_j + floor(c^_{k-1} / 10), and
    L = CE(answer) + weight * MSE."""

    layer: int | None = None  # hidden state read (0 = embeddings, L = last block); null: the middle block, L // 2
    weight: float = 1.0
    # the regression target is c^_k / scale: 1 keeps the raw sums (tens to hundreds), so an error of one unit in
    # the last digit still costs as much as a nat of cross-entropy
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"aux_sum.layer must be >= 0 (0 = embeddings) or null, got {self.layer}")
        if self.weight < 0:
            raise ConfigError(f"aux_sum.weight must be >= 0, got {self.weight}")
        if self.scale <= 0:
            raise ConfigError(f"aux_sum.scale must be > 0, got {self.scale}")


@dataclass
class Config:
    method: MethodName = "cot-sft"
    out_dir: str = "out/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lori: LoRiConfig = field(default_factory=LoRiConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    coconut: CoconutConfig = field(default_factory=CoconutConfig)
    codi: CodiConfig = field(default_factory=CodiConfig)
    aux_sum: AuxSumConfig = field(default_factory=AuxSumConfig)
    sim_cot: SimCotConfig = field(default_factory=SimCotConfig)

    def __post_init__(self) -> None:
        if self.train.sharding == "fsdp" and self.model.lora_r is not None:
            raise ConfigError("train.sharding=fsdp with model.lora_r (LoRA) is not supported: a LoRA checkpoint's "
                              "merged weights are made from an unsharded copy of the model; LoRA trains few weights, "
                              "so use train.sharding=none (DDP, with model.gradient_checkpointing=true for memory)")
        if self.curriculum.stage_cap(self.train.steps) < 1:
            raise ConfigError(f"curriculum.final_share={self.curriculum.final_share} leaves less than one step per "
                              f"stage for {self.curriculum.stages} stages in train.steps={self.train.steps}; lower "
                              "final_share or curriculum.stages, or raise train.steps")
        if self.method == "icot-si" and self.curriculum.stages == 0:
            raise ConfigError("method: icot-si with curriculum.stages=0 removes the whole rationale from the first "
                              "step, which is No-CoT; set curriculum.stages >= 1 (or method: no-cot)")
        if self.method == "coconut" and self.coconut.latent_steps is None and self.curriculum.stages == 0:
            raise ConfigError("method: coconut without a curriculum (curriculum.stages=0) needs coconut.latent_steps "
                              "(K); by default K = curriculum.stages x curriculum.thoughts_per_step")
        if self.method == "sim-cot" and self.sim_cot.latent_steps is None and self.curriculum.stages == 0:
            raise ConfigError("method: sim-cot without a curriculum (curriculum.stages=0) needs sim_cot.latent_steps "
                              "(K); by default K = curriculum.stages x curriculum.thoughts_per_step")
        if self.method == "lori" and self.model.name == "tiny":
            # A tiny model's width and depth are these fields (one started from a checkpoint must match it), so the
            # subspace's bounds are known before any teacher runs; other models are checked by lori precompute.
            check_subspace(self.lori, self.model.hidden_size, self.model.num_layers, "model.hidden_size")


def check_subspace(lori: LoRiConfig, width: int, n_layers: int, where: str) -> None:
    """Refuse a subspace the teacher's hidden states cannot hold: ``lori.rank`` over their width ``d`` (the
    subspace lies in R^d), ``lori.layers`` past the model's layers, ``lori.layer_rank`` over the layers aligned."""
    if lori.basis != "full" and lori.rank is not None and lori.rank > width:
        raise ConfigError(f"lori.rank={lori.rank} is larger than the hidden width {width} ({where}): a subspace of "
                          f"the hidden states has rank <= {width}; set lori.rank <= {width}")
    if lori.layers is not None and max(lori.layers) > n_layers:
        raise ConfigError(f"lori.layers {lori.layers}: the model has layers 1..{n_layers}")
    aligned = len(lori.layers) if lori.layers is not None else n_layers
    if lori.layer_rank is not None and lori.layer_rank > aligned:
        raise ConfigError(f"lori.layer_rank={lori.layer_rank} is larger than the {aligned} layer(s) aligned "
                          f"(lori.layers); set lori.layer_rank <= {aligned}")


# --------------------------------------------------------------------------------------------------------------
# Loading, overriding, validating


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints are accepted for floats)."""
    origin = get_origin(tp)
    if origin is Literal:
        # YAML 1.1 reads a bare no/off (yes/on) as a boolean: `mixed_precision: no` means the choice 'no'.
        if isinstance(value, bool) and ("yes" if value else "no") in get_args(tp):
            return "yes" if value else "no"
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like [1, 2], got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp} at {key}")  # a bug in this module, not user input


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)  # YAML keys may be numbers or null
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(tree: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set each ``(dotted key, value)`` of ``overrides`` (e.g. from :func:`parse_overrides`) in a config tree, in
    order, creating missing sections; in place, and returns ``tree``. A key that runs through a value is refused."""
    for dotted, value in overrides:
        parts = dotted.split(".")
        node = tree
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[: i + 1])} is a value ({child!r:.40}), "
                                  "not a section with keys")
            node = child
        node[parts[-1]] = value
    return tree


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=3e-4", "method=lori"]`` -> ``[("train.lr", 0.0003), ("method", "lori")]`` (values as YAML)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        if any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r}: the key {key!r} has an empty part; keys look like train.lr")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from e
        except RecursionError:
            raise ConfigError(f"override {key}: value nested too deeply") from None
        # YAML reads 3e-4 as a string (it wants 3.0e-4); accept the usual float spellings.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") and value.strip() not in ("", ".") else value
            except ValueError:
                pass
        out.append((key, value))
    return out


# Config fields that hold a path (relative to the YAML file's folder there, to the working directory on the command
# line); train.resume unless auto / never, model.name when written as a path or naming a folder (else a hub id).
PATH_KEYS = ("out_dir", "data.train_file", "data.valid_file", "data.test_file", "model.name", "model.init_from",
             "train.resume", "lori.teacher", "lori.cache_dir")
_NOT_PATHS = {"train.resume": ("auto", "never"), "model.name": ("tiny",)}


def _is_path(key: str, value: Any, base: str) -> bool:
    if not isinstance(value, str) or not value or value in _NOT_PATHS.get(key, ()):
        return False
    if key != "model.name":
        return True
    written = value.startswith(("./", "../", "/", "~")) or os.path.isabs(value)
    return written or os.path.isdir(os.path.join(base, value))


def resolve_paths(tree: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """Make the relative :data:`PATH_KEYS` of a config tree absolute against ``base`` (in place; returns ``tree``).
    ``~`` is the home folder. Values that are not strings are left for validation to refuse."""
    base = os.path.abspath(base)
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        node = tree.get(section) if section else tree
        if isinstance(node, dict) and _is_path(key, node.get(name), base):
            node[name] = os.path.abspath(os.path.join(base, os.path.expanduser(node[name])))
    return tree


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with every path made absolute against the working directory (what a saved config holds)."""
    return config_from_dict(resolve_paths(to_dict(cfg), os.getcwd()))


class _StrictLoader(yaml.SafeLoader):
    """YAML as the presets mean it: a key given twice in one mapping is refused (PyYAML keeps the last silently), and
    ``1e-3`` is a number (YAML 1.1 reads a float without a dot as text)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"{line}: key {key!r} is given twice in one mapping "
                                  f"(lines {seen[key]} and {line}); YAML would keep the last one silently: keep one")
            seen.setdefault(key, line) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_tree(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML preset (not yet validated: overrides may still be applied to it), its relative
    paths made absolute against the file's folder (:func:`resolve_paths`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8-sig"), _StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except ConfigError as e:  # a duplicated key, "LINE: ..."
        raise ConfigError(f"{path}:{e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (method:, data:, train:, ...)")
    return resolve_paths(loaded, path.parent)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML preset (or the defaults) and apply dotted overrides; validate everything. An error the preset
    alone has names the file; one the overrides bring says "(from the command line)"."""
    tree = load_tree(path) if path is not None else {}
    if path is not None:
        try:
            _build(Config, copy.deepcopy(tree), "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    try:
        return _build(Config, apply_overrides(tree, parse_overrides(overrides or [])), "")
    except ConfigError as e:
        raise ConfigError(f"{e} (from the command line)") from None


def command_line_config(config: str | None, overrides: list[str]) -> Config:
    """``lori train|precompute [CONFIG.yaml] [key=value ...]``: the preset, when the first word is not an override,
    with the overrides applied (argparse puts a first override in ``config`` when no preset is named)."""
    words = [*([config] if config else []), *overrides]
    if words and "=" not in words[0]:
        return load_config(words[0], words[1:])
    return load_config(None, words)


def config_from_dict(tree: dict[str, Any]) -> Config:
    return _build(Config, tree, "")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` to ``path`` with absolute paths (:func:`absolute_paths`): read back by :func:`load_config` or
    ``lori eval`` from any folder, it names the same files."""
    from .utils import atomic_write_text  # here: lori.utils loads torch and numpy, which reading a config needs not

    atomic_write_text(Path(path), dump_config(absolute_paths(cfg)))
