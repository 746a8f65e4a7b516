"""Several processes (DDP on the CPU over gloo, launched as a user would: ``accelerate launch --multi_gpu`` for
training, ``torchrun`` for precompute): training and precompute give what one process gives.

(``accelerate launch --cpu --num_processes 2`` starts a single process unless mpirun is used, which is
accelerate's behaviour; on a machine without CUDA the loop asks accelerate for a gloo multi-CPU job whenever a
launcher started several processes, see lori.distributed.)

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
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lori.config import load_config
from lori.methods.lori.teacher import precompute
from lori.methods.lori.cache import load_cache
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
    from lori.distributed import check_world, force_cpu, launched_processes

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


def test_accelerate_sharded_strategies_are_refused_with_the_reason():
    """accelerate's own FSDP and DeepSpeed strategies (chosen from an accelerate config) would run the loop as if
    every process held the whole model: refused before anything trains, FSDP pointing to train.sharding=fsdp."""
    from accelerate.utils import DistributedType

    from lori.errors import LoriError
    from lori.distributed import check_strategy

    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_strategy(ok)
    with pytest.raises(LoriError, match="its FSDP strategy.*train.sharding=fsdp"):
        check_strategy(DistributedType.FSDP)
    with pytest.raises(LoriError, match="DEEPSPEED strategy.*steps the optimizer inside backward"):
        check_strategy(DistributedType.DEEPSPEED)


def _teacher(folder: Path) -> Path:
    """A random tiny LLaMA saved as a checkpoint folder (the teacher of a LoRi precompute)."""
    from lori.data.splits import load_split
    from lori.models.build import tiny_model
    from lori.models.loading import builtin_tokenizer

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



@pytest.mark.parametrize("method", ["lori", "codi"])
def test_two_processes_match_one_for_the_methods_with_training_state(method, tmp_path):
    """LoRi (its loss reads the teacher statistics and scales setup_training returned) and CODI (its teacher pass
    runs the LM outside the DDP wrapper) under DDP: 2 processes x 1 accumulation step give one process x 2."""
    opts = [f"method={method}", *TINY]
    if method == "lori":
        teacher = _teacher(tmp_path / "teacher")
        opts += [f"lori.teacher={teacher}", f"lori.cache_dir={tmp_path / 'cache'}", "lori.rank=4",
                 "lori.calib_size=64", "lori.latent_steps=2"]
        precompute(load_config(None, opts))
    else:
        opts += ["codi.latent_steps=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*opts, f"out_dir={one}"]))
    done = accelerate_launch(2, "train", *opts, f"out_dir={two}")
    assert "micro batch 8 x 2 process(es) x 1 accumulation step(s)" in done.stdout
    _same_run(one, two, projector=True)
    parts = {"lori": {"rat_mean", "rat_cov", "anc"}, "codi": {"ce_teacher", "distill"}}[method]
    assert parts <= losses(two)[0].keys()

# --------------------------------------------------------------------------------------------------------------
# train.sharding=fsdp (FSDP2 over 2 CPU processes, gloo; lori.training.sharding)
#
# 2 processes x micro batch 4 x 2 accumulation steps against 1 process x micro batch 4 x 4 steps: the same micro
# batches, the same globally normalised losses. The gradients differ from one process's by the order of float
# additions only (FSDP reduce-scatters every micro batch and averages over the processes; the loop scales the loss
# by 2), so the runs agree to float32 rounding: the tests allow rel 1e-5 on the logged losses and the gradient norm
# and rtol 1e-5 / atol 1e-6 on the final weights (measured: equal to the 6 decimals logged, weights within 6e-8).

FSDP = [*[o for o in TINY if not o.startswith("train.micro_batch")], "train.micro_batch=4", "train.eval_every=3",
        "train.sharding=fsdp"]


def _weights(ckpt: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / name))


def _same_run(one: Path, two: Path, projector: bool = False) -> None:
    la, lb = losses(one), losses(two)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(la, lb):
        for key in ra:
            if key not in ("step", "tokens_per_s"):
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=2e-6), (key, ra, rb)
    assert la[-1]["loss"] < la[0]["loss"]
    for name in ("model.safetensors", *(["projector.safetensors"] if projector else [])):
        wa, wb = (_weights(run / "checkpoints" / "step-000006", name) for run in (one, two))
        assert wa.keys() == wb.keys(), name  # the tied output head is not saved twice
        for k in wa:
            assert wb[k].dtype == wa[k].dtype
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def fsdp_cot_sft(tmp_path_factory):
    """An uninterrupted 6-step CoT-SFT run sharded over 2 processes, and the same run in one process."""
    root = tmp_path_factory.mktemp("fsdp")
    one, two = root / "one", root / "two"
    train(load_config(None, ["method=cot-sft", *FSDP, f"out_dir={one}"]))  # one process: nothing to shard over
    done = torchrun(2, "train", "method=cot-sft", *FSDP, f"out_dir={two}")
    return one, two, done


def test_fsdp_cot_sft_matches_one_process_with_double_accumulation(fsdp_cot_sft):
    one, two, done = fsdp_cot_sft
    assert "micro batch 4 x 2 process(es) x 2 accumulation step(s)" in done.stdout
    assert "[lori] sharding: FSDP over 2 processes" in done.stdout
    _same_run(one, two)
    valid = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                         if "valid_accuracy" in r]
    assert [r["step"] for r in valid(two)] == [3, 6] and valid(one) == valid(two)  # gathered, split across processes
    ckpt = two / "checkpoints" / "step-000006"
    assert (ckpt / "sharded" / ".metadata").is_file() and len(list((ckpt / "sharded").glob("*.distcp"))) == 2
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert "optimizer" not in state and len(state["rng_per_process"]) == 2  # the optimizer state is in sharded/


def test_fsdp_checkpoint_exports_the_gathered_weights_and_loads_with_from_pretrained(fsdp_cot_sft, tmp_path):
    """model.safetensors is the full state gathered on the main process: the same tensors as the sharded state
    every process wrote (read back whole with torch.distributed.checkpoint, no process group), and an ordinary
    Hugging Face checkpoint."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    _, two, _ = fsdp_cot_sft
    ckpt = two / "checkpoints" / "step-000006"
    exported = _weights(ckpt)
    dcp_to_torch_save(ckpt / "sharded", tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    sharded = whole["model"]
    assert set(exported) == set(sharded) - {"lm_head.weight"}  # the tied head: one tensor, saved once
    for k in exported:
        assert torch.equal(exported[k], sharded[k]), k
    assert whole["optimizer"]["state"]  # the AdamW moments, keyed by parameter name
    lm, info = AutoModelForCausalLM.from_pretrained(str(ckpt), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    loaded = lm.state_dict()
    for k in exported:
        assert torch.equal(loaded[k], exported[k]), k
    assert torch.equal(loaded["lm_head.weight"], exported["model.embed_tokens.weight"])


@pytest.mark.slow
def test_fsdp_resume_from_a_sharded_checkpoint_is_exact(fsdp_cot_sft, tmp_path):
    """Stopped after the sharded checkpoint of step 3 (train.stop_at) and resumed on 2 processes: the same
    weights and losses as the uninterrupted sharded run, bit for bit. Resumed on 1 process instead
    (torch.distributed.checkpoint reshards the state to whole tensors), it ends as the one-process run does.
    (~75 s on 2 busy cores: two launches of 2 processes and one in-process run.)"""
    _, whole, _ = fsdp_cot_sft
    parts = tmp_path / "parts"
    torchrun(2, "train", "method=cot-sft", *FSDP, "train.stop_at=3", f"out_dir={parts}")
    assert [p.name for p in (parts / "checkpoints").iterdir()] == ["step-000003"]
    shutil.copytree(parts, tmp_path / "parts1")
    done = torchrun(2, "train", "method=cot-sft", *FSDP, f"out_dir={parts}")
    assert done.stdout.count("resumed from") == 1
    wa, wb = _weights(whole / "checkpoints" / "step-000006"), _weights(parts / "checkpoints" / "step-000006")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert {r["step"]: r["loss"] for r in losses(whole)} == {r["step"]: r["loss"] for r in losses(parts)}

    one = tmp_path / "parts1"  # the same checkpoint resumed by one process
    train(load_config(None, ["method=cot-sft", *FSDP, f"out_dir={one}"]))
    _same_run(whole, one)


def test_fsdp_lori_matches_one_process_with_double_accumulation(tmp_path):
    """A LoRi student (projector, <bot>/<eot> rows, the latent loop without a KV cache under sharding) sharded over
    2 processes gives one process's losses, weights and projector."""
    teacher = _teacher(tmp_path / "teacher")
    opts = ["method=lori", *FSDP, f"lori.teacher={teacher}", f"lori.cache_dir={tmp_path / 'cache'}", "lori.rank=4",
            "lori.calib_size=64", "lori.latent_steps=2"]
    precompute(load_config(None, opts))
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*opts, f"out_dir={one}"]))
    done = torchrun(2, "train", *opts, f"out_dir={two}")
    assert "[lori] sharding: FSDP over 2 processes" in done.stdout
    _same_run(one, two, projector=True)
    assert {"rat_mean", "rat_cov", "anc"} <= losses(two)[0].keys()


