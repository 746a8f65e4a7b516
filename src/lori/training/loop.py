"""The one training loop. Every method runs through it; only rendering and the loss differ.

Built on ``accelerate``: ``torchrun --nproc_per_node N -m lori train ...`` scales it to several processes with no
change. The user sets the global batch; accumulation is derived from micro batch x processes, every process takes
its slice of each step's global batch, and the losses are normalised by the step's global counts, so N processes
with accumulation A give the loss of one process with N x A. The main process logs (``metrics.jsonl`` and the
trackers of ``train.log_with``) and writes checkpoints; ``train.sharding: fsdp`` shards the state instead of
replicating it (lori.training.sharding). Data order is a seeded permutation per epoch indexed by a global example
cursor, so a resumed run sees exactly the examples an uninterrupted one would. The parts: lori.training.guards,
curriculum, optim, checkpoint. docs/training.md.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from pathlib import Path
from typing import Callable

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
from ..models.tokenizer import check_vocabulary
from ..tasks import TASKS
from ..utils import seed_everything
from . import sharding as fsdp
from . import trackers
from .checkpoint import Saver, drop_best, keep_best, read_best, remove_partial_checkpoints, restore, resume_point
from .curriculum import CurriculumClock, schedule
from ..distributed import broadcast_object, check_strategy, check_world, force_cpu
from .guards import Guards
from .identity import acquire_lock, release_lock, start_run
from .optim import batch_arithmetic, build_optimizer


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
    accelerator's trackers (``train.log_with``) at the record's step; ``say`` also prints the record there."""

    def __init__(self, out_dir: Path, enabled: bool, accelerator: Accelerator):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.accelerator = accelerator

    def write(self, record: dict, say: Callable[[str], None] | None = None) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.accelerator.trackers:
            self.accelerator.log(values, step=record["step"])
        if say:
            say(" ".join(f"{k}={v}" for k, v in record.items()))


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
        if "positions" in item:  # kept positions (iCoT-SI, curriculum.keep_positions) reach past the token count
            length = max(length, item["positions"][-1] + 1)
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
        latency_problems=0, **method.generation_kwargs(module, tokenizer, cfg), progress=False,
    )
    counts = torch.tensor([sum(p["correct"] for p in ev.predictions), sum(p["steps"] for p in ev.predictions),
                           len(ev.predictions)], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, "sum")
    correct, steps, n = counts.tolist()
    return {"valid_accuracy": correct / n if n else 0.0, "valid_generated_tokens": steps / n if n else 0.0}


def _validation(cfg: Config, method, module, tokenizer, valid: list[Example], accelerator, sharded: bool,
                step: int) -> dict:
    """The metrics record of :func:`validate` at ``step`` (under sharding with the weights gathered for it)."""
    with fsdp.gathered(module) if sharded else contextlib.nullcontext():
        return {"step": step, **validate(cfg, method, accelerator.unwrap_model(module), tokenizer, valid, accelerator)}


def _on_main(fn: Callable, main: bool, world: int):
    """``fn()`` on the main process (None on the others); a LoriError it raises stops every process, not the main
    one alone."""
    result = problem = None
    if main:
        try:
            result = fn()
        except LoriError as e:
            problem = str(e)
    problem = broadcast_object(problem, world)
    if problem:
        raise LoriError(problem)
    return result


