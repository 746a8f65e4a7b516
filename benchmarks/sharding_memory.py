"""Memory per process of ``lori train`` with ``train.sharding=fsdp`` against DDP (``train.sharding=none``), on a
model large enough for the model state to dominate (default: a LLaMA of hidden 1024, 8 layers, intermediate 4096,
134M parameters, float32: 0.54 GB of weights).

Launches ``torchrun --nproc_per_node N`` twice on this script, which trains a CoT-SFT run with the real loop
(``lori.training.loop.train``) for ``--steps`` steps, and prints per process:
- the model state it holds after the last optimizer step: its parameters, gradients and AdamW moments (the local
  shards of the DTensors under FSDP), counted tensor by tensor;
- its peak memory up to that step: ``torch.cuda.max_memory_allocated`` on a GPU, else the peak resident set
  (``VmHWM``), which also counts the Python process and the libraries (so it is also given above the process's
  resident set before the model was built), the activations, DDP's gradient buckets, FSDP's gathered layers and
  communication buffers, and the whole model each FSDP process builds before sharding it. The final checkpoint is
  written after the measurement.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sharding_memory.py [--nproc 2 --hidden 1024 --layers 8 --steps 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _memory(field: str = "VmHWM") -> int:
    """Peak (``VmHWM``) or current (``VmRSS``) resident set of this process; on a GPU, allocated device memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() if field == "VmHWM" else torch.cuda.memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args) -> None:
    import torch
    from torch.distributed.tensor import DTensor

    from lori.config import load_config
    from lori.training.loop import train

    local = lambda t: t.to_local() if isinstance(t, DTensor) else t  # noqa: E731
    size = lambda t: local(t).numel() * local(t).element_size()  # noqa: E731
    seen: dict = {}
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):  # measure after every step; the last one is reported
        out = real_step(self, *a, **k)
        params = [p for g in self.param_groups for p in g["params"]]
        state = sum(size(v) for p in params for v in self.state.get(p, {}).values()
                    if torch.is_tensor(v) and v.numel() > 1)
        seen.update(params=sum(size(p) for p in params), grads=sum(size(p.grad) for p in params if p.grad is not None),
                    optimizer=state, peak=_memory())
        return out

    torch.optim.AdamW.step = step
    start = _memory("VmRSS")  # the interpreter and the libraries, before the model
    train(load_config(None, [
        "method=cot-sft", "data.digits=[2,2]", "data.train_size=64", "data.valid_size=2", "data.test_size=2",
        f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}", f"model.num_heads={args.heads}",
        f"model.intermediate_size={args.intermediate}", f"train.steps={args.steps}",
        f"train.global_batch={args.micro_batch * args.nproc}", f"train.micro_batch={args.micro_batch}",
        "train.eval_every=0", "train.eval_size=1", "eval.max_new_tokens=2", "train.log_every=1",
        "train.mixed_precision=no", f"train.sharding={args.sharding}", f"out_dir={args.out}",
    ]))
    mib = lambda b: f"{b / 2**20:8.0f}"  # noqa: E731
    total = seen["params"] + seen["grads"] + seen["optimizer"]
    print(f"RESULT {args.sharding:5s} rank {os.environ.get('RANK', '0')}: model state {mib(total)} MiB (params "
          f"{mib(seen['params'])}, grads {mib(seen['grads'])}, AdamW {mib(seen['optimizer'])}); peak "
          f"{'allocated' if torch.cuda.is_available() else 'RSS'} {mib(seen['peak'])} MiB, "
          f"{mib(seen['peak'] - start)} MiB above the process before the model\n", end="", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sharding", default=None, help=argparse.SUPPRESS)  # set in the launched workers
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sharding is not None:
        return worker(args)
    base = [a for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory(prefix="lori-sharding-memory-") as tmp:
        for sharding in ("none", "fsdp"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                   __file__, *base, f"--sharding={sharding}", f"--out={Path(tmp) / sharding}"]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if done.returncode:
                sys.exit(done.stdout[-2000:] + done.stderr[-4000:])
            for line in sorted(re.findall(r"RESULT ([^\n]*?MiB above the process before the model)", done.stdout)):
                print(line)


if __name__ == "__main__":
    main()
