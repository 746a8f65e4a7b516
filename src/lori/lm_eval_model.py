"""lm-evaluation-harness (``lm-eval``) support: the ``lori`` model type, so the field's own evaluation tool runs a
student of any method with its latent loop (``pip install -e '.[lm-eval]'``, lm-eval==0.4.13).

``lori lm-eval ARGS`` is lm-eval's own command line with this module imported first (lm-eval 0.4.13 has no plugin
entry point, so the bare ``lm_eval`` script cannot know ``lori``) and ``--include_path`` set to
``lori/lm_eval_tasks`` unless ARGS give one. :class:`LoriLM` implements ``generate_until`` through :func:`lori.load`
and cuts each text at the request's ``until`` strings; ``loglikelihood`` raises ``NotImplementedError`` (a latent
student's answer comes after K continuous thoughts, which scoring a given continuation does not define). With
``context=question`` (default) the question is taken from the last ``Question: ... Answer:`` and few-shot examples
are dropped with a warning; ``context=raw`` passes contexts unchanged. Model arguments and how lm-eval's gsm8k
scoring differs from ``lori eval``'s: docs/using-students.md, docs/evaluation.md.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .errors import LoriError

try:  # optional dependency: pip install -e '.[lm-eval]'
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    HAVE_LM_EVAL = True
except ImportError:  # importable without lm-eval; LoriLM then refuses to be built, naming the install
    HAVE_LM_EVAL = False
    LM = object

    def register_model(*names):
        return lambda cls: cls

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"  # lm-eval task files shipped with lori
INSTALL = "pip install 'lm-eval==0.4.13' (or pip install -e '.[lm-eval]' in the lori repository)"
_QUESTION = "Question:"
_ANSWER = re.compile(r"\n?\s*Answer:\s*$")


def question_of(context: str) -> tuple[str, int]:
    """``(question, dropped few-shot examples)`` of an lm-eval context written ``... Question: Q\\nAnswer:``; a
    context without a final ``Answer:`` after a ``Question:`` is returned stripped, with 0 dropped."""
    m = _ANSWER.search(context)
    if m is None or _QUESTION not in context[: m.start()]:
        return context.strip(), 0
    head = context[: m.start()]
    at = head.rindex(_QUESTION)
    return head[at + len(_QUESTION):].strip(), head[:at].count(_QUESTION)


def cut_at(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string (what Hugging Face models in lm-eval return)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


@register_model("lori")
class LoriLM(LM):
    """lm-eval's ``lori`` model type: generation through :func:`lori.load` (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, device: str | None = None, batch_size=None,
                 max_gen_toks: int | None = None, context: str = "question", **kwargs):
        if not HAVE_LM_EVAL:
            raise LoriError(f"the lori model type for lm-evaluation-harness needs lm-eval: {INSTALL}")
        if pretrained is None:
            raise LoriError("--model lori needs --model_args pretrained=FOLDER (a run, checkpoint or export folder)")
        if context not in ("question", "raw"):
            raise LoriError(f"--model_args context={context!r}: choose question or raw")
        super().__init__()
        from .student import load  # here: lm-eval imports this plugin module; torch loads when the model is built

        kwargs.pop("max_batch_size", None)  # lm-eval passes it to every model type; batches here are fixed
        unused = {k: v for k, v in kwargs.items() if v is not None}
        if unused:
            log.warning("lori model: ignoring model_args %s", ", ".join(sorted(unused)))
        import torch  # here: lm-eval imports this module to register the model type; torch loads when one is built

        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("lori model: device %s is not available (lm-eval's default is cuda); using the cpu", device)
            device = "cpu"
        self.student = load(pretrained, device=device)
        self.batch_size = self._batch_size(batch_size)
        self.max_gen_toks = None if max_gen_toks is None else int(max_gen_toks)
        self.context = context
        self._warned_shots = False

    def _batch_size(self, value) -> int:
        if value is None or str(value).startswith("auto"):
            return self.student.cfg.eval.batch_size
        try:
            return max(1, int(value))
        except ValueError:
            raise LoriError(f"--batch_size {value!r}: an integer or auto") from None

    @property
    def tokenizer_name(self) -> str:
        return str(self.student.checkpoint)

    def _question(self, context: str) -> str:
        if self.context == "raw":
            return context
        question, dropped = question_of(context)
        if dropped and not self._warned_shots:
            log.warning("lori model: dropped %d few-shot example(s) from the context: a student is trained on the "
                        "question alone; run with --num_fewshot 0", dropped)
            self._warned_shots = True
        return question

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generations, one per request, grouped by generation settings and batched like ``lori eval``."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for key, idx in groups.items():
            kw = dict(requests[idx[0]].args[1])
            if kw.get("do_sample") or (kw.get("temperature") or 0) > 0:
                log.warning("lori model: sampling requested (%s); a student generates greedily", key)
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = self.max_gen_toks or kw.get("max_gen_toks") or self.student.cfg.eval.max_new_tokens
            gens = self.student.generate([self._question(requests[i].args[0]) for i in idx],
                                         max_new_tokens=int(max_new), batch_size=self.batch_size,
                                         progress=not disable_tqdm)
            for i, g in zip(idx, gens):
                text = cut_at(g.text, until)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the lori model type generates (generate_until tasks, e.g. gsm8k); loglikelihood tasks (multiple choice, "
            "perplexity) are not supported: a latent student's answer comes after K continuous thoughts, which "
            "scoring a given continuation token by token does not define")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the lori model type does not compute rolling loglikelihoods (perplexity tasks); it supports "
            "generate_until tasks such as gsm8k")


__all__ = ["HAVE_LM_EVAL", "INSTALL", "TASKS_DIR", "LoriLM", "cut_at", "question_of"]
