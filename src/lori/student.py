"""The Python API: load a trained student of any method and generate answers with it.

    import lori

    student = lori.load("out/demo/lori")              # a run folder (its newest checkpoint), a checkpoint folder
    for r in student.generate(["a = 7 ; b = a * 7 ; ? b"], max_new_tokens=32):   # or a `lori export` folder
        print(r.answer, r.latent_steps, r.tokens, r.text)

:func:`load` reads what a checkpoint says about itself (``lori_config.yaml``), so generation is the method's own,
as in ``lori eval`` (same :func:`load_student`, same ``generate_batches``). Plain ``transformers`` ``generate()``
never runs a latent student's K latent steps, so its answers are not the student's. docs/using-students.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import parse_overrides, to_dict
from .data.schema import Example
from .errors import ConfigError, LoriError
from .evaluation.generate import decode, generate_batches
from .methods import METHODS
from .models.checkpoint_folders import checkpoint_config, resolve_checkpoint
from .models.loading import open_model
from .models.tokenizer import unknown_words, word_vocabulary
from .tasks import TASKS


@dataclass(frozen=True)
class Generated:
    """One question's generation.

    ``text``: what the model wrote after its prompt (after ``<eot>`` for a latent student), special tokens and EOS
    removed. ``answer``: the answer the task's policy extracts from ``text`` (``lori.tasks``: the first number after
    ``####`` for numeric tasks, the digit string for multiplication), None when there is none. ``latent_steps``: the
    continuous thoughts run before ``<eot>`` (0 for no-cot, cot-sft and icot-si). ``tokens``: the text tokens
    generated (EOS excluded). ``steps``: every sequential decoding step after the prompt -- latent steps, ``<eot>``,
    the tokens and EOS -- the "generated tokens" figure of ``lori eval``'s tables. ``truncated``: the generation
    hit ``max_new_tokens`` before EOS."""

    question: str
    text: str
    answer: str | None
    latent_steps: int
    tokens: int
    steps: int
    truncated: bool


class Student:
    """A loaded student: ``generate`` answers questions the way ``lori eval`` does.

    Attributes: ``method`` (its name), ``cfg`` (the checkpoint's :class:`lori.config.Config`), ``checkpoint`` (the
    folder loaded), ``task`` (the answer policy, :mod:`lori.tasks`), ``latent_steps`` (K; 0 for explicit methods),
    ``tokenizer``, ``lm`` (the Hugging Face causal LM), ``module`` (what the method wraps around it: the
    :class:`lori.models.latent_student.LatentStudent` of a latent method, else ``lm``) and ``device``."""

    def __init__(self, module, tokenizer, cfg, checkpoint: Path):
        self.module, self.tokenizer, self.cfg, self.checkpoint = module, tokenizer, cfg, Path(checkpoint)
        self.method = cfg.method
        self._method = METHODS[cfg.method]
        self.task = TASKS[cfg.data.task]
        self.lm = getattr(module, "lm", module)
        self.latent_steps = int(getattr(module, "latent_steps", 0) or 0)

    def __repr__(self) -> str:
        return (f"Student(method={self.method!r}, latent_steps={self.latent_steps}, task={self.task.name!r}, "
                f"checkpoint={str(self.checkpoint)!r}, device={str(self.device)!r})")

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def to(self, device) -> Student:
        """Move the student (the LM and the method's modules, e.g. the projector) to ``device``; returns it."""
        self.module.to(device)
        return self

    def prompt_ids(self, example) -> list[int]:
        """The method's generation prompt for a question (a string) or a :class:`lori.data.schema.Example`: token
        ids of ``[bos] question ||`` (explicit methods) or ``[bos] question || <bot>`` (latent ones)."""
        if isinstance(example, str):
            example = Example(example, (), "")
        return self._method.prompt(example, self.tokenizer, self.cfg)

    def generation_kwargs(self) -> dict:
        """What the method adds to greedy decoding: K, the projector, ``<eot>``, the thought positions (none for
        explicit methods)."""
        return self._method.generation_kwargs(self.module, self.tokenizer, self.cfg)

    @torch.no_grad()
    def generate(self, questions: str | Sequence[str], max_new_tokens: int | None = None,
                 batch_size: int | None = None, progress: bool = False) -> list[Generated] | Generated:
        """Greedy answers to ``questions`` (a list of strings, or one string for one :class:`Generated`), written
        as in training: no chat formatting, no few-shot examples, the question text alone.

        ``max_new_tokens`` caps the text tokens after the prompt (after ``<eot>``: the latent steps are not counted);
        default the checkpoint's ``eval.max_new_tokens``. ``batch_size``: questions per batch (left-padded, one KV
        cache; default ``eval.batch_size``). Deterministic: the same questions give the same outputs."""
        single = isinstance(questions, str)
        qs = [questions] if single else list(questions)
        if not qs:
            return []
        tok = self.tokenizer
        budget = self.cfg.eval.max_new_tokens if max_new_tokens is None else max_new_tokens
        prompts = self._checked_prompts(qs, budget)
        was_training = self.module.training
        self.module.eval()
        try:
            g = generate_batches(
                self.lm, prompts, batch_size or self.cfg.eval.batch_size, progress=progress,
                desc=f"generate {self.method}", eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                max_new_tokens=budget, **self.generation_kwargs())
        finally:
            self.module.train(was_training)
        out = []
        for q, toks, steps, cut in zip(qs, g.tokens, g.steps, g.truncated):
            text = decode(tok, toks)
            out.append(Generated(q, text, self.task.extract_answer(text), self.latent_steps, len(toks), steps, cut))
        return out[0] if single else out

    def _checked_prompts(self, qs: list[str], budget: int) -> list[list[int]]:
        """The prompts of ``qs``; an empty question or one longer than the model's positions is refused; words a
        word-level vocabulary reads as ``<unk>`` (``−``, ``×``, fullwidth digits) and prompts that leave less than
        ``budget`` positions are warned about (one line each per call)."""
        vocab = word_vocabulary(self.tokenizer)
        config = self.lm.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        prompts, unknown, short = [], {}, []
        for i, q in enumerate(qs):
            if not isinstance(q, str) or not q.strip():
                raise LoriError(f"generate: question {i} is {'empty' if isinstance(q, str) else type(q).__name__}; "
                                "give the question text")
            unknown.update(dict.fromkeys(unknown_words(self.tokenizer, q, vocab), i))
            prompt = self.prompt_ids(q)
            used = len(prompt) + self.latent_steps + (self.latent_steps > 0)
            if limit and used >= limit:
                raise LoriError(f"generate: question {i} takes {used} positions (prompt and {self.latent_steps} latent "
                                f"steps), but the model has {limit}: shorten the question")
            if limit and used + budget > limit:
                short.append(i)
            prompts.append(prompt)
        if unknown:
            print(f"[lori] warning: generate: {', '.join(map(repr, unknown))} (question {min(unknown.values())}"
                  f"{' and others' if len(set(unknown.values())) > 1 else ''}) not in the model's word-level "
                  f"vocabulary, read as {self.tokenizer.unk_token}: write questions as the training data does (e.g. "
                  "'-' and '*', ASCII digits)", file=sys.stderr, flush=True)
        if short:
            print(f"[lori] warning: generate: {len(short)} question(s) (first: {short[0]}) leave fewer than "
                  f"max_new_tokens={budget} of the model's {limit} positions for the answer: it may be cut or degrade",
                  file=sys.stderr, flush=True)
        return prompts

    def is_correct(self, generated: Generated | str, gold: str) -> bool:
        """Whether a generation (or its text) answers ``gold`` under the task's policy (what ``lori eval`` scores)."""
        text = generated.text if isinstance(generated, Generated) else generated
        return bool(self.task.is_correct(text, gold))


def inference_settings(cfg) -> dict:
    """The settings of ``cfg`` that change how trained weights generate: K, the projector, the thought positions (latent
    methods), the chat template and the dtype. A results row records them (``inference``)."""
    thoughts = METHODS[cfg.method].thoughts
    settings = {"latent_steps": 0 if thoughts is None else thoughts.latent_steps(cfg),
                "projector": None if thoughts is None else thoughts.projector(cfg)}
    if thoughts is not None:  # where the thoughts sit: every curriculum.thought_* key
        settings |= {k: v for k, v in to_dict(cfg.curriculum).items() if k.startswith("thought_")}
    return settings | {"chat_template": cfg.model.chat_template, "dtype": cfg.model.dtype}


EVAL_SECTIONS = ("eval.", "data.")  # what an evaluation may set freely (the test set, the budget)


def inference_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not ``eval.*`` / ``data.*``: those that change how the weights generate."""
    return [o for o, (key, _) in zip(overrides, parse_overrides(list(overrides))) if not key.startswith(EVAL_SECTIONS)]


def eval_config(ckpt: Path, overrides: Sequence[str] = ()):
    """The config a checkpoint was trained with plus command-line ``overrides`` for evaluating or loading it.

    ``eval.*`` and ``data.*`` apply; any other key must change :func:`inference_settings` (``lori.latent_steps=3``),
    else it cannot apply to trained weights (``model.hidden_size=32``, ``train.lr``) and is refused in one line."""
    overrides = list(overrides)
    try:
        cfg = checkpoint_config(ckpt, overrides)
    except ConfigError as e:
        raise ConfigError(f"{e} (from the command line)") from None
    base = checkpoint_config(ckpt, [])
    own = inference_settings(base)
    for item in inference_overrides(overrides):
        try:
            one = checkpoint_config(ckpt, [item])
        except ConfigError:
            continue  # valid only together with another override: the combination is what was checked above
        if to_dict(one) != to_dict(base) and inference_settings(one) == own:
            key = item.split("=", 1)[0].strip()
            why = "the weights fix the model" if key.startswith("model.") else "only training reads it"
            raise ConfigError(f"{item} (from the command line) cannot apply to the trained weights of {ckpt}: {why}; "
                              "an evaluation takes eval.* and data.* keys and the settings that change generation "
                              "(K, the thought positions, the projector, model.chat_template, model.dtype)")
    return cfg


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (what ``lori eval`` uses)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_student(ckpt: str | Path, cfg, device=None) -> Student:
    """The student in checkpoint folder ``ckpt`` trained with ``cfg``: its weights and tokenizer and the method's
    wrapper (e.g. a latent student's projector, read from the folder; :func:`lori.models.loading.open_model`), on
    ``device`` (default :func:`default_device`). ``lori eval`` loads with it."""
    module, tokenizer = open_model(ckpt, cfg, METHODS[cfg.method].wrap)
    module.eval()
    module.to(default_device() if device is None else device)
    return Student(module, tokenizer, cfg, Path(ckpt))


def load(path: str | Path, device: str | torch.device | None = None, overrides: Sequence[str] = ()) -> Student:
    """Load a student of any method (no-cot, cot-sft, icot-si, coconut, codi, lori) for generation.

    ``path``: a run folder (``lori train``'s ``out_dir``: its newest ``checkpoints/step-*`` is loaded), a checkpoint
    folder, or a folder written by ``lori export``. ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (default:
    the GPU when there is one). ``overrides``: ``key=value`` strings applied to the checkpoint's config, e.g.
    ``["eval.max_new_tokens=64"]`` (the defaults of :meth:`Student.generate`).

    Raises :class:`lori.errors.LoriError` (one line naming the folder and what is missing) for a folder that holds
    no student, e.g. no ``lori_config.yaml`` or a latent student without its projector file."""
    ckpt = resolve_checkpoint(path)
    return load_student(ckpt, eval_config(ckpt, overrides), device)


__all__ = ["Generated", "Student", "eval_config", "inference_settings", "load", "load_student"]
