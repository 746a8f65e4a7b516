"""``lori export RUN --out DIR``: a self-contained folder to publish a student as is (e.g. on the Hugging Face Hub).

The folder holds the merged weights (``model.safetensors``, sharded above ``--max-shard-size``) and ``config.json``
for ``transformers``, the tokenizer, ``lori_config.yaml`` and ``projector.safetensors`` (what :func:`lori.load`
needs), ``lori_student.json`` (the latent settings at a glance), ``generation_config.json`` and ``README.md``, a
model card whose method lines come from the method's record (``Method.paper``, ``Method.card``). No optimizer or
trainer state is copied. The folder is written to a temporary one beside it and renamed; an existing ``--out`` is
replaced only when it is an earlier export (it holds ``lori_student.json``). ``--push-to-hub REPO`` uploads it with
``huggingface_hub``. What each file holds: docs/using-students.md (``lori export``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from safetensors.torch import save_file
from transformers import GenerationConfig

from . import __version__
from .config import PATH_KEYS
from .errors import LoriError
from .evaluation.results import markdown_table, read_results, row_mismatch
from .evaluation.scoring import eval_examples
from .methods import METHODS
from .models.build import quiet_progress
from .models.checkpoint_folders import (CONFIG_FILE, checkpoint_config, resolve_checkpoint, weights_digest,
                                         write_weight_digests)
from .student import inference_settings, load
from .utils import check_writable, share_tree, write_failed

STUDENT_FILE = "lori_student.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
# the benchmark each task is scored on, as a Hub dataset id (the model card's `datasets`)
TASK_DATASETS = {"gsm8k": ["openai/gsm8k"], "gsm8k-hard": ["reasoning-machines/gsm-hard"],
                 "svamp": ["ChilleD/SVAMP"], "multiarith": ["ChilleD/MultiArith"]}
# offline aliases of lori.models.hub -> the Hub model their weights come from
ALIAS_BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def projector_kind(cfg) -> str | None:
    """The projector of a latent method's thoughts (None for explicit methods)."""
    thoughts = METHODS[cfg.method].thoughts
    return None if thoughts is None else thoughts.projector(cfg)


def is_latent(method: str) -> bool:
    """Whether ``method`` runs latent steps (it declares :class:`lori.methods.thoughts.Thoughts`)."""
    return METHODS[method].thoughts is not None


def base_model(cfg, depth: int = 0) -> str | None:
    """The Hub id the student's weights descend from: ``model.name`` when it is a hub id (or an offline alias of
    one), else followed through ``model.init_from`` (a teacher checkpoint's own config); None for tiny models built
    from config and for local folders of unknown origin."""
    name = cfg.model.name
    if cfg.model.init_from and depth < 8:
        try:
            parent = checkpoint_config(resolve_checkpoint(cfg.model.init_from), [])
        except LoriError:
            parent = None
        if parent is not None:
            return base_model(parent, depth + 1)
    if name == "tiny" or Path(name).expanduser().exists():
        return None
    if name in ALIAS_BASE_MODELS:
        return ALIAS_BASE_MODELS[name]
    return name if name.count("/") == 1 and not name.startswith((".", "/", "~")) else None


def training_data(cfg) -> str:
    """One line on what the student was trained on."""
    d = cfg.data
    if d.train_file:
        try:
            with open(d.train_file, "rb") as f:
                n = sum(1 for line in f if line.strip())
            count = f", {n:,} lines"
        except OSError:
            count = ""
        return f"`{Path(d.train_file).name}` ({d.format} format{count})"
    if d.task == "chains":
        return (f"{d.train_size:,} generated {d.chain_steps}-step chains mod {d.chain_modulus} (ops `{d.chain_ops}`, "
                f"back_ref {d.chain_back_ref}, {d.chain_rationale} rationales; `lori.data.chains`, data.seed={d.seed})")
    return (f"{d.train_size:,} generated {d.digits[0]}x{d.digits[1]} multiplication problems (iCoT format, "
            f"data.seed={d.seed})")


