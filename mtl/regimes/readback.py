"""The comparison table read back from the tracking store alone (`mtl compare`): finished regime runs'
rows and transfer matrices, as the runner logged them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtl.core.errors import ConfigError
from mtl.core.metric_key import SCORE, MetricKey
from mtl.regimes.base import regime_names, shape_of
from mtl.regimes.report import Matrix, Row, matrix_text, table_text
from mtl.regimes.spread import matrix_over_seeds, table_over_seeds


def _row_from_run(run: Any, client: Any = None) -> Row:
    """A regime run's row; with `client`, of one seed's run: its seed and bootstrap replicates too."""
    m, tags = run.data.metrics, run.data.tags
    zero = {z for z in tags.get("mtl.zero_shot", "").split(",") if z}
    reused = dict(x.split("=", 1) for x in tags.get("mtl.reused", "").split(",") if "=" in x)
    row = Row(tags.get("mtl.regime", run.info.run_name), int(m.get("regime/stages", 0)),
              int(m.get("regime/steps", 0)), int(m.get("regime/tokens", 0)),
              _scores(m), zero, reused=reused)
    if client is not None and "mtl.seed" in tags:
        row.seed = int(tags["mtl.seed"])
        row.replicates = _artifact_json(client, run.info.run_id, "regime/bootstrap.json") or {}
    return row


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    """A regime run's scores by comparison column, read off its score/<task>/<dataset>/<metric> metrics."""
    keys = {k: MetricKey.parse(k) for k in metrics if k.startswith(f"{SCORE}/")}
    return {str(key.with_prefix(None)): metrics[k] for k, key in keys.items()}


def _artifact_json(client: Any, run_id: str, path: str) -> Any:
    """A JSON artifact of a run; None where the run has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text(encoding="utf-8"))


def _matrix_from_run(client: Any, run_id: str) -> Matrix:
    return Matrix(**_artifact_json(client, run_id, "transfer/transfer.json"))


def recorded_table(target: str, uri: str, experiment: str | None = None, order: Sequence[str] = ()) -> str:
    """The comparison table of finished regime runs, from the tracking store alone.

    `target` is a run id (a compare run: its regimes; a regime run: its row, or a transfer run: its
    matrix), or, with `experiment` set, ignored: the latest finished run of each regime in that MLflow
    experiment, in `order` (an experiment file's compare list) or the usual order.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    if experiment is None:
        try:
            run = client.get_run(target)
        except MlflowException:
            found = client.get_experiment_by_name(target)
            if found is None:
                raise ConfigError(f"{target}: neither a run id nor an MLflow experiment in {uri}") from None
            return recorded_table(target, uri, experiment=target, order=order)
        role = run.data.tags.get("mtl.role")
        if role == "compare" and "mtl.seeds" in run.data.tags:
            return _seeded_table(client, run)
        if role == "regime" and shape_of(run.data.tags.get("mtl.regime", "")) == "matrix":
            return matrix_text(_matrix_from_run(client, target))
        if role == "regime":
            return f"Regime {run.data.tags['mtl.regime']} (run {target}):\n{table_text([_row_from_run(run)])}"
        if role != "compare":
            raise ConfigError(f"run {target} is neither a regime nor a compare run: give two or more run ids to "
                              "compare plain runs")
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{target}' and tags.`mtl.role` = 'regime' "
                          "and attributes.status = 'FINISHED'")
        rows = {c.data.tags["mtl.regime"]: _row_from_run(c) for c in children}
        listed = run.data.tags.get("mtl.compare", "").split(",")
        missing = [r for r in listed if r and r not in rows]
        text = f"Comparison of regimes (run {target}):\n" + table_text(_ordered(rows, listed))
        return text + (f"\nnot finished: {', '.join(missing)}" if missing else "")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} in {uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`mtl.role` = 'regime' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    rows: dict[str, Row] = {}
    for r in runs:
        name = r.data.tags.get("mtl.regime")
        if "mtl.seed" in r.data.tags:  # one seed of a run over seeds: the latest such run's table, whole
            if not rows:
                return _seeded_table(client, client.get_run(r.data.tags["mlflow.parentRunId"]))
            continue
        if name and shape_of(name) != "matrix" and name not in rows:
            rows[name] = _row_from_run(r)
    if not rows:
        raise ConfigError(f"MLflow experiment {experiment!r} has no finished regime run")
    return f"Regimes of experiment {experiment} (the latest finished run of each):\n" + \
        table_text(_ordered(rows, order))


def _seeded_table(client: Any, run: Any) -> str:
    """A run over seeds: each (regime, seed) run's row (or matrix), aggregated as the runner did."""
    target, listed = run.info.run_id, [r for r in run.data.tags.get("mtl.compare", "").split(",") if r]
    seeds = [int(s) for s in run.data.tags["mtl.seeds"].split(",") if s]
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{target}' and tags.`mtl.role` = 'regime' "
                      "and attributes.status = 'FINISHED'")
    if len(listed) == 1 and shape_of(listed[0]) == "matrix":
        by_seed = {int(c.data.tags["mtl.seed"]): c.info.run_id for c in children if "mtl.seed" in c.data.tags}
        done = [s for s in seeds if s in by_seed]
        if not done:
            raise ConfigError(f"run {target}: no seed of {listed[0]} has finished")
        text = matrix_text(matrix_over_seeds([_matrix_from_run(client, by_seed[s]) for s in done], done))
        return text + (f"\nnot finished: seeds {', '.join(str(s) for s in seeds if s not in by_seed)}"
                       if len(done) < len(seeds) else "")
    per_regime: dict[str, list[Row]] = {}
    for child in children:
        row = _row_from_run(child, client)
        per_regime.setdefault(row.regime, []).append(row)
    rows = table_over_seeds({n: per_regime[n] for n in _ordered_names(per_regime, listed)})
    missing = [f"{n}/seed-{s}" for n in listed for s in seeds
               if s not in {r.seed for r in per_regime.get(n, [])}]
    text = f"Comparison of regimes (run {target}):\n" + table_text(rows)
    return text + (f"\nnot finished: {', '.join(missing)}" if missing else "")


def _ordered_names(rows: dict[str, Any], order: Sequence[str]) -> list[str]:
    return [n for n in order if n in rows] + [n for n in regime_names() if n in rows and n not in order]


def _ordered(rows: dict[str, Row], order: Sequence[str]) -> list[Row]:
    first = [rows[n] for n in order if n in rows]
    return first + [rows[n] for n in regime_names() if n in rows and n not in order]
