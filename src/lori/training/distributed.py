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

from ..errors import LoriError


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
    """Refuse a launch strategy whose checkpoints this loop would write wrongly.

    Checkpoints are written from the main process with ``save_pretrained`` and ``optimizer.state_dict()``: right
    when every process holds the whole model and optimizer (one process, DDP), wrong under FSDP or DeepSpeed,
    which shard parameters and optimizer state across processes (the main process would save its shard only).
    DeepSpeed also steps the optimizer inside ``backward``, which breaks the loop's gradient accumulation."""
    name = getattr(distributed_type, "name", str(distributed_type))
    if name not in SUPPORTED:
        raise LoriError(f"accelerate chose the {name} strategy, which lori's training loop does not support yet: its "
                        "checkpoints would hold one process's shard of the weights and optimizer state. Launch with "
                        "DDP (accelerate launch --multi_gpu, or torchrun) and no FSDP/DeepSpeed config; for a model "
                        "too large for one device, train a LoRA adapter (model.lora_r) with gradient checkpointing")


def process_state():
    """accelerate's :class:`PartialState` (rank, world size, device, barrier) for commands without an optimizer."""
    from accelerate import PartialState

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