def find_results(run: Path, ckpt: Path, cfg, results: str | Path | None = None):
    """``(results.json, rows)`` of the evaluation rows of ``ckpt`` as it is now: from ``results`` when given, else
    from the run's ``eval-*/results.json`` and the folder above it (``lori demo`` / ``lori compare``). A row is taken
    only when it names ``ckpt`` and records its weights (``weights_sha256``) and its own inference settings (``cfg``'s,
    no override); each row of ``ckpt`` left out is said with the reason. ``(None, [])`` when there is none."""
    if results is not None:
        candidates = [Path(results)]
    else:
        candidates = sorted(run.glob("eval-*/results.json")) + [run.parent / "results.json"]
    want, digest, own = ckpt.resolve(), weights_digest(ckpt), inference_settings(cfg)
    reasons = []
    for path in candidates:
        if not (path.is_file() or path.is_dir()):
            if results is not None:
                raise LoriError(f"--results {results}: no such results.json")
            continue
        _, _, _, rows = read_results(path)
        ours = [r for r in rows if Path(r.checkpoint).resolve() == want]
        mine = [r for r in ours if row_mismatch(r, digest, own) is None]
        reasons += [f"{path}: a {r.method} row of {ckpt.name} is left out: it {row_mismatch(r, digest, own)}"
                    for r in ours if r not in mine]
        if mine:
            return (path / "results.json" if path.is_dir() else path), mine
        if results is not None:
            raise LoriError(f"--results {results} has no row of {ckpt} as it is now ("
                            + ("; ".join(reasons) if reasons else
                               f"its rows: {', '.join(sorted({r.checkpoint for r in rows})) or 'none'}")
                            + "); evaluate it again with `lori eval`")
    for reason in reasons:
        print(f"[lori] {reason}; `lori eval {ckpt}` evaluates it again", flush=True)
    return None, []


def policy(student) -> str:
    """The task's answer-matching rule, in words."""
    return student.task.rule.replace("see module docstring", "lori.tasks")


def example_question(cfg) -> str:
    """The first problem the checkpoint is evaluated on (its test split), for the card's example; a placeholder when
    the data cannot be read here."""
    try:
        return eval_examples(cfg)[0].question
    except (LoriError, OSError, IndexError):
        return "QUESTION"


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *[f"- {json.dumps(v)}" for v in values]] if values else []


