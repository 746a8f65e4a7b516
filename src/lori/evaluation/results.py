"""The results file every tool reads and writes: ``results.json`` (+ a human ``results.md``), written atomically.

A row holds ``method``, ``checkpoint``, ``accuracy`` and ``ci95`` (fractions), tokens, latency, throughput,
``truncated``, ``test_set`` (the problems it was scored on: task, split, n, source, a sha256 of the problems),
``weights_sha256`` and ``inference`` (the weights it scored and how they generated: K, thought positions, projector,
chat template, dtype, command-line ``overrides``), ``seed`` and ``extra``; docs/evaluation.md has the schema.
Rows of different test sets are never put in one table or speedup (:func:`check_one_test_set`, called by every
table here); ``lori export`` puts a row on a model card only when its weights and settings are the published
checkpoint's own (:func:`row_mismatch`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lori.errors import DataError, LoriError
from lori.utils import atomic_write_text
from .metrics import mean_ci

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
BASELINE_METHOD = "cot-sft"

_TOP_KEYS = ("task", "split", "n", "results")
TEST_SET_KEYS = ("task", "split", "n", "source", "sha256")  # required in a row's test_set; "file_sha256" optional
_TEST_SET_MATCH = ("task", "split", "n", "sha256")  # what must agree for two rows to share a table
_NONNEG_KEYS = ("mean_generated_tokens", "latency_ms_per_problem", "throughput_problems_per_s")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@dataclass
class ResultRow:
    """One evaluated (method, checkpoint[, seed]) on one task/split. ``accuracy`` and ``ci95`` are fractions.

    The schema of a row of ``results.json`` (module docstring): :meth:`problem` is its one validation, which
    :func:`write_results` runs before writing and :meth:`from_dict` (what :func:`read_results` reads with) after
    reading."""

    method: str
    checkpoint: str
    accuracy: float
    ci95: tuple[float, float]
    mean_generated_tokens: float
    latency_ms_per_problem: float
    throughput_problems_per_s: float
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    truncated: int | None = None  # generations that hit eval.max_new_tokens without ending (None: not recorded)
    test_set: dict[str, Any] | None = None  # the identity of the problems evaluated (module docstring)
    weights_sha256: str | None = None  # the digest of the weights evaluated (module docstring)
    inference: dict[str, Any] | None = None  # the settings generation ran under (module docstring)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": self.method,
            "checkpoint": self.checkpoint,
            "accuracy": float(self.accuracy),
            "ci95": [float(self.ci95[0]), float(self.ci95[1])],
            "mean_generated_tokens": float(self.mean_generated_tokens),
            "latency_ms_per_problem": float(self.latency_ms_per_problem),
            "throughput_problems_per_s": float(self.throughput_problems_per_s),
        }
        if self.truncated is not None:
            d["truncated"] = int(self.truncated)
        if self.test_set is not None:
            d["test_set"] = dict(self.test_set)
        if self.weights_sha256 is not None:
            d["weights_sha256"] = self.weights_sha256
        if self.inference is not None:
            d["inference"] = dict(self.inference)
        if self.seed is not None:
            d["seed"] = int(self.seed)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    def problem(self) -> str | None:
        """The first value that cannot go into results.json, as ``"key: what is wrong"``; None when the row fits."""
        if not isinstance(self.method, str) or not self.method:
            return f"method: must be a non-empty string, got {self.method!r}"
        if not isinstance(self.checkpoint, str):
            return f"checkpoint: must be a string, got {self.checkpoint!r}"
        if not _is_number(self.accuracy) or not 0.0 <= self.accuracy <= 1.0:
            return f"accuracy: must be a number in [0, 1] (a fraction), got {self.accuracy!r}"
        ci = self.ci95
        if (not isinstance(ci, (tuple, list)) or len(ci) != 2 or not all(_is_number(c) and 0.0 <= c <= 1.0 for c in ci)
                or ci[0] > ci[1]):
            return f"ci95: must be a list [lo, hi] with 0 <= lo <= hi <= 1, got {ci!r}"
        for key in _NONNEG_KEYS:
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                return f"{key}: must be a finite number >= 0, got {value!r}"
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            return f"seed: must be an integer or None, got {self.seed!r}"
        if not isinstance(self.extra, dict):
            return f"extra: must be an object (a dict), got {type(self.extra).__name__}"
        if self.truncated is not None and not _is_count(self.truncated):
            return f"truncated: must be an integer >= 0 or None, got {self.truncated!r}"
        if self.test_set is not None and _test_set_problem(self.test_set):
            return f"test_set: {_test_set_problem(self.test_set)}"
        if self.weights_sha256 is not None and (not isinstance(self.weights_sha256, str)
                                                or len(self.weights_sha256) != 64):
            return f"weights_sha256: must be a sha256 hex digest, got {self.weights_sha256!r}"
        if self.inference is not None and not isinstance(self.inference, dict):
            return f"inference: must be an object (a dict), got {type(self.inference).__name__}"
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultRow:
        """The row of a results.json entry (the shape :meth:`to_dict` writes); raises ValueError ``"key: what is
        wrong"`` for a missing or unknown key or a value :meth:`problem` refuses."""
        missing = [k for k in _ROW_KEYS if k not in d]
        if missing:
            raise ValueError(f"{missing[0]}: missing key")
        unknown = sorted(set(d) - set(_ROW_KEYS) - set(_OPTIONAL_ROW_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (allowed: {', '.join(_ROW_KEYS + _OPTIONAL_ROW_KEYS)})")
        row = cls(**d)
        problem = row.problem()
        if problem:
            raise ValueError(problem)
        return replace(row, accuracy=float(row.accuracy), ci95=(float(row.ci95[0]), float(row.ci95[1])),
                       **{k: float(getattr(row, k)) for k in _NONNEG_KEYS}, extra=dict(row.extra),
                       test_set=None if row.test_set is None else dict(row.test_set),
                       inference=None if row.inference is None else dict(row.inference))


# a row's keys: the fields of ResultRow, those without a default required
_ROW_KEYS = tuple(f.name for f in fields(ResultRow) if f.default is MISSING and f.default_factory is MISSING)
_OPTIONAL_ROW_KEYS = tuple(f.name for f in fields(ResultRow) if f.name not in _ROW_KEYS)


# ----------------------------------------------------------------------------------------------- checks
def _check_row(row: ResultRow, where: str) -> None:
    """Raise LoriError naming ``where.key`` for a value that cannot go into results.json."""
    problem = row.problem()
    if problem:
        raise LoriError(f"{where}.{problem}")


def _test_set_problem(ts: Any) -> str | None:
    if not isinstance(ts, dict):
        return f"must be an object, got {ts!r}"
    missing = [k for k in TEST_SET_KEYS if k not in ts]
    if missing:
        return f"missing key {missing[0]!r} (needs {', '.join(TEST_SET_KEYS)})"
    if not _is_count(ts["n"]):
        return f"n must be an integer >= 0, got {ts['n']!r}"
    for k in ("task", "split", "source", "sha256"):
        if not isinstance(ts[k], str):
            return f"{k} must be a string, got {ts[k]!r}"
    return None


def row_mismatch(row: ResultRow, weights_sha256: str, inference: dict[str, Any]) -> str | None:
    """Why ``row`` does not describe a checkpoint whose weights have ``weights_sha256`` and which generates with
    ``inference`` (its own settings, no override), or None when it does."""
    if row.weights_sha256 is None:
        return "records no digest of its weights (evaluated by an older lori)"
    if row.weights_sha256 != weights_sha256:
        return ("scored other weights than the checkpoint's now (the run was retrained or the files changed since "
                "the evaluation)")
    used = {k: v for k, v in (row.inference or {}).items() if k != "overrides"}
    diff = [f"{k} {used.get(k)!r} vs {v!r}" for k, v in inference.items() if used.get(k) != v]
    if row.inference is None or diff or row.inference.get("overrides"):
        said = ", ".join(diff) or " ".join((row.inference or {}).get("overrides") or []) or "not recorded"
        return f"was generated under other inference settings than the checkpoint's own ({said})"
    return None


# ----------------------------------------------------------------------------------------------- one test set
def _label(row: ResultRow) -> str:
    seed = "" if row.seed is None else f", seed {row.seed}"
    return f"{row.checkpoint} ({row.method}{seed})"


def test_set_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """What differs between two test-set identities (``"n 8 vs 16, ..."``), or None when they are the same set."""
    diffs = [k for k in _TEST_SET_MATCH if a.get(k) != b.get(k)]
    if not diffs:
        return None
    if a.get("source") != b.get("source"):
        diffs.append("source")
    short = lambda k, v: f"{v[:12]}..." if k == "sha256" and isinstance(v, str) else repr(v)  # noqa: E731
    return ", ".join(f"{'problems sha256' if k == 'sha256' else k} {short(k, a.get(k))} vs {short(k, b.get(k))}"
                     for k in diffs)


def check_one_test_set(rows: list[ResultRow], task: str | None = None, split: str | None = None,
                       n: int | None = None) -> None:
    """Refuse (one-line LoriError naming both rows and what differs) rows evaluated on different test sets, a row
    without a test-set identity beside rows with one, and rows whose test set is not ``task``/``split``/``n``."""
    known = [r for r in rows if r.test_set is not None]
    if not known:
        return
    first = known[0]
    unknown = next((r for r in rows if r.test_set is None), None)
    if unknown is not None:
        raise LoriError(f"cannot put {_label(unknown)} and {_label(first)} in one table: the first has no record of "
                        "its test set (evaluated by an older lori); evaluate it again")
    for r in known[1:]:
        diff = test_set_difference(first.test_set, r.test_set)
        if diff:
            raise LoriError(f"cannot put {_label(first)} and {_label(r)} in one table: they were evaluated on "
                            f"different test sets ({diff}); evaluate both on the same task, split and problems")
    want = {"task": task, "split": split, "n": n}
    bad = [k for k, v in want.items() if v is not None and first.test_set[k] != v]
    if bad:
        raise LoriError(f"{_label(first)} was evaluated on {', '.join(f'{k} {first.test_set[k]!r}' for k in bad)}, "
                        f"not the table's {', '.join(f'{k} {want[k]!r}' for k in bad)}")


# ----------------------------------------------------------------------------------------------- writing
def write_results(out_dir, task: str, split: str, n: int, rows: list[ResultRow],
                  aggregate: bool = False, appendix: str = "") -> tuple[Path, Path]:
    """Write ``out_dir/results.json`` and ``out_dir/results.md`` atomically; return both paths.

    With ``aggregate``, results.md also gets :func:`aggregate_table` (mean over the seeds of each method) after
    the per-row table; results.json is the same either way (one row per method and seed). ``appendix`` (Markdown)
    ends results.md.
    Raises LoriError (naming ``results[i].key``) for a row that does not fit the shape, before
    anything is written.
    """
    if not _is_count(n):
        raise LoriError(f"n: must be an integer >= 0, got {n!r}")
    for i, row in enumerate(rows):
        _check_row(row, f"results[{i}]")
    check_one_test_set(rows, task, split, n)
    try:
        payload_text = json.dumps(
            {"task": task, "split": split, "n": n, "results": [r.to_dict() for r in rows]},
            indent=2,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise LoriError(f"results: cannot be written as JSON ({e}); 'extra' must hold plain JSON values") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / RESULTS_JSON, out / RESULTS_MD
    md = f"# Results: {task} / {split} (n = {n})\n\n{markdown_table(rows)}\n\n" + (
        "Accuracy in % with its 95% Wilson interval; tokens = mean generated tokens per problem; "
        f"speedup = latency of {BASELINE_METHOD} / latency of the row.\n"
    ) + (TRUNCATED_NOTE if any(r.truncated for r in rows) else "")
    if aggregate:
        md += (
            f"\n## Mean over seeds\n\n{aggregate_table(rows)}\n\n"
            "Accuracy: mean over seeds in % ± the half-width of its 95% Student-t interval over seeds "
            "(n/a with one seed), then the interval clipped to [0, 100]; tokens, latency and throughput: means over "
            "seeds; "
            f"speedup = mean latency of {BASELINE_METHOD} / mean latency of the method.\n"
        )
    atomic_write_text(json_path, payload_text + "\n")
    atomic_write_text(md_path, md + appendix)
    return json_path, md_path


# ----------------------------------------------------------------------------------------------- reading
def _row_from_dict(d: Any, path: Path, where: str) -> ResultRow:
    if not isinstance(d, dict):
        raise DataError(path, None, f"{where}: must be an object, got {type(d).__name__}")
    try:
        return ResultRow.from_dict(d)
    except ValueError as e:
        raise DataError(path, None, f"{where}.{e}", "expected the shape written by lori.evaluation.results") from None


def read_results(path) -> tuple[str, str, int, list[ResultRow]]:
    """Read a ``results.json`` (or the folder holding one) -> ``(task, split, n, rows)``.

    Raises DataError naming the file and the missing or bad key (e.g. ``results[2].ci95``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise DataError(path, None, "no such results file", "run `lori evaluate` first or check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})") from e
    if not isinstance(data, dict):
        raise DataError(path, None, f"top level must be an object with keys {', '.join(_TOP_KEYS)}")
    for key in _TOP_KEYS:
        if key not in data:
            raise DataError(path, None, f"{key}: missing key", f"required top-level keys: {', '.join(_TOP_KEYS)}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise DataError(path, None, f"{unknown[0]}: unknown top-level key (allowed: {', '.join(_TOP_KEYS)})")
    for key in ("task", "split"):
        if not isinstance(data[key], str):
            raise DataError(path, None, f"{key}: must be a string, got {data[key]!r}")
    n = data["n"]
    if not _is_count(n):
        raise DataError(path, None, f"n: must be an integer >= 0, got {n!r}")
    if not isinstance(data["results"], list):
        raise DataError(path, None, f"results: must be a list, got {type(data['results']).__name__}")
    rows = [_row_from_dict(d, path, f"results[{i}]") for i, d in enumerate(data["results"])]
    return data["task"], data["split"], n, rows


# ----------------------------------------------------------------------------------------------- markdown
def _cell(text: str) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")


def unfinished(row: ResultRow) -> bool:
    """Whether the row's run ended before its final curriculum stage (``extra.final_stage_reached`` false, as
    ``lori compare`` records it): its accuracy is not the method's, and every table and plot marks it."""
    return row.extra.get("final_stage_reached") is False


def _method_cell(row: ResultRow) -> str:
    if not unfinished(row):
        return _cell(row.method)
    return _cell(f"{row.method} (unfinished: stage {row.extra.get('stage')} of {row.extra.get('stages', 0) + 1})")


# the extra columns of a row table, when some row's extra has them (lori compare's): header, cell of the extra
_EXTRA_COLUMNS = (
    ("budget (steps x batch)", "budget", lambda b: f"{b['steps']} x {b['global_batch']}"),
    ("train wall s", "wall_s", lambda s: f"{s:.0f}"),
    ("scored step", "scored_step", str),
    ("train accuracy %", "train_accuracy", lambda a: f"{100 * a:.1f}"),
    ("top answer %", "top_answer_share", lambda a: f"{100 * a:.1f}"),
)


def _fmt_pct(row: ResultRow) -> str:
    return f"{100 * row.accuracy:.1f} [{100 * row.ci95[0]:.1f}, {100 * row.ci95[1]:.1f}]"


TRUNCATED_NOTE = ("\n\\* Some generations hit `eval.max_new_tokens` without ending (column truncated: how many): "
                  "their token count is cut there, so the row's mean tokens is a lower bound; raise "
                  "eval.max_new_tokens to see them end.\n")


def _tokens_cell(tokens: float, truncated: int | None) -> str:
    return f"{tokens:.1f}" + ("\\*" if truncated else "")


def markdown_table(rows: list[ResultRow], baseline: str = BASELINE_METHOD) -> str:
    """A GitHub Markdown table of ``rows`` (no trailing newline), e.g. for results.md or the console.

    Columns: method, checkpoint, seed (only if some row has one), accuracy % [95% CI], mean generated
    tokens (1 decimal; marked ``\\*`` when some of the row's generations hit ``eval.max_new_tokens``), truncated
    (how many did; only when some row has any), latency ms/problem, throughput problems/s, the columns of
    :data:`_EXTRA_COLUMNS` some row's ``extra`` has (budget, train wall seconds, ...), and -- only when a
    ``baseline`` row exists -- speedup = baseline latency / row latency (the mean latency of the baseline rows
    when there are several, e.g. one per seed). A row whose run ended before its final curriculum stage
    (:func:`unfinished`) says so in its method cell. Pipes inside cells are escaped as ``\\|``. Rows of different test
    sets are refused (:func:`check_one_test_set`).
    """
    check_one_test_set(rows)
    with_seed = any(r.seed is not None for r in rows)
    with_cut = any(r.truncated for r in rows)
    base_lat = [r.latency_ms_per_problem for r in rows if r.method == baseline]
    base = math.fsum(base_lat) / len(base_lat) if base_lat else None
    extra = [c for c in _EXTRA_COLUMNS if any(r.extra.get(c[1]) is not None for r in rows)]
    header = ["method", "checkpoint"] + (["seed"] if with_seed else []) + [
        "accuracy % [95% CI]",
        "tokens",
        *(["truncated"] if with_cut else []),
        "latency ms",
        "problems/s",
        *(h for h, _, _ in extra),
    ]
    if base is not None:
        header.append(f"speedup vs {baseline}")
    align = ["---", "---"] + (["---:"] if with_seed else []) + ["---:"] * (len(header) - 2 - with_seed)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        cells = [_method_cell(r), _cell(r.checkpoint)]
        if with_seed:
            cells.append("" if r.seed is None else str(r.seed))
        cells += [
            _fmt_pct(r),
            _tokens_cell(r.mean_generated_tokens, r.truncated),
            *([("" if r.truncated is None else str(r.truncated))] if with_cut else []),
            f"{r.latency_ms_per_problem:.1f}",
            f"{r.throughput_problems_per_s:.2f}",
            *("" if r.extra.get(key) is None else show(r.extra[key]) for _, key, show in extra),
        ]
        if base is not None:
            cells.append(f"{base / r.latency_ms_per_problem:.2f}x" if r.latency_ms_per_problem > 0 else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- over seeds
@dataclass
class Aggregate:
    """One method's rows (one per seed) summarised: means, and the 95% t-interval of the mean accuracy."""

    method: str  # the group's name: the method, or what aggregate_rows' key gave
    seeds: list[int | None]
    accuracy: float  # mean over seeds, a fraction
    ci95: tuple[float, float]  # Student-t interval of the mean over seeds (NaN with one seed)
    mean_generated_tokens: float
    latency_ms_per_problem: float
    throughput_problems_per_s: float
    truncated: int | None = None  # summed over the seeds (None when no row recorded it)
    unfinished: int = 0  # seeds whose run ended before its final curriculum stage


def aggregate_rows(rows: list[ResultRow], key: Callable[[ResultRow], str] = lambda r: r.method) -> list[Aggregate]:
    """Group ``rows`` by ``key`` (the method; in order of first appearance) and average over their seeds
    (:func:`lori.evaluation.metrics.mean_ci` for accuracy, plain means for the rest)."""
    check_one_test_set(rows)
    groups: dict[str, list[ResultRow]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for method, rs in groups.items():
        mean, lo, hi = mean_ci([r.accuracy for r in rs])
        out.append(Aggregate(
            method=method, seeds=[r.seed for r in rs], accuracy=mean, ci95=(lo, hi),
            mean_generated_tokens=math.fsum(r.mean_generated_tokens for r in rs) / len(rs),
            latency_ms_per_problem=math.fsum(r.latency_ms_per_problem for r in rs) / len(rs),
            throughput_problems_per_s=math.fsum(r.throughput_problems_per_s for r in rs) / len(rs),
            truncated=None if all(r.truncated is None for r in rs) else sum(r.truncated or 0 for r in rs),
            unfinished=sum(unfinished(r) for r in rs),
        ))
    return out


def aggregate_table(rows: list[ResultRow], baseline: str = BASELINE_METHOD) -> str:
    """A Markdown table of :func:`aggregate_rows` (no trailing newline): method, seeds, accuracy % as
    ``mean ± half-width [lo, hi]`` of the 95% t-interval over seeds (``± n/a`` with one seed), mean tokens,
    latency, throughput, and -- when a ``baseline`` method is present -- speedup = its mean latency / the
    method's mean latency. Tokens are marked and a truncated column (summed over seeds) added as in
    :func:`markdown_table`."""
    aggs = aggregate_rows(rows)
    base = next((a.latency_ms_per_problem for a in aggs if a.method == baseline), None)
    with_cut = any(a.truncated for a in aggs)
    header = ["method", "seeds", "accuracy % (mean ± 95% t-CI)", "tokens", *(["truncated"] if with_cut else []),
              "latency ms", "problems/s"]
    if base is not None:
        header.append(f"speedup vs {baseline}")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    for a in aggs:
        acc = 100 * a.accuracy
        if math.isnan(a.ci95[0]):
            acc_cell = f"{acc:.1f} ± n/a"
        else:
            lo, hi = 100 * a.ci95[0], 100 * a.ci95[1]
            # ± the t half-width; the bracket clipped to [0, 100], the range of an accuracy
            acc_cell = f"{acc:.1f} ± {(hi - lo) / 2:.1f} [{max(0.0, lo):.1f}, {min(100.0, hi):.1f}]"
        name = a.method + (f" (unfinished in {a.unfinished} of {len(a.seeds)} seeds)" if a.unfinished else "")
        cells = [_cell(name), str(len(a.seeds)), acc_cell, _tokens_cell(a.mean_generated_tokens, a.truncated),
                 *([("" if a.truncated is None else str(a.truncated))] if with_cut else []),
                 f"{a.latency_ms_per_problem:.1f}", f"{a.throughput_problems_per_s:.2f}"]
        if base is not None:
            cells.append(f"{base / a.latency_ms_per_problem:.2f}x" if a.latency_ms_per_problem > 0 else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["Aggregate", "BASELINE_METHOD", "RESULTS_JSON", "RESULTS_MD", "ResultRow", "TEST_SET_KEYS", "aggregate_rows",
           "aggregate_table", "check_one_test_set", "markdown_table", "read_results", "row_mismatch",
           "test_set_difference", "unfinished", "write_results"]
