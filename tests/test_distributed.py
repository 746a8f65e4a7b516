"""Several processes (DDP on the CPU over gloo, launched as a user would: ``accelerate launch --multi_gpu`` for
training, ``torchrun`` for precompute): training and precompute give what one process gives.

(``accelerate launch --cpu --num_processes 2`` starts a single process unless mpirun is used, which is
accelerate's behaviour; on a machine without CUDA the loop asks accelerate for a gloo multi-CPU job whenever a
launcher started several processes, see lori.training.distributed.)

Training: 2 processes x micro batch 8 x 1 accumulation step against 1 process x micro batch 8 x 2 steps, the same
global batch of 16. Both runs see the same micro-batches (the step's global batch is cut into the same slices), and
every loss is normalised by the step's global token count, so the per-process losses sum to the one-process loss.
The gradients differ only in how the two micro-batch gradients are added: in place on one process (g0 + g1) or by
DDP's all-reduce of (2 g0) / 2 and (2 g1) / 2 (the loop scales the loss by the world size because DDP averages).
Scaling by 2 is exact in floating point and a two-term sum is the same in either order, so in practice the runs are
bitwise equal; the test allows rel 1e-5 on the logged losses (rounded to 6 decimals in metrics.jsonl) and
rtol 1e-5 / atol 1e-6 on the final weights, which is what a different reduction order (more processes, a
different all-reduce algorithm) can cost over 6 steps of a 21k-parameter model.

Precompute: 2 processes split the calibration batches (accumulators all-reduced) and each shard's batches; the main
process writes. The basis differs from one process's only by the order of float64 sums; the statistics are the
same batches through the same teacher, so they agree to float32 rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lori.config import load_config
from lori.precompute import precompute
from lori.subspace.cache import load_cache
from lori.training.loop import train

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)

TINY = [
    "data.digits=[2,2]", "data.train_size=200", "data.valid_size=8", "data.test_size=8",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "train.steps=6", "train.global_batch=16", "train.micro_batch=8", "train.log_every=1", "train.eval_every=0",
    "train.eval_size=4", "eval.max_new_tokens=8", "train.grad_clip=1.0", "train.mixed_precision=no",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def torchrun(nproc: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m lori ARGS`` on the CPU (one thread per process)."""
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "lori", *args], timeout)


