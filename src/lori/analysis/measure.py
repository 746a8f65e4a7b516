"""``lori analyze``: how low-rank are the teacher's reasoning trajectories, against controls, and what does a latent
student's (LoRi, Coconut, CODI) reasoning look like next to them. Writes ``analysis.json``, PNG figures and
``report.md``.

Measured (conventions of :mod:`lori.subspace.spectrum`): per layer, the spectrum of the uncentred second moment over
every rationale position (the matrix whose top-``r`` eigenvectors are LoRi's basis) and of the centred covariance;
the mode spectra of the trajectory tensor ``X [N, L, T, d]``, every rationale truncated to the shortest one's ``T``;
the same for three controls (random weights, permuted rationale tokens, random rationale tokens); with ``--student``,
its latent spectra, principal angles to the teacher's subspace, a vocabulary probe and the latent-necessity checks
of :mod:`lori.analysis.necessity`. The rank ``r`` is what ``lori precompute`` would choose on this sample.
Definitions and choices: docs/evaluation.md (``lori analyze``).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ..config import Config, LoRiConfig
from ..data.chains import intermediate_values
from ..data.splits import SPLITS, load_split
from ..errors import ConfigError, LoriError
from ..evaluation.generate import greedy_generate
from ..methods import METHODS
from ..methods.lori.teacher import Rendered, render_teacher, resolve_layers
from ..methods.thoughts import group_step
from ..models.build import DTYPES, hidden_size, num_layers
from ..models.checkpoint_folders import checkpoint_config, resolve_checkpoint
from ..models.loading import open_model
from ..methods.lori.teacher import teacher_trajectories
from ..subspace.basis import SecondMomentAccumulator, select_rank
from ..subspace.spectrum import (
    ENERGY_THRESHOLDS,
    chance_mean_cos2,
    gram_singular_values,
    mode_gram,
    principal_cosines,
    spectrum_summary,
    top_subspace,
)
from .figures import ANALYSIS_JSON, MODES, REPORT_MD, write_figures
from .necessity import necessity_checks
from .report import render_report
from ..utils import atomic_write_text, check_writable


CONDITIONS = {
    "teacher": "trained teacher, real rationales",
    "random_weights": "same architecture, random weights",
    "shuffled": "trained teacher, rationale tokens shuffled within each problem",
    "random_tokens": "trained teacher, rationale tokens replaced by random vocabulary tokens",
    "student": "latent student, latent steps",
}
LABELS = {  # short legend labels; the full descriptions are in the report
    "teacher": "teacher (real rationales)",
    "random_weights": "random weights",
    "shuffled": "teacher, shuffled rationale",
    "random_tokens": "teacher, random-token rationale",
    "student": "student latent steps",
}
CONVENTIONS = {
    "spectrum": "singular values s (descending); energies are s^2 (eigenvalues of the Gram / second moment)",
    "effective_rank_entropy": "exp(H(p)), p = s^2 / sum(s^2), natural log",
    "participation_ratio": "(sum s^2)^2 / sum(s^4)",
    "rank_for_energy": "smallest k with sum(top-k s^2) >= threshold * sum(s^2)",
    "energy_at_rank": "sum(top-r s^2) / sum(s^2); r = the analysis rank (hidden mode), lori.layer_rank (layer mode)",
    "per_layer": "hidden-mode spectrum of the uncentred second moment (1/n) sum_t h_t h_t^T over all rationale "
                 "positions (n = positions); 'centred' = of the covariance (mean removed)",
    "modes": "mode-n unfoldings of X [problems, layers, positions, hidden], every rationale truncated to the "
             "shortest one in the sample (problems with an empty rationale are left out); problems are columns",
    "principal_cosines": "singular values of U_T^T U_S, U = top-r eigenvectors of each model's uncentred second "
                         "moment at that layer; chance mean cos^2 = r/d",
}


# --------------------------------------------------------------------------------------------------------- config


def analysis_configs(teacher: Path, student: Path | None, overrides: list[str]) -> tuple[Config, Config | None]:
    """The teacher's config (data) and the student's (latent steps, projector, the LoRi settings it was trained
    with), each from its checkpoint's ``lori_config.yaml`` plus the ``data.*`` / ``lori.*`` overrides."""
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(("data.", "lori."))]
    if bad:
        raise ConfigError(f"lori analyze takes data.* and lori.* overrides only, got {bad[0]!r}")
    tcfg = checkpoint_config(teacher, overrides)
    scfg = None if student is None else checkpoint_config(student, overrides)
    if tcfg.method != "cot-sft":
        raise LoriError(f"{teacher} was trained with method {tcfg.method!r}, which writes no chain of thought: lori "
                        "analyze measures the reasoning trajectories of an explicit-CoT teacher; give a cot-sft "
                        "checkpoint (e.g. the run of configs/chains-cot-sft.yaml), and a latent one with --student")
    if scfg is not None and METHODS[scfg.method].thoughts is None:
        raise LoriError(f"--student {student}: a latent student checkpoint (lori, coconut, codi) is expected, but "
                        f"it was trained with method {scfg.method!r}, which has no latent steps")
    return tcfg, scfg


