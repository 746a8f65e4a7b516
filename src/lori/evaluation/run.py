"""``lori eval``: evaluate checkpoints on one task and split; write results.json, results.md and predictions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..config import Config, config_from_dict, parse_overrides, _set_dotted
from ..data.splits import load_split
from ..errors import LoriError
from ..methods import METHODS
from ..models.build import load_pretrained
from ..tasks import TASKS
from ..training.checkpoint import CONFIG_FILE, resolve_checkpoint
from .evaluate import Evaluation, evaluate
from .report import markdown_table, write_results


def checkpoint_config(ckpt: Path, overrides: list[str]) -> Config:
    """The config a checkpoint was trained with, plus ``eval.*``/``data.*`` overrides."""
    f = ckpt / CONFIG_FILE
    if not f.is_file():
        raise LoriError(f"{ckpt} has no {CONFIG_FILE}; was it written by `lori train`?")
    tree = yaml.safe_load(f.read_text())
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def evaluate_checkpoint(ckpt: Path, cfg: Config, progress: bool = True) -> Evaluation:
    method = METHODS[cfg.method]
    lm, tokenizer = load_pretrained(ckpt, cfg.model.dtype)
    from ..training.model_setup import configure_tokenizer

    configure_tokenizer(tokenizer, cfg)
    module = method.wrap(lm, tokenizer, cfg, ckpt)
    examples = load_split(cfg.data, cfg.eval.split)
    if cfg.eval.limit is not None:
        examples = examples[: cfg.eval.limit]
    if torch.cuda.is_available():
        module.to("cuda")
    return evaluate(
        getattr(module, "lm", module), tokenizer, [method.prompt(ex, tokenizer) for ex in examples], examples,
        TASKS[cfg.data.task], method=cfg.method, checkpoint=str(ckpt), batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, latency_problems=cfg.eval.latency_problems,
        progress=progress, **method.generation_kwargs(module, tokenizer),
    )


def eval_checkpoints(paths: list[str], overrides: list[str], out: str | None) -> Path:
    if not paths:
        raise LoriError("lori eval needs at least one checkpoint or run folder")
    ckpts = [resolve_checkpoint(p) for p in paths]
    cfgs = [checkpoint_config(ckpt, overrides) for ckpt in ckpts]
    names = [f"predictions-{cfg.method}-{ckpt.name}.jsonl" for ckpt, cfg in zip(ckpts, cfgs)]
    # Runs of one method saved at the same step (e.g. ablations) would share a file name: add the run folder's.
    names = [f"predictions-{ckpt.parent.parent.name}-{cfg.method}-{ckpt.name}.jsonl" if names.count(n) > 1 else n
             for n, ckpt, cfg in zip(names, ckpts, cfgs)]
    rows, meta = [], None
    out_dir = None
    for ckpt, cfg, name in zip(ckpts, cfgs, names):
        this = (cfg.data.task, cfg.eval.split)
        if meta is not None and this[:2] != meta[:2]:
            raise LoriError(f"{ckpt} evaluates {this}, but earlier checkpoints {meta[:2]}: one task and split per run")
        out_dir = Path(out) if out else ckpt.parent.parent / f"eval-{cfg.eval.split}"
        ev = evaluate_checkpoint(ckpt, cfg)
        meta = (cfg.data.task, cfg.eval.split, len(ev.predictions))
        rows.append(ev.row)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / name).open("w") as f:
            for p in ev.predictions:
                f.write(json.dumps(p) + "\n")
    write_results(out_dir, meta[0], meta[1], meta[2], rows)
    print(markdown_table(rows))
    print(f"[lori] wrote {out_dir / 'results.json'}")
    return out_dir