def model_card(student, ckpt: Path, results_file: Path | None, rows: list, repo: str | None = None) -> str:
    """The README.md of an export: YAML front matter, then what the student is and how to use it."""
    cfg, method = student.cfg, student.method
    latent = is_latent(method)
    base = base_model(cfg)
    where = repo or "PATH/TO/THIS/FOLDER"
    front = ["---", f"library_name: {'lori' if latent else 'transformers'}", "pipeline_tag: text-generation",
             *([f"base_model: {base}"] if base else []), *_yaml_list("datasets", TASK_DATASETS.get(cfg.data.task, [])),
             "metrics:", "- accuracy",
             *_yaml_list("tags", list(dict.fromkeys(["lori", method, "latent-reasoning" if latent else
                                                     "chain-of-thought", cfg.data.task]))), "---", ""]
    K = student.latent_steps
    has_projector = projector_kind(cfg) not in (None, "identity", "soft")
    settings = [f"- **Method**: `{method}` — {METHODS[method].paper}."]
    if latent:
        settings += [
            f"- **Latent steps K = {K}**: after `[bos] question || <bot>` the last hidden state goes through the "
            f"`{projector_kind(cfg)}` projector (`lori.models.latent_student.Projector`) and is fed back as the next input "
            f"embedding, {K} times (no tokens are sampled), then `<eot>` and greedy text `#### answer`.",
            f"- **Thought positions**: offset {cfg.curriculum.thought_offset}, stride {cfg.curriculum.thought_stride} "
            "(`lori.models.latent_student.thought_positions`).",
        ]
    else:
        settings.append("- **Generation**: plain greedy decoding after `[bos] question ||`; the answer follows `####`.")
    settings += METHODS[method].card(cfg)
    t, cur = cfg.train, cfg.curriculum
    length = (f"each ending when its loss is below {cur.advance_below}, at most {cur.steps_per_stage} steps"
              if cur.advance_below else f"{cur.steps_per_stage} steps each")
    stages = ("none" if cur.stages == 0 else
              f"{cur.stages} stages ({length}, {cur.thoughts_per_step} thought(s) per step)")
    arch = student.lm.config
    n_params = sum(p.numel() for p in student.lm.parameters())
    settings += [
        f"- **Model**: {arch.model_type}, {arch.num_hidden_layers} layers, width {arch.hidden_size}, "
        f"{n_params / 1e6:.2f}M parameters, {cfg.model.dtype}"
        + (f"; base model `{base}`" if base else "; built from config (`model.name: tiny`) with a word-level tokenizer")
        + (f"; LoRA r={cfg.model.lora_r} (merged into these weights)" if cfg.model.lora_r else "") + ".",
        f"- **Training data**: {training_data(cfg)}; answers scored by the `{cfg.data.task}` policy: "
        f"{policy(student)}.",
        f"- **Budget**: {t.steps:,} optimizer steps × global batch {t.global_batch} "
        f"({t.steps * t.global_batch:,} examples), lr {t.lr} ({t.schedule}), curriculum {stages}; this is "
        f"checkpoint `{ckpt.name}`"
        + (f", initialised from `{Path(cfg.model.init_from).name}`" if cfg.model.init_from else "") + ".",
    ]
    if rows:
        ts = rows[0].test_set or {}
        what = f"{ts.get('task', cfg.data.task)} {ts.get('split', cfg.eval.split)}, {ts.get('n', '?')} problems"
        table = ["## Evaluation", "",
                 f"From `{results_file.name}` of the run (`lori eval`; {what}; greedy, one answer policy for every "
                 "method). Tokens are every decoding step after the prompt (latent steps + `<eot>` + answer tokens "
                 "incl. EOS).", "", markdown_table(rows), ""]
    else:
        table = ["## Evaluation", "", "Not evaluated yet: `lori eval RUN` writes the table this card shows.", ""]
    warning = (["> **Plain `transformers` `generate()` does not run this student's latent steps**: it decodes "
                "explicitly right after the prompt, skipping the K continuous thoughts, so its answers are not this "
                "model's. Generate with `lori.load` (below), which runs the latent loop.", ""] if latent else [])
    usage = [
        "## Use it", "",
        "Install lori (`pip install -e .` in a clone of its repository), then:", "",
        "```python", "import lori", "",
        f'student = lori.load("{where}")   # this folder (downloaded, e.g. huggingface_hub.snapshot_download)',
        f"for r in student.generate([{json.dumps(example_question(cfg), ensure_ascii=False)}]):",
        "    print(r.answer, r.latent_steps, r.tokens, r.text)", "```", "",
        "The question is written as in training: the question text alone, no chat or few-shot formatting"
        + (" (the chat template is applied by `lori.load`)" if cfg.model.chat_template else "") + ". "
        "`answer` is what the task's policy extracts from `text`; `latent_steps` the continuous thoughts run; "
        "`tokens` the text tokens generated.", "",
        "The weights alone load with `transformers.AutoModelForCausalLM.from_pretrained`; the latent settings are "
        "in `lori_student.json` and `lori_config.yaml`"
        + (", the projector's weights in `projector.safetensors`." if has_projector else
           f" (the `{projector_kind(cfg)}` projector has no weights).")
        if latent else "The weights load with `transformers.AutoModelForCausalLM.from_pretrained` too: prompt "
                       "`[bos] question ||` and greedy-decode.", "",
    ]
    if cfg.data.task == "gsm8k":  # the one task lm-eval scores too (gsm8k, lori's offline gsm8k_aug_test)
        usage += ["With lm-evaluation-harness (`pip install 'lm-eval==0.4.13'`): `lori lm-eval --model lori "
                  f"--model_args pretrained={where} --tasks gsm8k --num_fewshot 0` runs the student's own generation "
                  "under lm-eval's scoring.", ""]
    title = [f"# {method} student ({cfg.data.task})", "",
             f"{'A latent-reasoning' if latent else 'An explicit-reasoning'} student trained with the `lori` harness "
             "(LoRi: [arXiv 2606.05315](https://arxiv.org/abs/2606.05315)) and exported with `lori export`.", ""]
    return "\n".join(front + title + warning + ["## What it is", "", *settings, ""] + table + usage)


def student_settings(student, ckpt: Path, folder: Path) -> dict:
    """``lori_student.json`` of the export ``folder`` of ``ckpt``: the latent settings, readable without lori."""
    cfg = student.cfg
    latent = is_latent(student.method)
    prompt = "[bos] question || <bot>" if latent else "[bos] question ||"
    return {
        "lori_version": __version__,
        "method": student.method,
        "latent_steps": student.latent_steps,
        "projector": projector_kind(cfg),
        "projector_file": "projector.safetensors" if (Path(folder) / "projector.safetensors").is_file() else None,
        "bot_token": "<bot>" if latent else None,
        "eot_token": "<eot>" if latent else None,
        "thought_offset": cfg.curriculum.thought_offset if latent else None,
        "thought_stride": cfg.curriculum.thought_stride if latent else None,
        "prompt": prompt + (" (inside the chat template's user turn)" if cfg.model.chat_template else ""),
        "task": cfg.data.task,
        "answer_policy": policy(student),
        "max_new_tokens": cfg.eval.max_new_tokens,
        "source_checkpoint": source_name(ckpt),
        "generate_with": "lori.load(folder).generate(questions)",
    }


def source_name(ckpt: Path) -> str:
    """The exported checkpoint as ``RUN/checkpoints/step-N`` (the run folder's name, no local path)."""
    ckpt = Path(ckpt).resolve()
    return f"{ckpt.parent.parent.name}/checkpoints/{ckpt.name}" if ckpt.parent.name == "checkpoints" else ckpt.name


