"""Bit-identity check for restructurings: train each of the six methods for 4 steps on a tiny 2x2 multiplication
config with a fixed seed and print the sha256 of every ``*.safetensors`` file of the final checkpoint. Run it from
the repository root before and after a change that must not change behaviour, and compare the two outputs (they
must be equal):

    nice -n 15 env OMP_NUM_THREADS=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/bit_identity.py > /tmp/bit_before.txt

then the same command into /tmp/bit_after.txt after the change, and ``diff`` the two files. It takes about a
minute on one CPU core and is run by hand, not by the test suite. LoRi gets a random tiny teacher saved as a
checkpoint folder and its statistics precomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from lori.config import load_config
from lori.data.splits import load_split
from lori.models.build import tiny_model
from lori.methods.lori.teacher import precompute
from lori.training.loop import train
from lori.models.loading import builtin_tokenizer

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64"]
COMMON = [
    *TINY, "data.digits=[2,2]", "data.train_size=40", "data.valid_size=8", "data.test_size=8",
    "train.steps=4", "train.global_batch=8", "train.micro_batch=4", "train.log_every=2", "train.eval_every=0",
    "train.save_every=100", "train.seed=0", "eval.max_new_tokens=16", "curriculum.stages=1", "curriculum.steps_per_stage=2",
]
EXTRA = {
    "no-cot": [],
    "cot-sft": [],
    "icot-si": ["curriculum.remove_per_stage=4"],
    "coconut": ["curriculum.thoughts_per_step=2"],
    "codi": ["codi.latent_steps=2"],
    "lori": ["lori.rank=4", "lori.calib_size=40", "lori.shard_size=20", "lori.precompute_batch=8",
             "lori.latent_steps=2"],
}
# LoRi's optional terms (prefix statistics before the final stage, step anchors) on a 3-step chains task.
VARIANTS = {
    "lori+": ("lori", ["data.task=chains", "data.chain_steps=3", "curriculum.stages=3", "lori.prefix_statistics=true",
                       "lori.step_anchors=true", *EXTRA["lori"]]),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_teacher(cfg, folder: Path) -> Path:
    """A seeded random tiny LLaMA on the run's own vocabulary, saved as a checkpoint folder."""
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    torch.manual_seed(0)
    tiny_model(cfg.model, tok, max_positions=128).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> int:
    torch.use_deterministic_algorithms(True)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {m: (m, extra) for m, extra in EXTRA.items()} | VARIANTS
        for name, (method, extra) in runs.items():
            overrides = [f"method={method}", *COMMON, *extra, f"out_dir={root / name}"]
            if method == "lori":
                teacher = save_teacher(load_config(None, overrides), root / f"{name}-teacher")
                overrides += [f"lori.teacher={teacher}", f"lori.cache_dir={root / f'{name}-cache'}"]
                with contextlib.redirect_stdout(sys.stderr):
                    precompute(load_config(None, overrides))
            with contextlib.redirect_stdout(sys.stderr):  # the run's log; stdout is the hashes alone
                final = train(load_config(None, overrides))
            lines += [f"{name:8s} {f.relative_to(final)} {sha256(f)}" for f in sorted(final.rglob("*.safetensors"))]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
