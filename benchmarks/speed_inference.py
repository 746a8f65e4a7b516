"""The inference side of benchmarks/speed.py: greedy generation of the explicit-CoT teacher and the LoRi student
(latency at batch 1, throughput batched, peak memory of each), and the price of one latent step against one
decoded token, by difference of generations ``STEP_GAP`` steps apart."""

from __future__ import annotations

import statistics

from lori.data.render import segments
from lori.evaluation.generate import greedy_generate
from speed_common import PeakMemory, clock, interleaved_medians, sync
from speed_training import cot_sft, lori_method

INFER_ROUNDS = 3  # batched generations per model and length, in turn; medians reported
STEP_GAP = 16  # decoding steps between the short and the long generation whose difference prices one step


def generation_times(gens: dict[str, tuple], pad_id: int, device) -> tuple[dict[str, float], dict[str, float]]:
    """Greedy generation (KV cache) forced to a length (``eos_id=-1`` is never produced) for each entry
    ``name: (lm, prompts, generation kwargs, max_new_tokens)``. Returns (batch 1: mean seconds per problem, each
    problem run by every entry in turn; batched: median seconds of INFER_ROUNDS generations of all prompts in one
    batch, the entries in turn), both after one untimed generation per entry.

    The per-step prices come from pairs of entries STEP_GAP steps apart, so that the prompt's prefill and the fixed
    overhead cancel: a decoded token is (T(1 + G tokens) - T(1 token)) / G for the explicit model; a latent step
    (projector + one forward that also returns the hidden states) is (T(1 + G thoughts) - T(1 thought)) / G for the
    latent student, which then decodes <eot> and one token; both sit at the same positions after the prompt."""

    def run(name: str, prompts: list[list[int]]) -> None:
        lm, _, kw, new = gens[name]
        greedy_generate(lm, prompts, eos_id=-1, pad_id=pad_id, max_new_tokens=new, **kw)

    for name, (_, prompts, _, _) in gens.items():
        run(name, prompts[:1])  # warm-up
    n = len(next(iter(gens.values()))[1])
    one: dict[str, list[float]] = {k: [] for k in gens}
    for i in range(n):
        for name, (_, prompts, _, _) in gens.items():
            sync(device)
            t0 = clock()
            run(name, [prompts[i]])
            sync(device)
            one[name].append(clock() - t0)
    batched = interleaved_medians({name: (lambda name=name: run(name, gens[name][1])) for name in gens}, device,
                                  INFER_ROUNDS, warmup=1)
    return {k: statistics.mean(v) for k, v in one.items()}, batched


def inference(args, pt, device) -> tuple[dict[str, dict], dict[str, tuple[float, float]]]:
    """({"teacher" | "student": decoding steps, latency, throughput and their peak memories}, {"batch1" |
    "batched": (seconds of a decoded token, of a latent step)}) on the first ``--problems`` examples of ``pt``."""
    cfg, tok = pt.cfg, pt.tok
    probs = pt.train[: args.problems]
    segs = [segments(ex, tok, cfg.model.chat_template) for ex in probs]
    teacher_new = max(len(s.rationale) + len(s.answer) for s in segs)
    student_new = max(len(s.answer) for s in segs)
    prompts_t = [cot_sft.prompt(ex, tok, cfg) for ex in probs]
    prompts_s = [lori_method.prompt(ex, tok, cfg) for ex in probs]
    infer = {key: {} for key in ("teacher", "student")}
    for key in infer:  # peak memory and decoding steps: each model built and run on its own
        for mode in ("latency", "throughput"):
            with PeakMemory(device) as mem:
                if key == "teacher":
                    model, kw, new, prompts = pt.lm(), {}, teacher_new, prompts_t
                else:
                    s, _ = pt.student()
                    model, kw, new, prompts = s.lm, lori_method.generation_kwargs(s, tok), student_new, prompts_s
                g = greedy_generate(model.eval(), prompts[:1] if mode == "latency" else prompts, eos_id=-1,
                                    pad_id=pt.pad, max_new_tokens=new, **kw)
                del model, kw
                if key == "student":
                    del s
            infer[key][mode + "_mem"] = mem.bytes
            infer[key]["steps"] = statistics.mean(g.steps)
    # the times: both models loaded once, every generation taken in turn (see generation_times)
    teacher_lm, (student, _) = pt.lm().eval(), pt.student()
    student.lm.eval()
    kw = student.generation_kwargs()
    gens = {"teacher": (teacher_lm, prompts_t, {}, teacher_new), "student": (student.lm, prompts_s, kw, student_new),
            "tok:1": (teacher_lm, prompts_t, {}, 1), f"tok:{1 + STEP_GAP}": (teacher_lm, prompts_t, {}, 1 + STEP_GAP),
            "lat:1": (student.lm, prompts_s, kw | {"latent_steps": 1}, 1),
            f"lat:{1 + STEP_GAP}": (student.lm, prompts_s, kw | {"latent_steps": 1 + STEP_GAP}, 1)}
    one, batched = generation_times(gens, pt.pad, device)
    for key in ("teacher", "student"):
        infer[key]["latency"], infer[key]["throughput"] = one[key], len(probs) / batched[key]
    per_step = {mode: tuple((t[f"{k}:{1 + STEP_GAP}"] - t[f"{k}:1"]) / STEP_GAP for k in ("tok", "lat"))
                for mode, t in (("batch1", one), ("batched", batched))}
    del teacher_lm, student
    return infer, per_step
