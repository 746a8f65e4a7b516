"""``train.sharding: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) under the one training loop.

accelerate's FSDP plugin is not used (it is selected for GPU processes only, so it could be neither built nor tested
without a GPU); ``fully_shard`` runs on CPU processes over gloo as on GPUs over NCCL. Each decoder layer is one FSDP
unit (``reshard_after_forward=True``); the root unit, the module the method trains (embeddings, final norm, head,
projector), is gathered once per step and kept, so the latent loop and CODI's teacher pass, which call them outside
the root's forward, always find them whole. A latent student trains without the KV cache under sharding: with it,
the gradient of a later latent step would reach a layer's earlier calls past FSDP's hooks and read freed weights.
Checkpoints hold ``sharded/`` (``torch.distributed.checkpoint``, resharded on resume) and the full weights gathered
on the main process, so the folder loads with ``from_pretrained``. docs/training.md (Sharding).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch

# torch.distributed's FSDP, DTensor and checkpoint modules are imported in the functions that use them: only
# train.sharding=fsdp calls those, and a torch built without distributed support has none of them.
from ..errors import LoriError


# The root unit returns slices of the language model's outputs (a latent student's logits over the suffix); FSDP
# warns that an in-place op on such a view would skip its pre-backward hook. The loop's losses never modify the
# outputs in place, and the root stays gathered for the whole step anyway.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def decoder_layers(lm) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face language model (peft-wrapped too): the modules whose class the model
    names in ``_no_split_modules``, the unit Hugging Face never splits across devices."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise LoriError(f"train.sharding=fsdp: {type(base).__name__} names no decoder layer class in "
                        f"_no_split_modules ({sorted(names)}), so it cannot be sharded layer by layer; use "
                        "train.sharding=none")
    return layers


def shard(module, world: int, device: torch.device, bf16: bool) -> list:
    """Apply ``fully_shard`` to each decoder layer, then to ``module`` (the root); return the FSDP units, root
    last. Every process must call it, with the same model."""
    from torch.distributed.device_mesh import init_device_mesh  # FSDP only (see above the imports)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # FSDP only (see above the imports)

    mesh = init_device_mesh(device.type, (world,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    lm = getattr(module, "lm", module)
    # Tied weights (the output head sharing the input embedding) are one parameter under two names; the gathered
    # state dict lists both as separate tensors, so the alias is dropped from it as save_pretrained drops it.
    every = [n for n, _ in module.named_parameters(remove_duplicate=False)]
    unique = {n for n, _ in module.named_parameters()}
    module.lori_tied_aliases = [n for n in every if n not in unique]
    units = decoder_layers(lm)
    for layer in units:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, mp_policy=mp)
    fully_shard(module, mesh=mesh, reshard_after_forward=False, mp_policy=mp)
    if hasattr(module, "uncached_training"):
        module.uncached_training = True
    return [*units, module]


def units(module) -> list:
    from torch.distributed.fsdp import FSDPModule  # FSDP only (see above the imports)

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(module):
    """Every unit's weights gathered (an all-gather per unit, on every process together) and kept while the body
    runs, so each process can then run forwards of its own (validation generates a different number of tokens on
    each process, which per-forward all-gathers would deadlock on); sharded again after. Holds one full copy of
    the weights per process meanwhile."""
    found = units(module)
    for u in found:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in found:
            u.reshard()
            u.set_reshard_after_forward(u is not module, recurse=False)  # the root stays gathered over a step


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor  # FSDP only (see above the imports)

    return t.to_local() if isinstance(t, DTensor) else t


def weight_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of all the (sharded) weights together: each process's shards' squares summed in float64 and
    all-reduced, the same value on every process."""
    with torch.no_grad():
        local = [_local(p.detach()) for p in params]
        device = local[0].device if local else torch.device("cpu")
        sq = torch.zeros((), dtype=torch.float64, device=device)
        for t in local:
            if t.numel():
                sq += torch.linalg.vector_norm(t, dtype=torch.float64).to(device) ** 2
        torch.distributed.all_reduce(sq)
        return math.sqrt(float(sq))


def full_state_dict(module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process's CPU (``{}`` elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # FSDP only

    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for alias in getattr(module, "lori_tied_aliases", []):
        full.pop(alias, None)
    return full


def full_tensors(groups: dict[str, dict[str, torch.Tensor]] | None, main: bool):
    """``{file: {name: tensor}}`` with each sharded tensor gathered whole (on the main process's CPU; every process
    must call it, in the same order: the same dict on each)."""
    from torch.distributed.tensor import DTensor  # FSDP only (see above the imports)

    if not groups:
        return groups
    out = {}
    for name, tensors in groups.items():
        out[name] = {}
        for k, v in tensors.items():
            full = v.full_tensor() if isinstance(v, DTensor) else v
            if main:
                out[name][k] = full.detach().cpu()
    return out if main else None


def save_sharded(module, optimizer, folder: Path) -> None:
    """The model and optimizer state, each process writing its shards into ``folder`` (collective)."""
    import torch.distributed.checkpoint as dcp  # FSDP only (see above the imports)
    from torch.distributed.checkpoint.state_dict import get_state_dict  # FSDP only (see above the imports)

    model_sd, optim_sd = get_state_dict(module, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))


def load_sharded(module, optimizer, folder: Path) -> None:
    """Load what :func:`save_sharded` wrote into ``module`` and ``optimizer``, sharded or not, on any number of
    processes (torch.distributed.checkpoint reshards; one process without a process group reads it all)."""
    import torch.distributed.checkpoint as dcp  # FSDP only (see above the imports)
    from torch.distributed.checkpoint.api import CheckpointException  # FSDP only (see above the imports)
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # FSDP only

    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    try:
        with warnings.catch_warnings():  # one process reading it all is what is meant: no "assuming" warning
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(folder), no_dist=alone)
    except (Exception, CheckpointException) as e:  # a missing or damaged shard file, a model that does not fit
        failures = getattr(e, "failures", None) or {}
        first = next((f[0] for f in failures.values()), e)
        raise LoriError(f"{folder}: cannot read the sharded model and optimizer state "
                        f"({type(first).__name__}: {str(first).splitlines()[0][:160] if str(first) else ''})"
                        "; resume from an earlier checkpoint (train.resume=FOLDER) or start over with "
                        "train.resume=never") from None
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
