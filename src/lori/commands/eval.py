"""``lori eval CHECKPOINT [CHECKPOINT ...] [--out DIR] [key=value ...]``: evaluate checkpoints on one test set; write
results.json, results.md and predictions.

Before any model is loaded, every checkpoint's test set is identified (lori.evaluation.scoring.test_set_identity) and
the checkpoints are refused, naming two of them and what differs, unless they all evaluate the same problems; every
output folder is checked to be writable, so a bad ``--out`` fails at once rather than after the evaluation.
Overrides other than ``eval.*``/``data.*`` must change how the weights generate (lori.student.eval_config); the
rows record them. Predictions of an earlier evaluation in an output folder are removed with the new results.json,
which holds only this evaluation's rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoriError

SINGLE_PROCESS = True
POSITIONAL = "checkpoints"  # key=value words after an option go back here


def add_arguments(p) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders or run folders (newest checkpoint), "
                                                  "then optional key=value overrides")
    p.add_argument("--out", help="folder for results.json, results.md and predictions (default: RUN/eval-SPLIT)")


def run(args) -> None:
    paths = [x for x in args.checkpoints if "=" not in x]
    eval_checkpoints(paths, [x for x in args.checkpoints if "=" in x], args.out)


def eval_checkpoints(paths: list[str], overrides: list[str], out: str | None) -> Path:
    from ..evaluation.results import markdown_table, test_set_difference, write_results
    from ..evaluation.scoring import evaluate_checkpoint, test_set_identity
    from ..models.checkpoint_folders import resolve_checkpoint
    from ..student import eval_config, inference_overrides
    from ..utils import check_writable

    if not paths:
        raise LoriError("lori eval needs at least one checkpoint or run folder")
    ckpts = [resolve_checkpoint(p) for p in paths]
    cfgs = [eval_config(ckpt, overrides) for ckpt in ckpts]
    changed = inference_overrides(overrides)
    names = [f"predictions-{cfg.method}-{ckpt.name}.jsonl" for ckpt, cfg in zip(ckpts, cfgs)]
    # Runs of one method saved at the same step (e.g. ablations) would share a file name: add the run folder's.
    names = [f"predictions-{ckpt.parent.parent.name}-{cfg.method}-{ckpt.name}.jsonl" if names.count(n) > 1 else n
             for n, ckpt, cfg in zip(names, ckpts, cfgs)]
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
        ev = evaluate_checkpoint(ckpt, cfg, overrides=changed)
        rows.append(ev.row)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / name).open("w") as f:
            for p in ev.predictions:
                f.write(json.dumps(p) + "\n")
    if changed:
        print(f"[lori] evaluated with {' '.join(changed)} (not the checkpoints' own settings): the rows record it, "
              "and `lori export` does not put them on a model card")
    stale = sorted(f for f in out_dir.glob("predictions-*.jsonl") if f.name not in names)
    for f in stale:
        f.unlink()
    if stale:
        print(f"[lori] removed {len(stale)} earlier predictions file(s) from {out_dir} "
              f"({', '.join(f.name for f in stale)}): its results.json holds this evaluation only")
    ts = identities[0]
    note = (f"\nEvaluated with `{' '.join(changed)}`, not the checkpoints' own settings (each row's `inference` in "
            "results.json records them).\n") if changed else ""
    write_results(out_dir, ts["task"], ts["split"], ts["n"], rows, appendix=note)
    print(markdown_table(rows))
    print(f"[lori] wrote {out_dir / 'results.json'}")
    return out_dir
