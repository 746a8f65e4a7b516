"""``lori prepare gsm8k-aug``: the GSM8k-Aug training set (Deng et al.) in the iCoT line format, plus a manifest.

Two sources: ``hub``, the published set (385,620 problems with equation-only rationales) from the Hugging Face Hub
(``whynlp/gsm8k-aug``, split ``train``, through ``datasets``; network), and ``gsm8k-train``, offline, GSM8K's own
``train.jsonl`` with its ``<<...>>`` calculator notes as the rationale (:func:`lori.data.readers.read_gsm8k_jsonl`),
which reproduces the published lines of the original problems. Either way every problem whose question
(whitespace-normalised) appears in the GSM8k-Aug validation file is excluded, since those come from GSM8K's train
split too. Writes ``OUT/train.txt`` and ``OUT/manifest.json`` (source, counts, sha256 of every input and of the
output); docs/data.md (GSM8k-Aug) has the row format and how close the offline lines come.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError, LoriError
from ..utils import atomic_write_text, sha256_file
from .readers import read_gsm8k_jsonl, read_icot, write_icot
from .schema import Example

HUB_DATASET = "whynlp/gsm8k-aug"
SOURCES = ("hub", "gsm8k-train")


def _norm(question: str) -> str:
    return " ".join(question.split())


def hub_examples(dataset: str = HUB_DATASET, split: str = "train") -> tuple[list[Example], str]:
    """GSM8k-Aug from the hub (needs ``datasets`` and network); returns the examples and the dataset revision."""
    try:
        import datasets  # optional: only --source hub needs it
    except ImportError as e:
        raise LoriError("--source hub needs the datasets package (pip install datasets) and network access; "
                        "offline, use --source gsm8k-train") from e
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # noqa: BLE001 - any failure to fetch is reported the same way
        raise LoriError(f"cannot load {dataset} (split {split}) from the hub: {e}; offline, use "
                        "--source gsm8k-train") from e
    examples = []
    for i, row in enumerate(ds):
        steps = row.get("steps", row.get("cot"))
        if isinstance(steps, str):
            steps = steps.split()
        if steps is None or "question" not in row or "answer" not in row:
            raise DataError(Path(dataset), i + 1, f"unexpected row keys {sorted(row)}",
                            "expected question, steps (or cot) and answer")
        answer = str(row["answer"]).strip().replace(",", "")
        examples.append(Example(str(row["question"]).strip(), tuple(s.strip() for s in steps if s.strip()), answer,
                                f"{dataset}:{split}:{i + 1}"))
    revision = getattr(getattr(ds, "info", None), "version", None)
    return examples, str(revision) if revision is not None else "unknown"


def prepare_gsm8k_aug(out: str | Path, source: str, gsm8k_train: str | Path, valid: str | Path | None) -> dict:
    """Write ``out/train.txt`` and ``out/manifest.json`` (module docstring); return the manifest. The default paths
    are `lori prepare gsm8k-aug`'s (lori.commands.prepare.DATA); ``valid=None`` excludes nothing."""
    if source not in SOURCES:
        raise LoriError(f"--source {source!r}: choose one of {', '.join(SOURCES)}")
    out = Path(out)
    inputs: dict[str, dict] = {}
    if source == "hub":
        examples, revision = hub_examples()
        inputs["hub"] = {"dataset": HUB_DATASET, "split": "train", "version": revision}
    else:
        examples = read_gsm8k_jsonl(gsm8k_train)
        inputs["gsm8k_train"] = {"path": str(gsm8k_train), "sha256": sha256_file(Path(gsm8k_train))}
    held_out: set[str] = set()
    if valid is not None:
        held_out = {_norm(ex.question) for ex in read_icot(valid)}
        inputs["valid"] = {"path": str(valid), "sha256": sha256_file(Path(valid)), "questions": len(held_out)}
    kept = [ex for ex in examples if _norm(ex.question) not in held_out]
    train_file = out / "train.txt"
    write_icot(kept, train_file)  # checks every example before it creates anything (out/ included)
    manifest = {
        "what": "GSM8k-Aug training set in the iCoT format (question||<<a=b>> <<c=d>> #### answer)",
        "source": source,
        "inputs": inputs,
        "read": len(examples),
        "excluded": len(examples) - len(kept),
        "written": len(kept),
        "without_steps": sum(1 for ex in kept if not ex.steps),
        "output": {"path": str(train_file), "sha256": sha256_file(train_file)},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