# ------------------------------------------------------------------------------------------------- controls


def shuffle_rationale(item: Rendered, rng: random.Random) -> Rendered:
    """Control (b): the rationale tokens of one problem in a random order (prompt, answer, anchor unchanged)."""
    ids = list(item.input_ids)
    rat = ids[item.start : item.start + item.length]
    rng.shuffle(rat)
    ids[item.start : item.start + item.length] = rat
    return Rendered(ids, item.start, item.length, item.anchor)


def randomize_rationale(item: Rendered, rng: random.Random, vocab: list[int]) -> Rendered:
    """Control (c): every rationale token replaced by a uniform draw from ``vocab`` (no special tokens)."""
    ids = list(item.input_ids)
    ids[item.start : item.start + item.length] = [rng.choice(vocab) for _ in range(item.length)]
    return Rendered(ids, item.start, item.length, item.anchor)


def ordinary_vocabulary(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    if not vocab:
        raise LoriError("the tokenizer has no non-special tokens to draw random rationales from")
    return vocab


# ------------------------------------------------------------------------------------------------ accumulation


class TrajectoryAccumulator:
    """Streaming sums for one condition: per-layer second moments (all valid positions) and the three mode Grams of
    the truncated tensor ``X [N, L, T, d]`` (problems whose trajectory has at least ``T`` positions)."""

    def __init__(self, n_layers: int, dim: int, positions: int):
        self.moments = SecondMomentAccumulator(n_layers, dim)
        self.positions = positions
        self.grams = [torch.zeros(n, n, dtype=torch.float64) for n in (n_layers, positions, dim)]
        self.n_tensor = 0
        self.n_examples = 0

    @torch.no_grad()
    def update(self, h: torch.Tensor, mask: torch.Tensor) -> None:
        """``h [B, L, T', d]``, ``mask [B, T']`` bool (valid positions first)."""
        h = h.float()
        self.moments.update(h, mask)
        self.n_examples += int(mask.any(-1).sum())
        T = self.positions
        if T < 1 or h.shape[2] < T:
            return
        keep = mask[:, :T].all(-1)
        if not bool(keep.any()):
            return
        x = h[keep][:, :, :T]  # [n, L, T, d]
        for m in range(3):
            self.grams[m] += mode_gram(x, m, batch_dims=1).cpu()
        self.n_tensor += int(keep.sum())

    def result(self, description: str, rank: int, layer_rank: int | None, layers: list[int],
               label: str | None = None) -> dict:
        M = self.moments.mean_second_moment()  # [L, d, d]
        n = self.moments.count.to(torch.float64)[:, None]
        mean = self.moments.first_moment / n
        C = M - mean[:, :, None] * mean[:, None, :]
        out = {
            "description": description,
            "label": label or description,
            "n_examples": self.n_examples,
            "n_positions": int(self.moments.count[0]),
            "layers": [],
        }
        for i, layer in enumerate(layers):
            s = gram_singular_values(M[i])
            centred = spectrum_summary(gram_singular_values(C[i]), rank)
            out["layers"].append({
                "layer": layer,
                "mean_norm": float(mean[i].norm()),
                "rms_norm": float(torch.trace(M[i]).clamp_min(0).sqrt()),
                "uncentred": _curves(spectrum_summary(s, rank)),
                "centred": {k: v for k, v in centred.items() if k not in ("singular_values", "cumulative_energy",
                                                                            "normalized_singular_values")},
            })
        if self.n_tensor:
            ranks = {"layer": layer_rank if layer_rank is not None and layer_rank <= len(layers) else None,
                     "position": None, "hidden": rank}
            out["modes"] = {"n_examples": self.n_tensor, "positions": self.positions, **{
                name: _curves(spectrum_summary(gram_singular_values(g), ranks[name]))
                for name, g in zip(MODES, self.grams)}}
        else:
            out["modes"] = None
        return out

    def second_moments(self) -> torch.Tensor:
        return self.moments.mean_second_moment()


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def _curves(summary: dict) -> dict:
    """Keep the curves JSON-compact (6 significant digits); the normalised spectrum is ``s / s[0]``."""
    summary.pop("normalized_singular_values", None)
    summary["singular_values"] = [_sig(v) for v in summary["singular_values"]]
    summary["cumulative_energy"] = [_sig(v) for v in summary["cumulative_energy"]]
    return summary


# ------------------------------------------------------------------------------------------------------- runs


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def collect_teacher(lm, items: list[Rendered], layers: list[int], pad_id: int, positions: int,
                    batch_size: int) -> TrajectoryAccumulator:
    d = hidden_size(lm)
    acc = TrajectoryAccumulator(len(layers), d, positions)
    for i in range(0, len(items), batch_size):
        h, mask, _ = teacher_trajectories(lm, items[i : i + batch_size], layers, pad_id)
        acc.update(h, mask)
    return acc


def _student_batches(student, tokenizer, cfg: Config, examples, batch_size: int):
    final = cfg.curriculum.stages + 1
    device = next(student.parameters()).device
    method = METHODS[cfg.method]
    for i in range(0, len(examples), batch_size):
        items = [method.render(ex, tokenizer, cfg, final) | {"index": j}
                 for j, ex in enumerate(examples[i : i + batch_size])]
        b = method.collate(items, tokenizer.pad_token_id)
        out = student(b["prompt_ids"].to(device), b["prompt_mask"].to(device), b["suffix_ids"].to(device),
                      b["suffix_mask"].to(device), latent_steps=method.thoughts.latent_steps(cfg))
        yield out.latent_states.float(), out.prompt_states.float()  # [B, L+1, K, d], [B, L+1, d]


@torch.no_grad()
def step_value_probe(student, tokenizer, cfg: Config, examples, batch_size: int) -> list[dict] | None:
    """Does the latent chain hold the value of rationale step k? For every step k whose result is a calculator note's
    value (``<< ... = v >>``, e.g. chains), the share of problems where the state that feeds step k's thought
    (``<bot>`` for k = 1, else the thought before, index (k-1) c with c = curriculum.thoughts_per_step) decodes
    through the LM head to ``v`` as its top token: with the identity projector that state *is* the thought. With
    fewer thought groups than steps, group g is probed for the step it is anchored to (``group_step``; ``step`` is
    that step for the longest problems). None when the rationales have no such values."""
    try:
        values = [intermediate_values(ex) for ex in examples]
    except (ValueError, IndexError):
        return None
    if not examples or not any(values):
        return None
    head = student.lm.get_output_embeddings()
    c = cfg.curriculum.thoughts_per_step
    groups = METHODS[cfg.method].thoughts.latent_steps(cfg) // c
    n_groups = min(max(len(v) for v in values), groups)
    hits, counts, steps = [0] * n_groups, [0] * n_groups, [0] * n_groups
    i = 0
    for latent, prompt in _student_batches(student, tokenizer, cfg, examples, batch_size):
        feed = torch.cat([prompt[:, -1:], latent[:, -1, :-1]], dim=1)  # [B, K, d]: what feeds thought j
        top = head(feed.to(head.weight.dtype)).argmax(-1)
        for b in range(latent.shape[0]):
            v = values[i + b]
            G = min(len(v), groups)  # this problem's groups; with fewer than its steps, each carries several
            for g in range(G):
                k = group_step(g, len(v), G)
                counts[g] += 1
                steps[g] = max(steps[g], k + 1)
                hits[g] += _token_text(tokenizer, int(top[b, g * c])).strip() == str(v[k])
        i += latent.shape[0]
    return [{"step": steps[g], "group": g + 1, "n": counts[g], "share": hits[g] / max(counts[g], 1)}
            for g in range(n_groups)]


@torch.no_grad()
def probe_student(student, tokenizer, cfg: Config, examples, top_k: int = 5) -> list[dict]:
    """Each latent step's last-layer hidden state through the LM head: the ``top_k`` tokens and their softmax
    probabilities, plus the student's greedy answer, for every problem in ``examples``."""
    if not examples:
        return []
    ((states, _),) = list(_student_batches(student, tokenizer, cfg, examples, len(examples)))
    head = student.lm.get_output_embeddings()
    last = states[:, -1]  # [B, K, d]: the final hidden state (after the final norm in HF decoders)
    probs = torch.softmax(head(last.to(head.weight.dtype)).float(), dim=-1)
    p, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    gen = greedy_generate(student.lm, [METHODS[cfg.method].prompt(ex, tokenizer, cfg) for ex in examples],
                          eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, max_new_tokens=64,
                          **student.generation_kwargs())
    out = []
    for b, ex in enumerate(examples):
        out.append({
            "question": ex.question,
            "rationale": ex.rationale,
            "answer": ex.answer,
            "student_output": tokenizer.decode(gen.tokens[b], skip_special_tokens=True).strip(),
            "steps": [{"step": k + 1, "top": [[_token_text(tokenizer, int(i)), round(float(q), 4)]
                                              for i, q in zip(idx[b, k], p[b, k])]}
                      for k in range(idx.shape[1])],
        })
    return out


def _token_text(tokenizer, i: int) -> str:
    text = tokenizer.decode([i])
    return text if text.strip() else (tokenizer.convert_ids_to_tokens(i) or repr(text))


def overlap(teacher_M: torch.Tensor, student_M: torch.Tensor, rank: int, layers: list[int]) -> list[dict]:
    """Per layer: principal cosines between the top-``rank`` subspaces, mean cos², its chance level, and the share
    of the student's latent energy (``tr M_S``) inside the teacher's top-``rank`` subspace."""
    d = teacher_M.shape[-1]
    U_t, U_s = top_subspace(teacher_M, rank), top_subspace(student_M, rank)
    rows = []
    for i, layer in enumerate(layers):
        cos = principal_cosines(U_t[i], U_s[i])
        inside = torch.einsum("dr,de,er->", U_t[i], student_M[i].double(), U_t[i])
        total = torch.trace(student_M[i].double())
        rows.append({
            "layer": layer,
            "principal_cosines": [round(float(c), 6) for c in cos],
            "mean_cos2": float((cos**2).mean()),
            "chance_mean_cos2": chance_mean_cos2(rank, d),
            "student_energy_in_teacher_subspace": float(inside / total) if total > 0 else 0.0,
        })
    return rows


# ------------------------------------------------------------------------------------------------------ driver


@dataclass
class AnalyzeOptions:
    split: str = "train"
    n: int = 256
    seed: int = 0
    batch_size: int = 32
    probe_examples: int = 3
    progress: bool = True


def _say(opts: AnalyzeOptions, msg: str) -> None:
    if opts.progress:
        print(f"[lori] analyze: {msg}", flush=True)


def analyze(checkpoint: str | Path, overrides: list[str] | None = None, student: str | Path | None = None,
            out: str | Path | None = None, options: AnalyzeOptions | None = None) -> Path:
    """Run the analysis; returns the output folder (``analysis.json``, figures, ``report.md``)."""
    opts = options or AnalyzeOptions()
    if opts.split not in SPLITS:
        raise ConfigError(f"--data-split {opts.split!r}: choose one of {', '.join(SPLITS)}")
    if opts.n < 1 or opts.batch_size < 1 or opts.probe_examples < 0:
        raise LoriError("--n and --batch-size must be >= 1, --probe-examples >= 0")
    t0 = time.perf_counter()
    teacher_ckpt = resolve_checkpoint(checkpoint)
    student_ckpt = None if student is None else resolve_checkpoint(student)
    tcfg, scfg = analysis_configs(teacher_ckpt, student_ckpt, list(overrides or []))
    lcfg: LoRiConfig = (scfg or tcfg).lori
    out_dir = Path(out) if out else teacher_ckpt.parent.parent / f"analysis-{opts.split}"
    check_writable(out_dir, "--out" if out else "the analysis folder")  # before the analysis, not after it

    examples = load_split(tcfg.data, opts.split)
    rng = random.Random(tcfg.data.seed)
    picked = sorted(rng.sample(range(len(examples)), min(opts.n, len(examples))))
    sample = [examples[i] for i in picked]
    device = _device()

    lm, tokenizer = open_model(teacher_ckpt, tcfg)
    lm.eval().requires_grad_(False).to(device)
    L_total = num_layers(lm)
    layers = resolve_layers(lcfg, L_total)
    d = hidden_size(lm)
    rendered = [render_teacher(ex, tokenizer, tcfg.model.chat_template) for ex in sample]
    keep = [i for i, r in enumerate(rendered) if r.length > 0]
    if not keep:
        raise LoriError(f"none of the {len(sample)} sampled problems has a rationale: nothing to analyse")
    rendered = [rendered[i] for i in keep]
    sample = [sample[i] for i in keep]
    lengths = [r.length for r in rendered]
    T = min(lengths)
    _say(opts, f"teacher {teacher_ckpt}, {len(sample)} {opts.split} problems with a rationale (of "
               f"{min(opts.n, len(examples))} sampled), layers {layers}, rationale tokens {T}..{max(lengths)}, "
               f"device {device}")

    pad = tokenizer.pad_token_id
    crng = random.Random(opts.seed)
    vocab = ordinary_vocabulary(tokenizer)
    inputs = {
        "teacher": rendered,
        "shuffled": [shuffle_rationale(r, crng) for r in rendered],
        "random_tokens": [randomize_rationale(r, crng, vocab) for r in rendered],
    }
    accs: dict[str, TrajectoryAccumulator] = {}
    for name in ("teacher", "shuffled", "random_tokens"):
        accs[name] = collect_teacher(lm, inputs[name], layers, pad, T, opts.batch_size)
        _say(opts, f"{name}: {accs[name].moments.count[0]} positions")

    teacher_M = accs["teacher"].second_moments()
    teacher_ev = torch.linalg.eigvalsh(0.5 * (teacher_M + teacher_M.transpose(-1, -2))).flip(-1).clamp_min(0)
    rank_cap = None if lcfg.rank is None else min(lcfg.rank, d)
    rank = select_rank(teacher_ev, rank_cap, lcfg.energy)
    rank_rule = (f"lori.rank={lcfg.rank}" if lcfg.energy is None else
                 f"smallest rank reaching lori.energy={lcfg.energy} in every layer"
                 + ("" if lcfg.rank is None else f", capped at lori.rank={lcfg.rank}"))
    if lcfg.rank is not None and lcfg.rank > d:
        rank_rule += f" (capped at the hidden size {d})"

    # control (a): the same architecture, random weights
    config = lm.config
    del lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(opts.seed)
    rnd = AutoModelForCausalLM.from_config(config).to(DTYPES[tcfg.model.dtype])
    rnd.eval().requires_grad_(False).to(device)
    accs["random_weights"] = collect_teacher(rnd, rendered, layers, pad, T, opts.batch_size)
    del rnd
    _say(opts, "random_weights: done")

    conditions = {name: accs[name].result(CONDITIONS[name] + (f" (seed {opts.seed})" if name != "teacher" else ""),
                                          rank, lcfg.layer_rank, layers,
                                          LABELS[name] + (f" (seed {opts.seed})" if name == "random_weights" else ""))
                  for name in ("teacher", "random_weights", "shuffled", "random_tokens")}

    student_info = None
    if student_ckpt is not None:
        student_info, s_acc = _analyze_student(student_ckpt, scfg, sample, layers, teacher_M, rank, d, L_total,
                                               opts, device)
        if s_acc is not None:
            conditions["student"] = s_acc.result(
                f"{CONDITIONS['student']} (K = {student_info['latent_steps']})", rank, lcfg.layer_rank, layers,
                f"{LABELS['student']} (K = {student_info['latent_steps']})")

    result = {
        "version": 1,
        "teacher": str(teacher_ckpt),
        "student": None if student_ckpt is None else str(student_ckpt),
        "task": tcfg.data.task,
        "split": opts.split,
        "n_sampled": min(opts.n, len(examples)),
        "n_problems": len(sample),
        "seed": opts.seed,
        "layers": layers,
        "num_layers": L_total,
        "hidden_size": d,
        "rank": rank,
        "rank_rule": rank_rule,
        "layer_rank": lcfg.layer_rank,
        "energy_thresholds": list(ENERGY_THRESHOLDS),
        "conventions": CONVENTIONS,
        "rationale_length": {"min": min(lengths), "median": statistics.median(lengths),
                             "mean": statistics.fmean(lengths), "max": max(lengths), "common_positions": T,
                             "policy": "tensor modes use the first T = min length rationale tokens of every problem"},
        "conditions": conditions,
        "student_analysis": student_info,
        "figures": {},
        "seconds": None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    result["figures"] = write_figures(result, out_dir)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out_dir / ANALYSIS_JSON, json.dumps(result, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out_dir / REPORT_MD, render_report(result))
    _say(opts, f"wrote {out_dir / ANALYSIS_JSON}, {out_dir / REPORT_MD} and {len(result['figures'])} figures "
               f"({result['seconds']:.0f}s)")
    return out_dir


def _analyze_student(ckpt: Path, cfg: Config, sample, layers, teacher_M, rank, d, L_teacher, opts, device):
    thoughts = METHODS[cfg.method].thoughts
    student, tokenizer = open_model(ckpt, cfg, thoughts.wrap)
    student = student.eval().requires_grad_(False).to(device)
    K = thoughts.latent_steps(cfg)
    d_s, L_s = hidden_size(student.lm), num_layers(student.lm)
    info = {"checkpoint": str(ckpt), "latent_steps": K, "projector": thoughts.projector(cfg),
            "hidden_size": d_s, "num_layers": L_s, "overlap": None, "overlap_skipped": None, "probe": []}
    acc = None
    if (d_s, L_s) != (d, L_teacher):
        info["overlap_skipped"] = (f"the student (L={L_s}, d={d_s}) and the teacher (L={L_teacher}, d={d}) differ in "
                                   "shape: no common space to compare subspaces in")
    else:
        acc = TrajectoryAccumulator(len(layers), d, K)
        for states, _ in _student_batches(student, tokenizer, cfg, sample, opts.batch_size):
            h = states[:, layers]  # [B, L, K, d]; index 0 of the hidden states is the embeddings
            acc.update(h, torch.ones(h.shape[0], h.shape[2], dtype=torch.bool, device=h.device))
        info["overlap"] = overlap(teacher_M, acc.second_moments(), min(rank, K * len(sample), d), layers)
        info["overlap_rank"] = min(rank, K * len(sample), d)
    info["probe"] = probe_student(student, tokenizer, cfg, sample[: opts.probe_examples])
    info["step_values"] = step_value_probe(student, tokenizer, cfg, sample, opts.batch_size)
    info["necessity"] = necessity_checks(student, tokenizer, cfg, sample, opts.batch_size, opts.seed)
    _say(opts, f"student {ckpt}: K = {K}")
    return info, acc