def portable_config(ckpt: Path, out: Path) -> str:
    """The checkpoint's ``lori_config.yaml`` with its paths relative to the export folder ``out`` (the saved config
    holds absolute local paths; ``lori.load`` reads relative ones against the folder): nothing local is published."""
    tree = yaml.safe_load((ckpt / CONFIG_FILE).read_text())
    for key in PATH_KEYS:
        section, _, name = key.rpartition(".")
        node = tree.get(section) if section else tree
        value = node.get(name) if isinstance(node, dict) else None
        if isinstance(value, str) and os.path.isabs(value):
            node[name] = os.path.relpath(value, Path(out).resolve())
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)


def generation_config(student):
    """Greedy decoding with the checkpoint's budget; ``lori_*`` keys say how a latent student generates."""
    tok, latent = student.tokenizer, is_latent(student.method)
    extra = {"lori_method": student.method, "lori_latent_steps": student.latent_steps,
             "lori_generate_with": "lori.load(folder).generate(questions)"}
    if latent:
        extra["lori_note"] = (f"plain generate() skips this student's {student.latent_steps} latent steps (it decodes "
                              "explicitly after the prompt); use lori.load(folder).generate(questions)")
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=student.cfg.eval.max_new_tokens,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **extra)


def export(run: str | Path, out: str | Path, *, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
           results: str | Path | None = None, push_to_hub: str | None = None, private: bool = False) -> Path:
    """Write the export folder ``out`` of ``run`` (a run folder: its newest checkpoint; or a checkpoint folder)."""
    ckpt = resolve_checkpoint(run)
    out = Path(out)
    if out.resolve() == ckpt.resolve() or ckpt.resolve() in out.resolve().parents:
        raise LoriError(f"--out {out} is inside the checkpoint {ckpt}; choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / STUDENT_FILE).is_file())):
        raise LoriError(f"--out {out} exists and is not an earlier export (no {STUDENT_FILE}); choose a new or "
                        "empty folder")
    check_writable(out.parent if not out.exists() else out, "--out")
    if push_to_hub:
        hub_preflight(push_to_hub)
    student = load(ckpt, device="cpu")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    results_file, rows = find_results(run_dir, ckpt, student.cfg, results)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        lm = student.lm
        lm.generation_config = generation_config(student)
        with quiet_progress():
            lm.save_pretrained(tmp, max_shard_size=max_shard_size)
        student.tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_FILE).write_text(portable_config(ckpt, out))
        for name, tensors in (METHODS[student.method].extra_tensors(student.module) or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        (tmp / STUDENT_FILE).write_text(json.dumps(student_settings(student, ckpt, tmp), indent=2) + "\n")
        card_rows = [replace(r, checkpoint=source_name(ckpt)) for r in rows]  # no local path on the card
        (tmp / "README.md").write_text(model_card(student, ckpt, results_file, card_rows, push_to_hub))
        write_weight_digests(tmp)
        share_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(out, e, "nothing was written under that name") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sharded = (out / "model.safetensors.index.json").is_file()
    print(f"[lori] exported {ckpt} ({student.method}, K={student.latent_steps}) to {out}"
          + (" (weights sharded: model.safetensors.index.json)" if sharded else "")
          + (f"; model card with {len(rows)} evaluation row(s) from {results_file}" if rows else
             "; no evaluation found for the card (run `lori eval` first to include one)"))
    if push_to_hub:
        push(out, push_to_hub, private)
    return out


def hub_preflight(repo: str) -> None:
    """Refuse, before any work, a push that cannot happen: no ``huggingface_hub``, offline mode, a bad repo id."""
    try:
        import huggingface_hub  # noqa: F401  (optional: only --push-to-hub needs it)
    except ImportError:
        raise LoriError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    from huggingface_hub import constants  # optional, checked just above

    if constants.HF_HUB_OFFLINE:
        raise LoriError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or "
                        "export without --push-to-hub and upload the folder later (`hf upload REPO FOLDER`)")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise LoriError(f"--push-to-hub {repo!r}: expected a Hub repo id USER/NAME (or ORG/NAME)")


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repo ``repo`` (created if missing); one line when offline or refused."""
    from huggingface_hub import HfApi  # optional: only --push-to-hub needs it (hub_preflight checked it)

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="Upload a lori student (lori export)")
    except Exception as e:  # network errors, HfHubHTTPError (401 not logged in, 403), OfflineModeIsEnabled
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise LoriError(f"could not push {folder} to the Hub repo {repo} ({type(e).__name__}: {first}); the export "
                        "folder is complete: check the network and `hf auth login`, then upload it with "
                        f"`hf upload {repo} {folder}`") from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"
    print(f"[lori] pushed {folder} to {url}")
    return url
