"""The comparison table read back from the tracking store alone (`mtl compare`): finished regime runs'
rows and transfer matrices, as the runner logged them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtl.config import ConfigError
from mtl.regimes.base import regime_names, shape_of
from mtl.regimes.report import Matrix, Row, matrix_text, table_text


def _row_from_run(run: Any) -> Row:
    m, tags = run.data.metrics, run.data.tags
    zero = {z for z in tags.get("mtl.zero_shot", "").split(",") if z}
    return Row(tags.get("mtl.regime", run.info.run_name), int(m.get("regime/stages", 0)),
               int(m.get("regime/steps", 0)), int(m.get("regime/tokens", 0)),
               {k[len("score/"):]: v for k, v in m.items() if k.startswith("score/")}, zero)


def _matrix_from_run(client: Any, run_id: str) -> Matrix:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "transfer/transfer.json", tmp)
        return Matrix(**json.loads(Path(local).read_text(encoding="utf-8")))


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
        if name and shape_of(name) != "matrix" and name not in rows:
            rows[name] = _row_from_run(r)
    if not rows:
        raise ConfigError(f"MLflow experiment {experiment!r} has no finished regime run")
    return f"Regimes of experiment {experiment} (the latest finished run of each):\n" + \
        table_text(_ordered(rows, order))


def _ordered(rows: dict[str, Row], order: Sequence[str]) -> list[Row]:
    first = [rows[n] for n in order if n in rows]
    return first + [rows[n] for n in regime_names() if n in rows and n not in order]
