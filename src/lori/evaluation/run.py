"""``lori eval``: evaluate checkpoints on one test set; write results.json, results.md and predictions.

Before any model is loaded, every checkpoint's test set is identified (:func:`test_set_identity`: task, split, the
problems' source and a digest of the problems themselves) and the checkpoints are refused, naming two of them and what
differs, unless they all evaluate the same problems; every output folder is checked to be writable
(``lori.utils.check_writable``), so a bad ``--out`` fails at once rather than after the evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ..config import Config
from ..data.splits import load_split
from ..errors import LoriError
from ..models.checkpoint import checkpoint_config, resolve_checkpoint
from ..utils import sha256_file
from .evaluate import Evaluation, evaluate
from .report import markdown_table, write_results


def eval_examples(cfg: Config) -> list:
    """The problems ``cfg`` evaluates: ``cfg.eval.split`` of its data, the first ``eval.limit`` of them."""
    examples = load_split(cfg.data, cfg.eval.split)
    return examples if cfg.eval.limit is None else examples[: cfg.eval.limit]


def test_set_identity(cfg: Config, examples: list | None = None) -> dict:
    """What a results row was scored on (lori.evaluation.report): task, split, n, the source (``file PATH`` or the
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


def evaluate_checkpoint(ckpt: Path, cfg: Config, progress: bool = True) -> Evaluation:
    """Evaluate ``ckpt`` on ``cfg``'s test set; the row carries its :func:`test_set_identity`."""
    # imported here: a long-running process whose older modules are loaded can still import this one
    from ..student import load_student

    student = load_student(ckpt, cfg)  # what lori.load(...) returns: one way to load and prompt a student
    examples = eval_examples(cfg)
    identity = test_set_identity(cfg, examples)
    ev = evaluate(
        student.lm, student.tokenizer, [student.prompt_ids(ex) for ex in examples], examples,
        student.task, method=cfg.method, checkpoint=str(ckpt), batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, latency_problems=cfg.eval.latency_problems,
        progress=progress, **student.generation_kwargs(),
    )
    if not hasattr(ev.row, "test_set"):  # pragma: no cover - a long-lived process that imported the report module
        return ev  # before this version was installed (a sweep running across an upgrade): its rows cannot hold it
    return dataclasses.replace(ev, row=dataclasses.replace(ev.row, test_set=identity))


def eval_checkpoints(paths: list[str], overrides: list[str], out: str | None) -> Path:
    if not paths:
        raise LoriError("lori eval needs at least one checkpoint or run folder")
    ckpts = [resolve_checkpoint(p) for p in paths]
    cfgs = [checkpoint_config(ckpt, overrides) for ckpt in ckpts]
    names = [f"predictions-{cfg.method}-{ckpt.name}.jsonl" for ckpt, cfg in zip(ckpts, cfgs)]
    # Runs of one method saved at the same step (e.g. ablations) would share a file name: add the run folder's.
    names = [f"predictions-{ckpt.parent.parent.name}-{cfg.method}-{ckpt.name}.jsonl" if names.count(n) > 1 else n
             for n, ckpt, cfg in zip(names, ckpts, cfgs)]
    # imported here, not above: a long-running process (a sweep's `lori compare`) that loaded older lori.utils /
    # report modules before an upgrade can still import this module for its evaluations
    from ..utils import check_writable
    from .report import test_set_difference

    # Everything that can be refused is refused before the first model is loaded.
    identities = [test_set_identity(cfg) for cfg in cfgs]
    for ckpt, identity in zip(ckpts[1:], identities[1:]):
        diff = test_set_difference(identities[0], identity)
        if diff:
            raise LoriError(f"{ckpts[0]} and {ckpt} evaluate different test sets ({diff}); one results table holds "
                            "one test set: evaluate them separately, or give both the same data.* and eval.split/"
                            "eval.limit overrides")
    out_dirs = [Path(out) if out else ckpt.parent.parent / f"eval-{cfg.eval.split}" for ckpt, cfg in zip(ckpts, cfgs)]
    for folder in dict.fromkeys(out_dirs):
        check_writable(folder, "--out" if out else "the evaluation folder")
    rows = []
    for ckpt, cfg, name, out_dir in zip(ckpts, cfgs, names, out_dirs):
        ev = evaluate_checkpoint(ckpt, cfg)
        rows.append(ev.row)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / name).open("w") as f:
            for p in ev.predictions:
                f.write(json.dumps(p) + "\n")
    ts = identities[0]
    write_results(out_dir, ts["task"], ts["split"], ts["n"], rows)
    print(markdown_table(rows))
    print(f"[lori] wrote {out_dir / 'results.json'}")
    return out_dir
