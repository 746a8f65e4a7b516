"""Several processes, one per device (or several on a CPU): ``accelerate launch`` / ``torchrun`` start them, and
this module makes sure they really form one job and gives the few collectives the project needs.

The backend is accelerate's choice (NCCL between GPUs, gloo between CPU processes); nothing here names one. On a
machine without CUDA a multi-process launch is a multi-CPU job (gloo): accelerate only does that when told
``cpu=True``, and would otherwise start N independent single-process runs writing into the same folder, which
:func:`process_state` refuses.

Note: ``accelerate launch --cpu --num_processes N`` starts N processes only through ``mpirun``
(``--mpirun_hostfile``); without it accelerate starts one process. Use ``torchrun --nproc_per_node N -m lori ...``
(or ``accelerate launch --multi_gpu --num_processes N`` on GPUs) for several processes.
"""

from __future__ import annotations

import os

import torch

from .errors import LoriError


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def force_cpu() -> bool:
    """A multi-process launch on a machine without CUDA: tell accelerate to form a multi-CPU (gloo) job."""
    return launched_processes() > 1 and not torch.cuda.is_available()


def check_world(num_processes: int) -> None:
    launched = launched_processes()
    if num_processes != launched:
        raise LoriError(f"the launcher started {launched} processes (WORLD_SIZE={launched}) but accelerate formed a "
                        f"job of {num_processes}; the processes would train independently into the same folder. "
                        "Launch with torchrun --nproc_per_node N or accelerate launch --multi_gpu")


SUPPORTED = ("NO", "MULTI_CPU", "MULTI_GPU")  # accelerate DistributedType names this loop handles


def check_strategy(distributed_type) -> None:
    """Refuse a strategy accelerate chose from its own config (``accelerate config`` / ``--use_fsdp`` /
    ``--use_deepspeed``): the loop would run as if every process held the whole model.

    Sharding is lori's own ``train.sharding=fsdp`` (FSDP2 applied by the loop, lori.training.sharding), not
    accelerate's FSDP plugin, which accelerate offers for GPU processes only (so it could not be built or tested on
    CPUs). DeepSpeed is refused: its engine steps the optimizer inside ``backward`` and owns gradient accumulation,
    clipping and the checkpoint format, so it would replace the loop rather than run under it, and it cannot be
    tested without a GPU."""
    name = getattr(distributed_type, "name", str(distributed_type))
    if name == "FSDP":
        raise LoriError("accelerate chose its FSDP strategy (an accelerate FSDP config), which lori does not use: "
                        "launch without it (torchrun --nproc_per_node N, or accelerate launch --multi_gpu) and set "
                        "train.sharding=fsdp, lori's own FSDP2 sharding with sharded checkpoints")
    if name not in SUPPORTED:
        raise LoriError(f"accelerate chose the {name} strategy, which lori's training loop does not support: "
                        "DeepSpeed steps the optimizer inside backward and writes its own checkpoints. Launch with "
                        "torchrun --nproc_per_node N or accelerate launch --multi_gpu and no DeepSpeed config; to "
                        "shard a model too large for one device, set train.sharding=fsdp")


def process_state():
    """accelerate's :class:`PartialState` (rank, world size, device, barrier) for commands without an optimizer."""
    from accelerate import PartialState  # here: the CLI's launch check (launched_processes) loads no accelerate

    state = PartialState(cpu=force_cpu())
    check_world(state.num_processes)
    return state


def _dist(world: int) -> bool:
    return world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(tensors: dict[str, torch.Tensor], world: int, device) -> dict[str, torch.Tensor]:
    """Sum every tensor over processes; the result is on each tensor's original device (the collective runs on
    ``device``, as NCCL needs)."""
    if not _dist(world):
        return tensors
    out = {}
    for k, t in tensors.items():
        moved = t.to(device).clone()
        torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.SUM)
        out[k] = moved.to(t.device)
    return out


def broadcast_object(obj, world: int):
    """The main process's ``obj`` on every process (picklable objects; tensors travel through the CPU)."""
    if not _dist(world):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj, world: int, rank: int) -> list | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on the main process, ``None`` elsewhere."""
    if not _dist(world):
        return [obj]
    out = [None] * world if rank == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def all_gather(obj, world: int) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not _dist(world):
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
