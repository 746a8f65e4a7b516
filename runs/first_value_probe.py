"""Teacher-forced per-position accuracy of a latent student at one curriculum stage's rendering, on the first 200
validation problems: the first language value after the thoughts is the one that must be read from them.

    python runs/first_value_probe.py out/RUN/checkpoints/step-000400 1      # stage 1

Prints one line per supervised suffix position: the token, its cross-entropy and its accuracy (a position every
problem has). Used for the "What it took" table in docs/log.md."""

from __future__ import annotations

import sys

import torch

from lori.config import load_config
from lori.data.splits import load_split
from lori.losses import IGNORE_INDEX
from lori.methods import METHODS
from lori.models.checkpoint_folders import resolve_checkpoint
from lori.models.loading import open_model


def main(run: str, stage: int, n: int = 200) -> None:
    ckpt = resolve_checkpoint(run)
    cfg = load_config(ckpt / "lori_config.yaml")
    method = METHODS[cfg.method]
    module, tok = open_model(ckpt, cfg, method.wrap)
    module.eval()
    items = [method.render(ex, tok, cfg, stage) | {"index": i}
             for i, ex in enumerate(load_split(cfg.data, "valid")[:n])]
    b = method.collate(items, tok.pad_token_id)
    with torch.no_grad():
        out = module(b["prompt_ids"], b["prompt_mask"], b["suffix_ids"], b["suffix_mask"],
                     latent_steps=b["latent_steps"])
    logits, labels = out.logits[:, :-1], b["suffix_labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp(min=0),
                                           reduction="none").view(labels.shape)
    acc = (logits.argmax(-1) == labels).float()
    tokens = tok.convert_ids_to_tokens(b["suffix_ids"][0].tolist())
    for j in range(labels.shape[1]):
        if (labels[:, j] != IGNORE_INDEX).all():
            print(f"{j:2d} {tokens[j + 1]:>6} ce={ce[:, j].mean():.3f} acc={acc[:, j].mean():.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
