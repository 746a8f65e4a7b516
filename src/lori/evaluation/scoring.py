"""Scoring a checkpoint on its test set: which problems it evaluates, the identity of that test set (task, split, the
problems' source and a digest of the problems themselves), and the evaluation whose row carries that identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ..config import Config
from ..data.splits import load_split
from ..models.checkpoint_folders import weights_digest
from ..models.tokenizer import check_vocabulary
from ..student import inference_settings, load_student
from ..utils import sha256_file
from .evaluate import Evaluation, evaluate


def eval_examples(cfg: Config) -> list:
    """The problems ``cfg`` evaluates: ``cfg.eval.split`` of its data, the first ``eval.limit`` of them."""
    examples = load_split(cfg.data, cfg.eval.split)
    return examples if cfg.eval.limit is None else examples[: cfg.eval.limit]


def test_set_identity(cfg: Config, examples: list | None = None) -> dict:
    """What a results row was scored on (lori.evaluation.results): task, split, n, the source (``file PATH`` or the
    generator's settings), ``sha256`` over the evaluated problems' questions and gold answers in order (what decides
    whether two rows may share a table) and, for a file, ``file_sha256`` of the whole file."""
    d, split = cfg.data, cfg.eval.split
    examples = eval_examples(cfg) if examples is None else examples
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.question, ex.answer], ensure_ascii=False).encode())
        h.update(b"\n")
    path = {"train": d.train_file, "valid": d.valid_file, "test": d.test_file}[split]
    limit = "" if cfg.eval.limit is None else f", first {cfg.eval.limit}"
    identity = {"task": d.task, "split": split, "n": len(examples)}
    if path is not None:
        identity["source"] = f"file {Path(path).resolve()}{limit}"
        identity["file_sha256"] = sha256_file(Path(path))
    else:
        if d.task == "chains":
            what = (f"{d.chain_steps}-step chains mod {d.chain_modulus} (ops {d.chain_ops}, "
                    f"back_ref {d.chain_back_ref}, rationale {d.chain_rationale})")
        else:
            what = f"{d.digits[0]}x{d.digits[1]} {d.task}"
        identity["source"] = (f"generated {what}, data.seed={d.seed}, valid_size={d.valid_size}, "
                              f"test_size={d.test_size}{limit}")
    identity["sha256"] = h.hexdigest()
    return identity


def evaluate_checkpoint(ckpt: Path, cfg: Config, progress: bool = True, overrides: list[str] = ()) -> Evaluation:
    """Evaluate ``ckpt`` on ``cfg``'s test set; the row carries its :func:`test_set_identity`, the digest of the
    weights evaluated and the inference settings (with ``overrides``: the command-line ones that changed them)."""
    student = load_student(ckpt, cfg)  # what lori.load(...) returns: one way to load and prompt a student
    examples = eval_examples(cfg)
    check_vocabulary(student.tokenizer, examples, f"data.{cfg.eval.split}_file")
    identity = test_set_identity(cfg, examples)
    ev = evaluate(
        student.lm, student.tokenizer, [student.prompt_ids(ex) for ex in examples], examples,
        student.task, method=cfg.method, checkpoint=str(ckpt), batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, latency_problems=cfg.eval.latency_problems,
        progress=progress, **student.generation_kwargs(),
    )
    inference = inference_settings(cfg) | ({"overrides": list(overrides)} if overrides else {})
    return dataclasses.replace(ev, row=dataclasses.replace(ev.row, test_set=identity, weights_sha256=weights_digest(ckpt),
                                                           inference=inference))
