"""Rows and matrices over seeds: each cell the mean and sd of the seeds' values, and a difference to the
baseline row marked only where mtl/significance.py finds it beyond the noise in every seed pair. Pure: the
runner and the read-back from MLflow build the same tables with it."""

from __future__ import annotations

from collections.abc import Sequence

from mtl.regimes.report import Matrix, Row, baseline
from mtl.significance import mark, mean_sd


def over_seeds(runs: Sequence[Row]) -> Row:
    """One regime's row over its seeds' rows: a column only where every seed has it."""
    columns = sorted({c for r in runs for c in r.scores})
    scores, sd = {}, {}
    for c in columns:
        values = [r.scores[c] for r in runs if c in r.scores]
        if len(values) == len(runs):
            scores[c], sd[c] = mean_sd(values)
    first = runs[0]
    return Row(first.regime, first.stages, round(sum(r.steps for r in runs) / len(runs)),
               round(sum(r.tokens for r in runs) / len(runs)), scores, set().union(*(r.zero_shot for r in runs)),
               runs=sorted(runs, key=lambda r: (r.seed is None, r.seed or 0)), sd=sd, reused=dict(first.reused))


def mark_differences(rows: Sequence[Row]) -> None:
    """Set each row's marks against the baseline row: pairs are the runs of the same seed."""
    base = baseline(rows)
    if base is None:
        return
    by_seed = {r.seed: r for r in base.runs}
    for row in rows:
        if row is base:
            continue
        row.marks = {}
        for column in row.scores:
            if column not in base.scores:
                continue
            pairs = [(r.scores[column], by_seed[r.seed].scores[column], r.replicates.get(column, []),
                      by_seed[r.seed].replicates.get(column, [])) for r in row.runs
                     if r.seed in by_seed and column in by_seed[r.seed].scores]
            if len(pairs) == len(row.runs) and (found := mark(pairs)):
                row.marks[column] = found


def table_over_seeds(per_seed: dict[str, list[Row]]) -> list[Row]:
    """regime → its seeds' rows, as the rows of the table (in the given order), marked."""
    rows = [over_seeds(runs) for runs in per_seed.values() if runs]
    mark_differences(rows)
    return rows


def matrix_over_seeds(matrices: Sequence[Matrix], seeds: Sequence[int]) -> Matrix:
    """One transfer matrix from each seed's: mean and sd per cell (None where a seed lacks the cell)."""
    first = matrices[0]
    means: list[list[float | None]] = []
    sds: list[list[float | None]] = []
    for i, _ in enumerate(first.sources):
        mrow, srow = [], []
        for j, _ in enumerate(first.targets):
            values = [m.values[i][j] for m in matrices]
            if any(v is None for v in values):
                mrow.append(None)
                srow.append(None)
            else:
                mean, sd = mean_sd([v for v in values if v is not None])
                mrow.append(mean)
                srow.append(sd)
        means.append(mrow)
        sds.append(srow)
    return Matrix(first.task, first.metric, list(first.sources), [list(t) for t in first.targets], means,
                  [list(r) for r in first.in_language], round(sum(m.steps for m in matrices) / len(matrices)),
                  round(sum(m.tokens for m in matrices) / len(matrices)), seeds=list(seeds), sd=sds,
                  per_seed=[m.values for m in matrices])