_FULL_ON_RANK_1 = """
import errno, os, sys
from torch.distributed.checkpoint import filesystem
real = filesystem._FileSystemWriter.write_data
def write_data(self, *a, **k):  # the disk fills while process 1 writes its shards of step 2
    if os.environ["RANK"] == "1" and ".step-000002." in str(self.path):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, *a, **k)
filesystem._FileSystemWriter.write_data = write_data
from lori.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_sharded_write_stops_every_process_and_keeps_the_previous_checkpoint(tmp_path):
    """One process failing to write its part of a sharded checkpoint stops both processes with one line naming the
    checkpoint and the intact previous one; no partial folder is left."""
    script, out = tmp_path / "full_disk.py", tmp_path / "run"
    script.write_text(_FULL_ON_RANK_1)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), "train", "method=cot-sft", *FSDP, "train.steps=3", "train.save_every=1",
                           "train.eval_every=0", f"out_dir={out}"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("lori: error:")]
    # Every process stops with the same line (torchrun may end the second before it prints) and exit status 2;
    # none waits forever in a collective.
    assert errors and len(set(errors)) == 1 and "exitcode  : 2" in done.stderr, done.stderr[-3000:]
    step2, step1 = out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000001"
    assert f"could not write {step2}: the disk is full" in errors[0] and f"{step1} is intact" in errors[0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]


def test_fsdp_refuses_lora():
    from lori.errors import ConfigError

    with pytest.raises(ConfigError, match="train.sharding=fsdp with model.lora_r .* not supported: .*merged"):
        load_config(None, ["method=cot-sft", "train.sharding=fsdp", "model.lora_r=4"])