def _set_up_folder(cfg: Config, out_dir: Path, module, n_train: int, n_valid: int, world: int, accum: int,
                   mixed: str, sharded: bool) -> None:
    """On the main process: make the run folder (removing the partial checkpoints of an interrupted run), save the
    resolved config and describe the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for partial in remove_partial_checkpoints(out_dir):
        print(f"[lori] removed {partial}: a checkpoint an interrupted run did not finish writing")
    save_config(cfg, out_dir / "config.yaml")
    print(dump_config(cfg), end="")
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    print(f"[lori] method={cfg.method} task={cfg.data.task} train={n_train} valid={n_valid} "
          f"trainable_params={n_params:,}")
    print(f"[lori] global batch {cfg.train.global_batch} = micro batch {cfg.train.micro_batch} x "
          f"{world} process(es) x {accum} accumulation step(s); mixed precision: {mixed}")
    print(f"[lori] {schedule(cfg)}")
    if sharded:
        print(f"[lori] sharding: FSDP over {world} processes (weights, gradients and optimizer state; "
              f"{'bf16 compute, fp32 reduction' if mixed == 'bf16' else 'float32'})")
    elif cfg.train.sharding == "fsdp":
        print("[lori] sharding: train.sharding=fsdp with one process: nothing to shard over, training unsharded")


def _best_so_far(cfg: Config, out_dir: Path, step: int, resume_from: Path | None) -> dict | None:
    """The ``OUT/checkpoints/best`` a resumed run keeps (one kept at or before the step it resumes from); any other
    is removed."""
    best = read_best(out_dir) if resume_from is not None and cfg.train.keep_best else None
    if best is None or best["step"] > step:
        drop_best(out_dir)
        return None
    return best


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
    lock = _on_main(lambda: acquire_lock(out_dir), accelerator.is_main_process, accelerator.num_processes)
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
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    accum = batch_arithmetic(cfg, world)
    method = METHODS[cfg.method]
    if cfg.data.task not in TASKS:
        raise ConfigError(f"data.task: unknown task {cfg.data.task!r}; choose one of {', '.join(TASKS)}")

    resume_from = resume_point(cfg, out_dir)
    # The run folder's identity (lori.training.identity): a resumed run's settings checked, a fresh run's recorded.
    run_id = _on_main(lambda: start_run(cfg, out_dir, resume_from), main, world)
    if _already_finished(cfg, out_dir, resume_from, main):
        return resume_from

    seed_everything(cfg.train.seed)
    train_set = load_split(cfg.data, "train")
    valid_set = load_split(cfg.data, "valid")
    module, tokenizer = build_model(cfg, method, train_set, resume_from)
    check_vocabulary(tokenizer, [*train_set, *valid_set], "data.train_file and data.valid_file")
    method_state = method.setup_training(module, cfg, train_set, accelerator.device)  # what its loss reads
    # With one process there is nothing to shard over: train.sharding=fsdp then trains (and saves) unsharded.
    sharded = cfg.train.sharding == "fsdp" and world > 1
    if main:
        _set_up_folder(cfg, out_dir, module, len(train_set), len(valid_set), world, accum, mixed, sharded)
    if sharded:
        fsdp.shard(module, world, accelerator.device, bf16=mixed == "bf16")

    optimizer, scheduler = build_optimizer(module, cfg)
    step, cursor, saved_clock, wall_before = restore(resume_from, cfg, module, optimizer, scheduler, sharded,
                                                     accelerator, out_dir)
    clock = CurriculumClock(cfg.curriculum, cfg.train.steps, step, saved_clock)
    best = broadcast_object(_on_main(lambda: _best_so_far(cfg, out_dir, step, resume_from), main, world), world)
    answer_len = answer_length(train_set, tokenizer)
    # the optimizer state's stage: a resume at a stage change resets it too
    rendered, items = clock.stage if clock.trained is None else clock.trained, None
    # Sharded, FSDP is applied above and accelerate would wrap the module in DDP: it prepares the optimizer only.
    module, optimizer = (module, accelerator.prepare(optimizer)) if sharded else accelerator.prepare(module, optimizer)
    module.train()
    trackers.start(accelerator, cfg, out_dir, run_id, step)
    log = MetricsLog(out_dir, main, accelerator)
    stop = min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
    per_proc = cfg.train.global_batch // world
    bar = tqdm(total=stop, initial=step, desc=f"train {cfg.method}", disable=not main, dynamic_ncols=True)
    t_last, tok_since = time.perf_counter(), 0
    t_start = t_last
    guards = Guards(module, accelerator.unwrap_model(module), sharded, out_dir, main, bar)
    save = Saver(cfg, accelerator, module, optimizer, scheduler, method, tokenizer, clock, sharded, bar,
                 elapsed=lambda: round(wall_before + time.perf_counter() - t_start, 3))

    validation = Validation(cfg, method, module, tokenizer, valid_set, accelerator, sharded, log, clock, save, best)
    while step < stop:
        stage = clock.at(step)
        if items is None or stage != rendered:
            items = render_all(method, train_set, tokenizer, cfg, stage, answer_len)
        if stage != rendered:
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
                # DDP and FSDP average gradients over processes; the loss is normalised globally already: undo that.
                accelerator.backward(loss * world)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
            parts_sum["loss"] = parts_sum.get("loss", 0.0) + float(loss.detach())
        totals = _step_totals(parts_sum, accelerator)  # over processes, checked before the optimizer step
        grad_norm, lr_used = None, scheduler.get_last_lr()[0]
        if cfg.train.grad_clip is not None:
            grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), cfg.train.grad_clip))
        guards.check_terms(totals if grad_norm is None else {**totals, "grad_norm": grad_norm}, step + 1)
        optimizer.step()
        guards.check_update(step + 1)  # never saved: every process holds the same weights, so every one stops
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_stage = stage  # the stage this step trained in (an adaptive curriculum may advance below)
        clock.advance(step, totals, bar.write if main else None)
        tok_since += norm.tokens
        bar.update(1)
        guards.watch_uniform(totals, step)
        if step % cfg.train.log_every == 0 or step == stop:
            now = time.perf_counter()
            record = _step_record(cfg, step, step_stage, totals, lr_used, tok_since / (now - t_last), grad_norm)
            t_last, tok_since = now, 0
            bar.set_postfix(loss=f"{totals['loss']:.4f}")
            log.write(record, bar.write)
        kept = False  # kept as the best: its checkpoint is written already
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < stop:
            kept = validation(step, cursor, bar.write)
            t_last, tok_since = time.perf_counter(), 0  # throughput counts training time only
        if step % cfg.train.save_every == 0 and step < stop and not kept:
            save(step, cursor)
    bar.close()
    final = save(step, cursor)
    validation(step, cursor, print, saved=final)
    if main:
        best = validation.best
        print(f"[lori] checkpoint: {final}" + (f"; best of the final stage (train.keep_best): step {best['step']}, "
                                               f"validation accuracy {best['valid_accuracy']:.3f}" if best else ""))
    module = optimizer = save = validation = None  # the Saver holds them too: this drops the last references
    _tear_down(accelerator)
    return final


def _already_finished(cfg: Config, out_dir: Path, resume_from: Path | None, main: bool) -> bool:
    """A run whose newest checkpoint is at train.steps says so and trains nothing: validating and logging again
    would append a second final line to metrics.jsonl."""
    done = cfg.train.resume == "auto" and resume_from is not None and resume_from.name == f"step-{cfg.train.steps:06d}"
    if done and main:
        print(f"[lori] {out_dir} already finished: its newest checkpoint {resume_from.name} is at train.steps="
              f"{cfg.train.steps}; nothing to train (raise train.steps to train on, or train.resume=never to start "
              "over)", flush=True)
    return done


def _step_totals(parts_sum: dict[str, float], accelerator) -> dict[str, float]:
    """The per-process loss parts (each already divided by the global normaliser) summed into step totals, in
    float64 as one process's Python sums: accumulation A and A processes log the same."""
    if accelerator.num_processes == 1:
        return dict(parts_sum)
    reduced = accelerator.reduce(torch.tensor(list(parts_sum.values()), dtype=torch.float64,
                                              device=accelerator.device), "sum")
    return dict(zip(parts_sum.keys(), reduced.tolist()))


