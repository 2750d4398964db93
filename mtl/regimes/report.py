"""A regime's results and their tables: what a finished stage leaves, a regime's row of a comparison (or
its source × target matrix), and those as text, markdown and CSV. Pure: no training, no MLflow."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtl.config import Experiment
from mtl.regimes.planning import ZERO_SHOT_MARK, Stage
from mtl.tracking import _metric_key
from sampling.table import format_table


@dataclass
class StageResult:
    """What a finished stage leaves in its stage.json."""

    key: str
    steps: int
    tokens: int
    metrics: dict[str, float]
    primary: dict[str, str]  # task → its family's primary metric
    checkpoint: str  # relative to the stage's folder: the weights later stages start from
    drawn: dict[str, int]  # task/dataset → batches drawn (the sampler's realised counts)
    digest: str = ""
    mlflow_run_id: str | None = None


@dataclass
class Row:
    """One regime in the comparison: its compute and its scores (task/dataset/metric → value)."""

    regime: str
    stages: int
    steps: int
    tokens: int
    scores: dict[str, float]
    zero_shot: set[str] = field(default_factory=set)


@dataclass
class Matrix:
    """A transfer matrix: sources × eval datasets of one task, one metric."""

    task: str
    metric: str
    sources: list[str]  # "en", "en+fr"
    targets: list[list[str]]  # [dataset, language]
    values: list[list[float | None]]
    in_language: list[list[bool]]
    steps: int
    tokens: int


@dataclass
class RegimeOutcome:
    rows: list[Row]
    stages: dict[str, StageResult]
    text: str  # the comparison table (or the transfer matrix) as printed
    matrix: Matrix | None = None
    output_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run holding the others (the comparison's, or the regime's)


def regime_row(regime: str, stages: Sequence[Stage], results: dict[str, StageResult]) -> Row:
    scores: dict[str, float] = {}
    zero: set[str] = set()
    for s in stages:
        res = results[s.key]
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            value = res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{ds}/{metric}")
            if value is None:
                continue
            key = _metric_key(f"{task}/{ds}/{metric}")
            scores[key] = value
            if role == "zero-shot":
                zero.add(key)
    return Row(regime, len(stages), sum(results[s.key].steps for s in stages),
               sum(results[s.key].tokens for s in stages), scores, zero)


def transfer_matrix(exp: Experiment, stages: Sequence[Stage], results: dict[str, StageResult]) -> Matrix:
    task = next(iter(stages[0].train))
    langs = {ds.name: ds.language for ds in exp.tasks[task].datasets}
    targets = [d for d in stages[0].evaluate.get(task, {})]
    metric = results[stages[0].key].primary.get(task, "")
    values, in_lang = [], []
    for s in stages:
        res = results[s.key]
        row, marks = [], []
        for d in targets:
            role = s.evaluate[task][d]
            row.append(res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{d}/{metric}"))
            marks.append(role == "eval")
        values.append(row)
        in_lang.append(marks)
    return Matrix(task, metric, ["+".join(s.languages) for s in stages], [[d, langs[d]] for d in targets], values,
                  in_lang, sum(results[s.key].steps for s in stages), sum(results[s.key].tokens for s in stages))




def _cell(value: float | None, zero: bool = False) -> str:
    return "—" if value is None else f"{value:.2f}{ZERO_SHOT_MARK if zero else ''}"


def _columns(rows: Sequence[Row]) -> list[str]:
    return sorted({k for r in rows for k in r.scores})


def _mean(row: Row, columns: Sequence[str]) -> float | None:
    if not columns or any(c not in row.scores for c in columns):
        return None
    return sum(row.scores[c] for c in columns) / len(columns)


def _table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    columns = _columns(rows)
    header = ["regime", "stages", "steps", "tokens", *columns, "mean"]
    body = [[r.regime, str(r.stages), f"{r.steps:,}", f"{r.tokens:,}",
             *(_cell(r.scores.get(c), c in r.zero_shot) for c in columns), _cell(_mean(r, columns))] for r in rows]
    return header, body


def _legend(rows: Sequence[Row]) -> str:
    notes = ["steps and tokens: every stage of the regime together (tokens: training tokens, not padding)",
             "mean: over every column, for a regime that has them all"]
    if any(r.zero_shot for r in rows):
        notes.append(f"{ZERO_SHOT_MARK} zero-shot: evaluated in a language its stage did not train on")
    return "\n".join(notes)


def table_text(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    return format_table(header, body, left=1) + "\n" + _legend(rows)


def table_markdown(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n\n" + _legend(rows).replace("\n", "  \n") + "\n"


def table_csv(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["regime", "stages", "steps", "tokens", *columns, "mean", "zero_shot"])
    for r in rows:
        mean = _mean(r, columns)
        w.writerow([r.regime, r.stages, r.steps, r.tokens, *(r.scores.get(c, "") for c in columns),
                    "" if mean is None else mean, " ".join(sorted(r.zero_shot))])
    return out.getvalue()


def _matrix_cells(m: Matrix, mark: str) -> tuple[list[str], list[list[str]]]:
    header = ["source \\ target", *(f"{d} ({lang})" for d, lang in m.targets)]
    body = [[src, *(_cell(v) + (mark if inl and v is not None else "") for v, inl in zip(vals, marks))]
            for src, vals, marks in zip(m.sources, m.values, m.in_language)]
    return header, body


def matrix_text(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    return (f"Transfer matrix: {m.task}, {m.metric} (rows: the languages trained on; columns: eval datasets; "
            f"{len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} tokens)\n"
            + format_table(header, body, left=1) + "\n◆ in-language: the source trains on the target's language; "
            "every other cell is zero-shot")


def matrix_markdown(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return (f"Transfer matrix: {m.task}, {m.metric}; {len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} "
            "tokens.\n\n" + "\n".join(lines) + "\n\n◆ in-language; every other cell is zero-shot.\n")


def matrix_csv(m: Matrix) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["source", *(d for d, _ in m.targets)])
    w.writerow(["language", *(lang for _, lang in m.targets)])
    for src, vals in zip(m.sources, m.values):
        w.writerow([src, *("" if v is None else v for v in vals)])
    return out.getvalue()


def stages_text(stages: Sequence[Stage], results: dict[str, StageResult]) -> str:
    rows = []
    for s in stages:
        res = results[s.key]
        scores = []
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            value = res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{ds}/{metric}")
            scores.append(f"{task}/{ds} {metric}={_cell(value, role == 'zero-shot')}")
        drawn = ", ".join(f"{g}:{n}" for g, n in res.drawn.items())
        rows.append((s.key, s.init_from or "pretrained", f"{res.steps:,}", f"{res.tokens:,}", drawn,
                     "  ".join(scores) or "—"))
    return format_table(("stage", "starts from", "steps", "tokens", "batches drawn", "scores"), rows, left=2)


