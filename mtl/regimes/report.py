"""A regime's results and their tables: what a finished stage leaves, a regime's row of a comparison (or
its source × target matrix), and those as text, markdown and CSV. Pure: no training, no MLflow."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtl.core.config import Experiment
from mtl.core.metric_key import MetricKey
from mtl.core.table import format_table
from mtl.regimes.planning import ZERO_SHOT_MARK, Stage
from mtl.significance import ALPHA, DOWN, UP, mean_sd


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
    # under `seeds:`: eval metric → the paired bootstrap's replicates of it (mtl/significance.py)
    replicates: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Row:
    """One regime in the comparison: its compute and its scores (task/dataset/metric → value)."""

    regime: str
    stages: int
    steps: int
    tokens: int
    scores: dict[str, float]
    zero_shot: set[str] = field(default_factory=set)
    seed: int | None = None  # the seed of a row of one seed's run
    replicates: dict[str, list[float]] = field(default_factory=dict)  # one seed: column → bootstrap replicates
    runs: list[Row] = field(default_factory=list)  # over seeds: the per-seed rows (scores are then their mean)
    sd: dict[str, float] = field(default_factory=dict)  # over seeds: column → standard deviation
    marks: dict[str, str] = field(default_factory=dict)  # column → ▲ / ▼: differs from the baseline beyond noise
    reused: dict[str, str] = field(default_factory=dict)  # its stage → the stage trained for it (trained once)


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
    seeds: list[int] = field(default_factory=list)  # over seeds: values are means, `sd` their spread
    sd: list[list[float | None]] | None = None
    per_seed: list[list[list[float | None]]] = field(default_factory=list)  # seed → source → target


@dataclass
class RegimeOutcome:
    rows: list[Row]
    stages: dict[str, StageResult]
    text: str  # the comparison table (or the transfer matrix) as printed
    matrix: Matrix | None = None
    output_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run holding the others (the comparison's, or the regime's)


def regime_row(regime: str, stages: Sequence[Stage], results: dict[str, StageResult],
               shared: dict[str, str] | None = None) -> Row:
    """One regime's row (of one seed): each stage's reported scores; steps and tokens are the regime's whole
    cost, a stage trained once for two regimes counted in each (`reused` says which)."""
    scores: dict[str, float] = {}
    replicates: dict[str, list[float]] = {}
    zero: set[str] = set()
    for s in stages:
        res = results[s.key]
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            if metric is None:  # its family reports no primary metric: nothing to score
                continue
            name = str(MetricKey.for_role(role, task, ds, metric))
            value = res.metrics.get(name)
            if value is None:
                continue
            key = str(MetricKey(None, task, ds, metric).safe())  # the column, as MLflow keeps it
            scores[key] = value
            if name in res.replicates:
                replicates[key] = res.replicates[name]
            if role == "zero-shot":
                zero.add(key)
    reused = {s.key: (shared or {})[s.key] for s in stages if s.key in (shared or {})}
    return Row(regime, len(stages), sum(results[s.key].steps for s in stages),
               sum(results[s.key].tokens for s in stages), scores, zero, seed=stages[0].seed if stages else None,
               replicates=replicates, reused=reused)


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
            row.append(res.metrics.get(str(MetricKey.for_role(role, task, d, metric))))
            marks.append(role == "eval")
        values.append(row)
        in_lang.append(marks)
    return Matrix(task, metric, ["+".join(s.languages) for s in stages], [[d, langs[d]] for d in targets], values,
                  in_lang, sum(results[s.key].steps for s in stages), sum(results[s.key].tokens for s in stages))




def _cell(value: float | None, zero: bool = False, sd: float | None = None, mark: str = "") -> str:
    if value is None:
        return "—"
    spread = f" ± {sd:.2f}" if sd is not None else ""
    return f"{value:.2f}{spread}{ZERO_SHOT_MARK if zero else ''}{mark}"


def _columns(rows: Sequence[Row]) -> list[str]:
    return sorted({k for r in rows for k in r.scores})


def _mean(row: Row, columns: Sequence[str]) -> float | None:
    if not columns or any(c not in row.scores for c in columns):
        return None
    return sum(row.scores[c] for c in columns) / len(columns)


def _mean_cell(row: Row, columns: Sequence[str]) -> str:
    """The row's mean over the columns; over seeds the mean ± sd of each seed's mean."""
    if not row.runs:
        return _cell(_mean(row, columns))
    means = [_mean(r, columns) for r in row.runs]
    if any(m is None for m in means):
        return _cell(None)
    mean, sd = mean_sd([m for m in means if m is not None])
    return _cell(mean, sd=sd)


def _table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    columns = _columns(rows)
    header = ["regime", "stages", "steps", "tokens", *columns, "mean"]
    body = []
    for r in rows:
        cells = [_cell(r.scores.get(c), c in r.zero_shot, r.sd.get(c) if r.runs else None, r.marks.get(c, ""))
                 for c in columns]
        stages = f"{r.stages} ({len(r.reused)} reused)" if r.reused else str(r.stages)
        body.append([r.regime, stages, f"{r.steps:,}", f"{r.tokens:,}", *cells, _mean_cell(r, columns)])
    return header, body


def _legend(rows: Sequence[Row]) -> str:
    notes = ["steps and tokens: every stage of the regime together (tokens: training tokens, not padding)",
             "mean: over every column, for a regime that has them all"]
    seeded = [r for r in rows if r.runs]
    if seeded:
        seeds = sorted({x.seed for r in seeded for x in r.runs if x.seed is not None})
        notes.append(f"cells: mean ± sd over seeds {', '.join(map(str, seeds))} (each seed's values in the CSV)")
        base = baseline(rows)
        if base is not None and len(rows) > 1:
            notes.append(f"{UP} / {DOWN}: above / below {base.regime} beyond the noise: in every seed pair a paired "
                         f"bootstrap over the evaluation examples gives p < {ALPHA:g}, the same way (unmarked: not "
                         "shown to differ)")
    if any(r.zero_shot for r in rows):
        notes.append(f"{ZERO_SHOT_MARK} zero-shot: evaluated in a language its stage did not train on")
    reused = sorted({_unseeded(f"{k} = {v}") for r in rows for k, v in r.reused.items()})
    if reused:
        notes.append("reused: stages that train the same weights were trained once (" + "; ".join(reused) + ")")
    return "\n".join(notes)


def _unseeded(text: str) -> str:
    """A note on stages without their seed folders: the same for every seed."""
    return re.sub(r"seed-\d+/", "", text)


def baseline(rows: Sequence[Row]) -> Row | None:
    """The row the others are tested against: `single` where it is compared, else the first."""
    return next((r for r in rows if r.regime == "single"), rows[0] if rows else None)


def table_text(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    return format_table(header, body, left=1) + "\n" + _legend(rows)


def table_markdown(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n\n" + _legend(rows).replace("\n", "  \n") + "\n"


def table_csv(rows: Sequence[Row]) -> str:
    """One line per regime; over seeds one per (regime, seed), then its mean, sd and marks lines."""
    columns = _columns(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    seeded = any(r.runs for r in rows)
    w.writerow(["regime", *(["seed"] if seeded else []), "stages", "steps", "tokens", *columns, "mean", "zero_shot"])
    for r in rows:
        lines = [(str(x.seed), x) for x in r.runs] + [("mean", r)] if seeded else [("", r)]
        for label, x in lines:
            mean = _mean_of_runs(r, columns) if x is r and r.runs else _mean(x, columns)
            w.writerow([r.regime, *([label] if seeded else []), x.stages, x.steps, x.tokens,
                        *(x.scores.get(c, "") for c in columns), "" if mean is None else mean,
                        " ".join(sorted(r.zero_shot))])
        if seeded:
            w.writerow([r.regime, "sd", "", "", "", *(r.sd.get(c, "") for c in columns), "", ""])
            w.writerow([r.regime, "marked", "", "", "", *(r.marks.get(c, "") for c in columns), "", ""])
    return out.getvalue()


def _mean_of_runs(row: Row, columns: Sequence[str]) -> float | None:
    means = [_mean(r, columns) for r in row.runs]
    return None if any(m is None for m in means) else mean_sd([m for m in means if m is not None])[0]


def _matrix_cells(m: Matrix, mark: str) -> tuple[list[str], list[list[str]]]:
    header = ["source \\ target", *(f"{d} ({lang})" for d, lang in m.targets)]
    sds = m.sd or [[None] * len(vals) for vals in m.values]
    body = [[src, *(_cell(v, sd=sd) + (mark if inl and v is not None else "") for v, sd, inl in zip(vals, sdv, marks))]
            for src, vals, sdv, marks in zip(m.sources, m.values, sds, m.in_language)]
    return header, body


def _seeds_note(m: Matrix) -> str:
    return f"; mean ± sd over seeds {', '.join(map(str, m.seeds))}" if m.seeds else ""


def matrix_text(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    return (f"Transfer matrix: {m.task}, {m.metric} (rows: the languages trained on; columns: eval datasets; "
            f"{len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} tokens{_seeds_note(m)})\n"
            + format_table(header, body, left=1) + "\n◆ in-language: the source trains on the target's language; "
            "every other cell is zero-shot")


def matrix_markdown(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return (f"Transfer matrix: {m.task}, {m.metric}; {len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} "
            f"tokens{_seeds_note(m)}.\n\n" + "\n".join(lines) + "\n\n◆ in-language; every other cell is zero-shot.\n")


def matrix_csv(m: Matrix) -> str:
    """The matrix; over seeds a `seed` column, each seed's rows, then the mean and sd rows."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    lead = ["seed"] if m.seeds else []
    w.writerow([*lead, "source", *(d for d, _ in m.targets)])
    w.writerow([*([""] if m.seeds else []), "language", *(lang for _, lang in m.targets)])
    blocks = [(str(seed), vals) for seed, vals in zip(m.seeds, m.per_seed)] if m.seeds else []
    blocks += [("mean" if m.seeds else "", m.values)] + ([("sd", m.sd)] if m.seeds and m.sd else [])
    for label, values in blocks:
        for src, vals in zip(m.sources, values):
            w.writerow([*([label] if m.seeds else []), src, *("" if v is None else v for v in vals)])
    return out.getvalue()


def stages_text(stages: Sequence[Stage], results: dict[str, StageResult]) -> str:
    rows = []
    for s in stages:
        res = results[s.key]
        scores = []
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            value = res.metrics.get(str(MetricKey.for_role(role, task, ds, metric))) if metric else None
            scores.append(f"{task}/{ds} {metric}={_cell(value, role == 'zero-shot')}")
        drawn = ", ".join(f"{g}:{n}" for g, n in res.drawn.items())
        rows.append((s.key, s.init_from or "pretrained", f"{res.steps:,}", f"{res.tokens:,}", drawn,
                     "  ".join(scores) or "—"))
    return format_table(("stage", "starts from", "steps", "tokens", "batches drawn", "scores"), rows, left=2)