def _step_record(cfg: Config, step: int, stage: int, totals: dict, lr: float, tokens_per_s: float,
                 grad_norm: float | None) -> dict:
    """One training step's line of metrics.jsonl."""
    return {"step": step, **({"stage": stage} if cfg.curriculum.stages else {}),
            **{k: round(v, 6) for k, v in totals.items()}, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
            **({"grad_norm": round(grad_norm, 4)} if grad_norm is not None else {})}


def _tear_down(accelerator) -> None:
    """Every process reaches the end, the DDP wrapper (its reducer holds the process group) is freed, then the group
    is destroyed: a DDP reducer freed after its gloo group was destroyed can hang at exit."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    trackers.finish(accelerator)  # then end_training destroys the process group
    accelerator.end_training()


class Validation:
    """Validation at a step; with train.keep_best, a final-stage step that beats the best so far becomes
    OUT/checkpoints/best (its checkpoint written first unless the step's own is given)."""

    def __init__(self, cfg, method, module, tokenizer, valid_set, accelerator, sharded, log, clock, save, best):
        self.cfg, self.method, self.module, self.tokenizer, self.valid_set = cfg, method, module, tokenizer, valid_set
        self.accelerator, self.sharded, self.log, self.clock, self.save, self.best = (
            accelerator, sharded, log, clock, save, best)

    def __call__(self, step: int, cursor: int, say, saved: Path | None = None) -> bool:
        """Returns whether ``step`` became the best checkpoint."""
        cfg, acc = self.cfg, self.accelerator
        record = _validation(cfg, self.method, self.module, self.tokenizer, self.valid_set, acc, self.sharded, step)
        self.log.write(record, say)
        trained = self.clock.trained
        if not (cfg.train.keep_best and trained is not None and cfg.curriculum.is_final(trained)):
            return False
        if self.best is not None and record["valid_accuracy"] <= self.best["valid_accuracy"]:
            return False
        self.best = {"step": step, "valid_accuracy": record["valid_accuracy"]}
        ckpt = saved or self.save(step, cursor)
        _on_main(lambda: keep_best(Path(cfg.out_dir), ckpt, step, record["valid_accuracy"]), acc.is_main_process,
                 acc.num_processes)
        return True


