"""The one training loop. Every method runs through it; only rendering and the loss differ.

Built on ``accelerate`` so that ``torchrun --nproc_per_node N -m lori train ...`` (or ``accelerate launch
--multi_gpu``) scales it to several processes with no change: the user sets the global batch, and gradient
accumulation is derived from micro batch x processes. Every process renders the whole data set and takes its own
slice of each step's global batch; the losses are normalised by the step's global token count, so N processes
with accumulation A give the loss (and, up to float reduction order, the update) of one process with N x A.
Logging and checkpoints are written by the main process; validation is split across processes (``lori eval`` is
single-process). Metrics go to ``metrics.jsonl`` and to the experiment trackers of ``train.log_with`` through
accelerate's tracker API (lori.training.trackers).

``train.sharding: fsdp`` (lori.training.sharding) shards the weights, gradients and optimizer state over the
processes with FSDP2 instead of replicating them (DDP); the loop is the same, the checkpoints hold the sharded state
besides the gathered full weights.

Data order is a seeded permutation per epoch, indexed by a global example cursor, so a resumed run sees exactly
the examples an uninterrupted run would.

Every step's loss terms are summed over processes and checked before the optimizer step: a NaN or infinite term
stops the run with the step, the term and the last good checkpoint, and no weights from that step are written. The
checkpoint holding the weights that gave the non-finite loss (if one was saved just before) is moved aside, so the
checkpoint named really is good. An update that makes the weights non-finite, or grows their norm
``DIVERGED_FACTOR``-fold in one step, stops the run the same way before it is saved (weights that are finite but
huge still give finite losses for a step or two). A
cross-entropy stuck at ln(vocab), a uniform prediction, for ``UNIFORM_WINDOW`` steps is warned about.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import Config, dump_config, save_config
from ..data.render import answer_ids
from ..data.schema import Example
from ..data.splits import load_split
from ..errors import ConfigError, LoriError
from ..evaluation.evaluate import evaluate
from ..methods import METHODS
from ..methods.common import step_norm
from ..models.loading import build_model
from ..tasks import TASKS
from ..utils import rng_state, seed_everything, set_rng_state
from . import sharding as fsdp
from . import trackers
from .checkpoint import (SHARDED_DIR, list_checkpoints, load_state, remove_partial_checkpoints, resolve_checkpoint,
                         save_checkpoint, step_dir, temporary_folder, write_error)
from ..distributed import all_gather, broadcast_object, check_strategy, check_world, force_cpu
from .identity import acquire_lock, release_lock, start_run, truncate_metrics


def lr_lambda(cfg: Config):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def batch_arithmetic(cfg: Config, world: int) -> int:
    """Gradient-accumulation steps from global batch = micro batch x processes x accumulation."""
    t = cfg.train
    per_step = t.micro_batch * world
    if t.global_batch % per_step:
        raise ConfigError(
            f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch ({t.micro_batch}) x "
            f"processes ({world}); e.g. set train.micro_batch={math.gcd(t.global_batch, t.micro_batch)}"
        )
    return t.global_batch // per_step


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def step_indices(n: int, seed: int, cursor: int, count: int) -> list[int]:
    """The ``count`` example indices starting at global position ``cursor`` (epochs wrap, each reshuffled)."""
    out = []
    while len(out) < count:
        epoch, offset = divmod(cursor, n)
        order = epoch_order(n, seed, epoch)
        take = min(count - len(out), n - offset)
        out += order[offset : offset + take].tolist()
        cursor += take
    return out


class MetricsLog:
    """One JSON line per record in ``metrics.jsonl`` (main process only), and its numeric values to the
    accelerator's trackers (``train.log_with``) at the record's step."""

    def __init__(self, out_dir: Path, enabled: bool, accelerator: Accelerator):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.accelerator = accelerator

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.accelerator.trackers:
            self.accelerator.log(values, step=record["step"])


def answer_length(examples: list[Example], tokenizer) -> int | None:
    """The number of answer tokens (between ``####`` and ``<eos>``) when every example has the same (an NxN
    product's 2N digits), else None. Training then logs each answer token's cross-entropy (``ce_ans1..``)."""
    lengths = set()
    for ex in examples:
        lengths.add(len(answer_ids(ex, tokenizer)))  # the answer alone: the chat template wraps the question only
        if len(lengths) > 1:
            return None
    return lengths.pop() if lengths else None


def render_all(method, examples: list[Example], tokenizer, cfg: Config, stage: int,
               answer_len: int | None = None) -> list[dict]:
    items, max_length = [], cfg.data.max_length
    for i, ex in enumerate(examples):
        item = method.render(ex, tokenizer, cfg, stage)
        # Latent thoughts take positions too (a learned-position model would overflow without counting them).
        thoughts = item.get("latent_steps", 0)
        length = sum(len(v) for k, v in item.items() if k.endswith("_ids")) + \
            (cfg.curriculum.thought_offset + (thoughts - 1) * cfg.curriculum.thought_stride + 1 if thoughts else 0)
        if length > max_length:
            raise LoriError(
                f"{ex.source}: renders to {length} tokens, over data.max_length={max_length}; "
                "raise data.max_length or drop the example"
            )
        item["index"] = i
        if answer_len:
            item["answer_len"] = answer_len
        items.append(item)
    return items


def validate(cfg: Config, method, module, tokenizer, valid: list[Example], accelerator) -> dict:
    """Greedy accuracy and mean generated tokens on the first ``train.eval_size`` validation problems. Every
    process generates for its own slice (problems rank, rank + world, ...) and the counts are summed, so all
    processes must call this together; the result is the same on every process."""
    lm = getattr(module, "lm", module)
    examples = valid[: cfg.train.eval_size]
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    ev = evaluate(
        lm, tokenizer, [method.prompt(ex, tokenizer, cfg) for ex in mine], mine, TASKS[cfg.data.task],
        method=cfg.method, checkpoint="", batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
        latency_problems=0, **method.generation_kwargs(module, tokenizer), progress=False,
    )
    counts = torch.tensor([sum(p["correct"] for p in ev.predictions), sum(p["steps"] for p in ev.predictions),
                           len(ev.predictions)], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, "sum")
    correct, steps, n = counts.tolist()
    return {"valid_accuracy": correct / n if n else 0.0, "valid_generated_tokens": steps / n if n else 0.0}


def train(cfg: Config) -> Path:
    """Train ``cfg.method`` and return the final checkpoint folder. The main process holds ``OUT/.lock`` while the
    run writes the folder (lori.training.identity), so a second run into the same folder is refused."""
    out_dir = Path(cfg.out_dir)
    mixed = cfg.train.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    names = trackers.tracker_names(cfg)  # a named tracker that is not installed: refused here, before any work
    accelerator = Accelerator(mixed_precision=mixed, cpu=force_cpu(), log_with=names or None,
                              project_config=trackers.project_configuration(out_dir))
    check_world(accelerator.num_processes)
    check_strategy(accelerator.distributed_type)
    lock, problem = None, None
    if accelerator.is_main_process:
        try:
            lock = acquire_lock(out_dir)
        except LoriError as e:
            problem = str(e)
    problem = broadcast_object(problem, accelerator.num_processes)  # every process stops, not the main one alone
    if problem:
        raise LoriError(problem)
    failed = True
    try:
        final = _train(cfg, accelerator, mixed)
        failed = False
        return final
    finally:
        trackers.finish(accelerator, failed)  # on an error too (a normal end has finished them already)
        if lock is not None:
            release_lock(lock)


def _train(cfg: Config, accelerator: Accelerator, mixed: str) -> Path:
    out_dir = Path(cfg.out_dir)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = batch_arithmetic(cfg, world)
    method = METHODS[cfg.method]
    if cfg.data.task not in TASKS:
        raise ConfigError(f"data.task: unknown task {cfg.data.task!r}; choose one of {', '.join(TASKS)}")

    resume_from = None
    if cfg.train.resume == "auto":
        found = list_checkpoints(out_dir)
        resume_from = found[-1] if found else None
    elif cfg.train.resume != "never":
        resume_from = resolve_checkpoint(cfg.train.resume)
    # The run folder's identity: checked against the run resumed from (changed settings or inputs are refused,
    # the allowed ones printed), recorded for a fresh run (lori.training.identity). On the main process; every
    # process stops on a refusal.
    problem = run_id = None
    if main:
        try:
            run_id = start_run(cfg, out_dir, resume_from)
        except LoriError as e:
            problem = str(e)
    problem = broadcast_object(problem, world)
    if problem:
        raise LoriError(problem)

    seed_everything(cfg.train.seed)
    train_set = load_split(cfg.data, "train")
    valid_set = load_split(cfg.data, "valid")
    module, tokenizer = build_model(cfg, method, train_set, resume_from)
    method_state = method.setup_training(module, cfg, train_set, accelerator.device)  # what its loss reads
    # With one process there is nothing to shard over: train.sharding=fsdp then trains (and saves) unsharded.
    sharded = cfg.train.sharding == "fsdp" and world > 1

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for partial in remove_partial_checkpoints(out_dir):
            print(f"[lori] removed {partial}: a checkpoint an interrupted run did not finish writing")
        save_config(cfg, out_dir / "config.yaml")
        print(dump_config(cfg), end="")
        n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        print(f"[lori] method={cfg.method} task={cfg.data.task} train={len(train_set)} valid={len(valid_set)} "
              f"trainable_params={n_params:,}")
        print(f"[lori] global batch {cfg.train.global_batch} = micro batch {cfg.train.micro_batch} x "
              f"{world} process(es) x {accum} accumulation step(s); mixed precision: {mixed}")
        if sharded:
            print(f"[lori] sharding: FSDP over {world} processes (weights, gradients and optimizer state; "
                  f"{'bf16 compute, fp32 reduction' if mixed == 'bf16' else 'float32'})")
        elif cfg.train.sharding == "fsdp":
            print("[lori] sharding: train.sharding=fsdp with one process: nothing to shard over, training unsharded")
    if sharded:
        fsdp.shard(module, world, accelerator.device, bf16=mixed == "bf16")

    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr, betas=tuple(cfg.train.betas),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step, cursor = 0, 0
    cur = cfg.curriculum
    adaptive = bool(cur.stages) and cur.advance_below is not None
    clock: dict = {}  # adaptive curriculum: the stage, the step it started at, its recent training CE
    if resume_from is not None:
        state = load_state(resume_from)
        clock = state.get("curriculum") or {}
        if "optimizer" in state:
            if sharded:  # identity refuses a changed train.sharding; this is a checkpoint from elsewhere
                raise LoriError(f"{resume_from} was written without sharding (its optimizer state is one file); "
                                "resume it with train.sharding=none")
            optimizer.load_state_dict(state["optimizer"])
        else:  # written under sharding: model and optimizer state in sharded/, resharded to this run's processes
            fsdp.load_sharded(module, optimizer, resume_from / SHARDED_DIR)
        scheduler.load_state_dict(state["scheduler"])
        per_process = state.get("rng_per_process") or []
        # Each process continues its own random stream when the run resumes with as many processes as it saved.
        set_rng_state(per_process[rank] if len(per_process) == world else state["rng"])
        step, cursor = state["step"], state["cursor"]
        if step > cfg.train.steps:
            raise LoriError(f"{resume_from} is at step {step}, past train.steps={cfg.train.steps}; set train.steps "
                            f">= {step}, or start over with train.resume=never")
        if main:
            print(f"[lori] resumed from {resume_from} at step {step}")
            dropped = truncate_metrics(out_dir / "metrics.jsonl", step)  # the steps after it are logged again
            if dropped:
                print(f"[lori] metrics.jsonl: dropped {dropped} line(s) after step {step}")
    stage = clock.get("stage", cur.stage_at(step)) if adaptive else cur.stage_at(step)
    stage_start = clock.get("start", (stage - 1) * cur.steps_per_stage if cur.stages else 0)
    recent = collections.deque(clock.get("recent", []), maxlen=cur.advance_window)
    answer_len = answer_length(train_set, tokenizer)
    items = render_all(method, train_set, tokenizer, cfg, stage, answer_len)
    rendered = stage
    if sharded:  # FSDP is applied above; accelerate would wrap the module in DDP
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    module.train()
    # The trackers start last, when the run is about to train (on the main process; accelerate's init_trackers runs
    # there only): a run refused before has none to clean up.
    accelerator.init_trackers(trackers.PROJECT, config=trackers.scalar_config(cfg),
                              init_kwargs=trackers.init_kwargs(out_dir, run_id, step))
    if main and accelerator.log_with:
        print(f"[lori] trackers: {', '.join(t.name for t in accelerator.trackers)} (project {trackers.PROJECT!r}, "
              f"run {out_dir.name!r})")
    elif main and "all" in cfg.train.log_with:
        print("[lori] train.log_with=all: no tracker is installed; metrics.jsonl only")
    log = MetricsLog(out_dir, main, accelerator)
    stop = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    per_proc = cfg.train.global_batch // world
    bar = tqdm(total=stop, initial=step, desc=f"train {cfg.method}", disable=not main, dynamic_ncols=True)
    t_last, tok_since = time.perf_counter(), 0
    totals: dict[str, float] = {}
    lm = getattr(accelerator.unwrap_model(module), "lm", accelerator.unwrap_model(module))
    uniform_ce, uniform_run = math.log(lm.get_output_embeddings().weight.shape[0]), 0
    trainable = [p for p in module.parameters() if p.requires_grad]
    weight_norm = fsdp.weight_norm if sharded else _weight_norm
    norm_before = weight_norm(trainable)

    def save(at_step: int) -> Path:
        unwrapped = accelerator.unwrap_model(module)
        rngs = all_gather(rng_state(), world)
        state = {"scheduler": scheduler.state_dict(), "rng": rngs[0],
                 "rng_per_process": rngs, "step": at_step, "cursor": cursor,
                 "curriculum": {"stage": stage, "start": stage_start, "recent": list(recent)}}
        lm_of = lambda m: getattr(m, "lm", m)  # noqa: E731
        path = failed = saved = None
        if sharded:  # every process writes its shards; the main process gets the gathered weights
            saved, failed = _save_sharded(module, optimizer.optimizer, method.extra_tensors(unwrapped), out_dir,
                                          at_step, main, world)
        else:
            state["optimizer"] = optimizer.state_dict()
        if main and not failed:
            try:
                if sharded:  # the full weights of the language model (a latent student's under "lm.")
                    tmp, full, extra = saved
                    prefix = "lm." if lm_of(unwrapped) is not unwrapped else ""
                    path = save_checkpoint(out_dir, at_step, lm_of(unwrapped), tokenizer, cfg, state,
                                           extra_tensors=extra, keep=cfg.train.keep_checkpoints, tmp=tmp,
                                           state_dict={k[len(prefix):]: v for k, v in full.items()
                                                       if k.startswith(prefix)})
                else:
                    path = save_checkpoint(out_dir, at_step, lm_of(unwrapped), tokenizer, cfg, state,
                                           extra_tensors=method.extra_tensors(unwrapped),
                                           keep=cfg.train.keep_checkpoints)
            except LoriError as e:  # a full disk, an unwritable folder: every process stops, none waits forever
                failed = str(e)
        failed = broadcast_object(failed, world)
        if failed:
            bar.close()
            raise LoriError(failed)
        accelerator.wait_for_everyone()
        return path or step_dir(out_dir, at_step)

    while step < stop:
        if not adaptive:
            stage = cur.stage_at(step)
        if stage != rendered:
            items = render_all(method, train_set, tokenizer, cfg, stage, answer_len)
            rendered = stage
            if cfg.curriculum.reset_optimizer:
                getattr(optimizer, "optimizer", optimizer).state.clear()
            if main:
                bar.write(f"[lori] step {step}: curriculum stage {stage}"
                          f"{' (final)' if cfg.curriculum.is_final(stage) else ''}")
        idx = step_indices(len(items), cfg.train.seed, cursor, cfg.train.global_batch)
        cursor += cfg.train.global_batch
        norm = step_norm(items, idx)
        mine = idx[rank * per_proc : (rank + 1) * per_proc]
        parts_sum: dict[str, float] = {}
        for a in range(accum):
            micro = [items[i] for i in mine[a * cfg.train.micro_batch : (a + 1) * cfg.train.micro_batch]]
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v
                     for k, v in method.collate(micro, tokenizer.pad_token_id).items()}
            # DDP all-reduces once per step (no_sync before); FSDP reduce-scatters every micro batch, so that each
            # process only holds its shard of the accumulated gradients.
            ctx = accelerator.no_sync(module) if a < accum - 1 and not sharded else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                loss, parts = method.loss(module, batch, norm, method_state)
                # DDP and FSDP average gradients over processes; the loss is already normalised globally, so undo
                # that.
                accelerator.backward(loss * world)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
            parts_sum["loss"] = parts_sum.get("loss", 0.0) + float(loss.detach())
        # Sum the per-process parts (each already divided by the global normaliser) into step totals, and refuse
        # a non-finite one before the optimizer step, so bad weights are never written. Float64, as the Python
        # sums of one process: one process with accumulation A and A processes then log the same totals.
        totals = dict(parts_sum)
        if world > 1:
            reduced = accelerator.reduce(torch.tensor(list(parts_sum.values()), dtype=torch.float64,
                                                      device=accelerator.device), "sum")
            totals = dict(zip(parts_sum.keys(), reduced.tolist()))
        grad_norm, lr_used = None, scheduler.get_last_lr()[0]
        if cfg.train.grad_clip is not None:
            grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), cfg.train.grad_clip))
        problem = _non_finite(totals if grad_norm is None else {**totals, "grad_norm": grad_norm}, step + 1,
                              out_dir, main)
        if problem:
            bar.close()
            raise LoriError(problem)
        optimizer.step()
        # Check the update itself: weights that became non-finite or grew DIVERGED_FACTOR-fold in one step are a
        # divergence even while the loss they give is still finite; they are never saved (every process holds the
        # same weights, so every process stops here). From all-zero weights the first step is not judged.
        norm_after = weight_norm(trainable)
        if not math.isfinite(norm_after) or 0 < DIVERGED_FACTOR * norm_before < norm_after:
            bar.close()
            kept = list_checkpoints(out_dir)
            raise LoriError(f"step {step + 1}: the update took the weights' norm from {norm_before:.4g} to "
                            f"{norm_after:.4g}: training diverged; no weights of step {step + 1} were written; "
                            + (f"the last good checkpoint is {kept[-1]}" if kept else
                               "no checkpoint was saved before it") + f". {_ADVICE}")
        norm_before = norm_after
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_stage = stage  # the stage this step trained in (an adaptive curriculum may advance below)
        if adaptive and not cur.is_final(stage):
            recent.append(totals.get("ce", totals["loss"]))
            learned = len(recent) == recent.maxlen and sum(recent) / len(recent) < cur.advance_below
            if learned or step - stage_start >= cur.steps_per_stage:
                if main:
                    bar.write(f"[lori] step {step}: stage {stage} ends after {step - stage_start} steps ("
                              + (f"ce {sum(recent) / len(recent):.4f} < {cur.advance_below}" if learned
                                 else "curriculum.steps_per_stage reached") + ")")
                stage, stage_start = stage + 1, step
                recent.clear()
        tok_since += norm.tokens
        bar.update(1)
        uniform_run = uniform_run + 1 if abs(totals.get("ce", math.nan) - uniform_ce) < 1e-3 else 0
        if uniform_run == UNIFORM_WINDOW and main:
            bar.write(f"[lori] warning: step {step}: the cross-entropy has been ln(vocab) = {uniform_ce:.4f} (a "
                      f"uniform prediction) for {UNIFORM_WINDOW} steps: the model has collapsed or is not "
                      "learning; lower train.lr or set train.grad_clip")
        if step % cfg.train.log_every == 0 or step == stop:
            now = time.perf_counter()
            record = {"step": step, **({"stage": step_stage} if cfg.curriculum.stages else {}),
                      **{k: round(v, 6) for k, v in totals.items()},
                      "lr": lr_used, "tokens_per_s": round(tok_since / (now - t_last), 1)}
            if grad_norm is not None:
                record["grad_norm"] = round(grad_norm, 4)
            t_last, tok_since = now, 0
            log.write(record)
            bar.set_postfix(loss=f"{totals['loss']:.4f}")
            if main:
                bar.write(" ".join(f"{k}={v}" for k, v in record.items()))
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < stop:
            with fsdp.gathered(module) if sharded else contextlib.nullcontext():
                record = {"step": step, **validate(cfg, method, accelerator.unwrap_model(module), tokenizer,
                                                   valid_set, accelerator)}
            log.write(record)
            if main:
                bar.write(" ".join(f"{k}={v}" for k, v in record.items()))
            t_last, tok_since = time.perf_counter(), 0  # throughput counts training time only
        if step % cfg.train.save_every == 0 and step < stop:
            save(step)
    bar.close()
    final = save(step)
    with fsdp.gathered(module) if sharded else contextlib.nullcontext():
        record = {"step": step, **validate(cfg, method, accelerator.unwrap_model(module), tokenizer, valid_set,
                                           accelerator)}
    log.write(record)
    if main:
        print(" ".join(f"{k}={v}" for k, v in record.items()))
        print(f"[lori] checkpoint: {final}")
    # Tear down in order: every process reaches the end, the DDP wrapper (its reducer holds the process group) is
    # freed, then the group is destroyed. A DDP reducer freed after its gloo group was destroyed can hang at exit.
    accelerator.wait_for_everyone()
    module = optimizer = None  # the closure save() shares these cells, so rebinding drops the last references
    accelerator.free_memory()
    gc.collect()
    trackers.finish(accelerator)  # then end_training destroys the process group
    accelerator.end_training()
    return final


DIVERGED_FACTOR = 10.0  # one update growing the weights' norm this much is a divergence (a healthy step: < 1.01)
UNIFORM_WINDOW = 50  # steps of cross-entropy at ln(vocab) before the collapse warning
_ADVICE = ("Lower train.lr or set train.grad_clip and train again (train.resume=never, or a new out_dir): a resumed "
           "run keeps the settings it started with")


def _save_sharded(module, optimizer, extra_tensors, out_dir: Path, step: int, main: bool, world: int):
    """The collective part of a checkpoint under sharding: the main process makes the temporary folder, every
    process writes its shards of the model and optimizer state into ``sharded/`` and takes part in gathering the
    full weights (and the method's extra tensors) onto the main process. Returns ``((tmp, full weights, extra
    tensors) on the main process, None elsewhere; the error every process stops with, or None)``."""
    tmp = failed = None
    if main:
        try:
            tmp = temporary_folder(out_dir, step)
        except LoriError as e:
            failed = str(e)
    tmp, failed = broadcast_object((tmp, failed), world)
    if failed:
        return None, failed
    from torch.distributed.checkpoint.api import CheckpointException  # sharded runs only (lori.training.sharding)

    problem = None
    try:
        fsdp.save_sharded(module, optimizer, tmp / SHARDED_DIR)
    except (Exception, CheckpointException) as e:  # raised on every process when one failed to write its part
        err = write_error(out_dir, step, e)
        problem = str(err) if err is not None else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    problems = [p for p in all_gather(problem, world) if p]
    if problems:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        return None, problems[0]
    full = fsdp.full_state_dict(module)
    extra = fsdp.full_tensors(extra_tensors, main)
    return ((tmp, full, extra) if main else None), None


def _weight_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of all trainable weights together (float64 accumulation)."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.detach(), dtype=torch.float64) for p in params])))


def _non_finite(values: dict[str, float], step: int, out_dir: Path, main: bool) -> str | None:
    """The error message for a step whose loss terms (or gradient norm) are not all finite, else None.

    The loss of ``step`` was computed from the weights after step ``step - 1``; a checkpoint of that step holds
    weights that give it, so it is moved aside to ``checkpoints/diverged-step-N`` (kept for inspection, never resumed)
    and the message names the newest checkpoint before it."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return None
    suspect = step_dir(out_dir, step - 1)
    good = [p for p in list_checkpoints(out_dir) if p != suspect]
    moved = ""
    if suspect.is_dir():
        aside = suspect.with_name(f"diverged-{suspect.name}")
        if main:
            shutil.rmtree(aside, ignore_errors=True)
            suspect.rename(aside)
        moved = f"; its weights (step {step - 1}) were moved to {aside}, never to be resumed"
    where = (f"the last good checkpoint is {good[-1]}" if good
             else "no good checkpoint remains" if moved else "no checkpoint was saved before it")
    return (f"step {step}: non-finite {', '.join(f'{k}={values[k]}' for k in bad)}; stopped before the optimizer "
            f"step, so no weights of step {step} were written{moved}; {where}. {_ADVICE}")
