"""The sanity checks printed with every ``lori compare`` and stored in its rows' ``extra``.

- **Constant predictor**: a row is flagged when (a) its most common predicted answer covers at least the share of the
  test problems that the most common gold answer covers (``top_answer_share >= gold_top_share``), and (b) its
  accuracy is at chance level: the lower end of its 95% Wilson interval is at or below ``gold_top_share``, the
  accuracy of always writing the most common gold answer. Such a row says what the marginal of the answers is, not
  what the method learned.
- **Teacher**: the validation accuracy of every seed's teacher (its last validation, the checkpoint its students
  start from) must be >= :data:`TEACHER_MIN` (warned loudly).
- **Training accuracy** beside test: computed by the pipeline (lori.pipeline.train_accuracy).
"""

from __future__ import annotations

from collections import Counter

from .results import ResultRow

TEACHER_MIN = 0.99


def answer_shares(predictions: list[dict], task) -> tuple[float, float]:
    """``(top_answer_share, gold_top_share)``: the share of problems given the most common predicted answer
    (normalised by ``task``; a generation without an answer is none, so a student that never answers scores 0) and
    the share of the most common gold answer."""
    if not predictions:
        return 0.0, 0.0
    predicted = Counter(a for a in (task.extract_answer(p["generated"]) for p in predictions) if a is not None)
    gold = Counter(task.normalize(p["gold"]) for p in predictions)
    n = len(predictions)
    return (predicted.most_common(1)[0][1] / n if predicted else 0.0), gold.most_common(1)[0][1] / n


def constant_predictor(row: ResultRow, top_answer_share: float, gold_top_share: float) -> bool:
    """The constant-predictor flag of the module docstring."""
    return top_answer_share >= gold_top_share and row.ci95[0] <= gold_top_share


def warnings(rows: list[ResultRow]) -> list[str]:
    """One line per unfinished run and per constant predictor among ``rows`` (their ``extra`` as ``lori compare``
    fills it; the teacher check is per seed, in the command)."""
    out = []
    for r in rows:
        e, who = r.extra, f"{r.method}{'' if r.seed is None else f' (seed {r.seed})'}"
        if e.get("final_stage_reached") is False:
            out.append(f"UNFINISHED: {who} ended in curriculum stage {e['stage']} of {e['stages'] + 1}: its row is "
                       "not the method's accuracy (set curriculum.final_share or raise train.steps)")
        if e.get("constant_predictor"):
            out.append(f"CONSTANT PREDICTOR: {who} gives {100 * e['top_answer_share']:.1f}% of the problems one answer "
                       f"(the most common gold answer covers {100 * e['gold_top_share']:.1f}%) at chance accuracy")
    return out