def accelerate_launch(nproc: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m lori ARGS`` (on a machine without CUDA: gloo on CPUs)."""
    with socket.socket() as s:  # a free port for the rendezvous, so that parallel test runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
                 "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={port}",
                 "-m", "lori", *args], timeout)


def losses(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_match_one_with_double_accumulation(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, ["method=cot-sft", *TINY, "train.eval_every=3", f"out_dir={one}"]))  # 1 process x 2 accum.
    done = accelerate_launch(2, "train", "method=cot-sft", *TINY, "train.eval_every=3", f"out_dir={two}")
    assert "micro batch 8 x 2 process(es) x 1 accumulation step(s)" in done.stdout
    assert done.stdout.count("[lori] checkpoint:") == 1  # the main process alone reports and writes

    la, lb = losses(one), losses(two)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]  # one metrics line per step
    for ra, rb in zip(la, lb):
        for key in ("loss", "ce", "grad_norm", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=2e-6), (key, ra, rb)
    assert la[-1]["loss"] < la[0]["loss"]
    valid = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                         if "valid_accuracy" in r]
    assert [r["step"] for r in valid(two)] == [3, 6]  # validated at eval_every and at the end, each process on its slice
    assert valid(one) == valid(two)
    wa = load_file(str(one / "checkpoints" / "step-000006" / "model.safetensors"))
    wb = load_file(str(two / "checkpoints" / "step-000006" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    # One checkpoint folder, written once, with every process's RNG stream for an exact resume.
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step-000006"]
    state = torch.load(two / "checkpoints" / "step-000006" / "trainer_state.pt", weights_only=False)
    assert len(state["rng_per_process"]) == 2 and state["step"] == 6 and state["cursor"] == 6 * 16


def test_a_launch_that_did_not_form_one_job_is_refused(monkeypatch):
    """N processes started by a launcher but not joined into one job would each train alone into the same folder."""
    from lori.errors import LoriError
    from lori.training.distributed import check_world, force_cpu, launched_processes

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1 and not force_cpu()
    check_world(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_processes() == 2 and force_cpu() == (not torch.cuda.is_available())
    check_world(2)
    with pytest.raises(LoriError, match=r"started 2 processes .* a job of 1"):
        check_world(1)


def test_single_process_commands_refuse_a_multi_process_launch(monkeypatch, capsys, tmp_path):
    """eval / analyze / demo / compare write the same files from every process: refused under a launcher."""
    from lori.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["eval", str(tmp_path)], ["demo", "--out", str(tmp_path / "d")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"lori {argv[0]} runs in one process, but a launcher started 2" in err
    assert not (tmp_path / "d").exists()


def test_sharded_strategies_are_refused_with_the_reason():
    """FSDP and DeepSpeed shard weights and optimizer state; the loop's main-process checkpoint would keep one
    shard, so they are refused before anything trains (accelerate only selects them on GPUs)."""
    from accelerate.utils import DistributedType

    from lori.errors import LoriError
    from lori.training.distributed import check_strategy

    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_strategy(ok)
    for bad in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(LoriError, match=f"{bad.name} strategy.*one process's shard.*DDP"):
            check_strategy(bad)


def _teacher(folder: Path) -> Path:
    """A random tiny LLaMA saved as a checkpoint folder (the teacher of a LoRi precompute)."""
    from lori.data.splits import load_split
    from lori.models.build import tiny_model
    from lori.training.model_setup import builtin_tokenizer

    cfg = load_config(None, ["method=lori", *TINY[:8]])
    tok = builtin_tokenizer(load_split(cfg.data, "train"))
    torch.manual_seed(0)
    lm = tiny_model(cfg.model, tok, max_positions=128)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_precompute_two_processes_match_one(tmp_path):
    teacher = _teacher(tmp_path / "teacher")
    # 200 examples: shards of 80 (80, 80, 40) in batches of 32 (3, 3, 2 per shard, dealt to 2 processes); 72
    # calibration examples in 3 batches (2 on the main process, 1 on the other); a layer factor (second pass).
    opts = ["method=lori", *TINY[:8], f"lori.teacher={teacher}", "lori.rank=4", "lori.calib_size=72",
            "lori.shard_size=80", "lori.precompute_batch=32", "lori.layer_rank=1"]
    precompute(load_config(None, [*opts, f"lori.cache_dir={tmp_path / 'one'}"]))
    done = torchrun(2, "precompute", *opts, f"lori.cache_dir={tmp_path / 'two'}")
    assert "2 processes" in done.stdout and done.stdout.count("[lori] cache:") == 1

    a, b = load_cache(tmp_path / "one"), load_cache(tmp_path / "two")
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]
    # the same shards (index, range, size); the sha256 may differ, as the values may in the last bits (below)
    ranges = lambda m: [{k: v for k, v in sh.items() if k != "sha256"} for sh in m["shards"]]  # noqa: E731
    assert ranges(a.manifest) == ranges(b.manifest) and b.manifest["complete"]
    assert b.basis.rank == a.basis.rank and b.basis.layer_rank == a.basis.layer_rank
    torch.testing.assert_close(b.basis.U, a.basis.U, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.basis.V, a.basis.V, rtol=1e-4, atol=1e-5)
    for name in ("mu", "cov", "anchor"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5, msg=name)
    assert torch.equal(a.valid, b.valid) and a.mu.shape[0] == 200
    assert not [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no temporary files


@pytest.mark.slow
def test_two_process_resume_is_exact_with_dropout(tmp_path):
    """LoRA with dropout (random masks every step): 2 processes stopped at step 3 and resumed end bit-identical to
    2 uninterrupted processes, which needs the optimizer state and every process's RNG stream restored. (~30 s:
    three launches; needs peft.)"""
    pytest.importorskip("peft")
    from lori.data import generate_multiplication, write_icot

    data = tmp_path / "train.txt"  # two problem lengths, so the processes' micro-batches differ in shape
    write_icot(generate_multiplication(2, 2, 180, seed=7) + generate_multiplication(4, 4, 20, seed=7), data)
    common = ["method=no-cot", *TINY, "model.lora_r=4", "model.lora_dropout=0.1", "train.eval_every=0",
              f"data.train_file={data}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(2, "train", *common, f"out_dir={whole}")
    torchrun(2, "train", *common, "train.stop_at=3", f"out_dir={parts}")
    done = torchrun(2, "train", *common, f"out_dir={parts}")
    assert done.stdout.count("resumed from") == 1
    wa = load_file(str(whole / "checkpoints" / "step-000006" / "model.safetensors"))
    wb = load_file(str(parts / "checkpoints" / "step-000006" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert {r["step"]: r["loss"] for r in losses(whole)} == {r["step"]: r["loss"] for r in losses(parts)}
