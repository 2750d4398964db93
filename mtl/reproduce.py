"""Re-running and comparing finished runs from what MLflow holds about them, and nothing else.

`mtl rerun RUN_ID` rebuilds the experiment from the run's logged config, recomputes the data
digests and the environment, says what differs, and trains again; `mtl compare` puts the
metrics and fingerprints of several runs side by side.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mtl import records
from mtl.core.config import Experiment
from mtl.core.errors import ConfigError
from mtl.core.table import format_table
from mtl.experiment import validate
from mtl.runtime import Runtime
from mtl.tracking import RECORD_FILE, REPRODUCES_TAG, default_uri

log = logging.getLogger(__name__)

CONFIG_FILE = "config/experiment.yaml"
# Keys that describe the launch of the moment rather than what the run computes.
_NOT_PREDICTABLE = {"device"}


@dataclass
class RecordedRun:
    """What MLflow holds about one finished run."""

    run_id: str
    name: str
    tracking_uri: str
    experiment_yaml: str | None
    record: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def fetch(run_id: str, uri: str | None = None) -> RecordedRun:
    """Read a run's config, record, metrics and tags from the tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"run {run_id}: not found in the tracking store {uri} ({err.message})") from None
    texts: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (CONFIG_FILE, RECORD_FILE):
            try:
                local = client.download_artifacts(run_id, name, tmp)
                texts[name] = Path(local).read_text(encoding="utf-8")
            except (MlflowException, OSError):
                texts[name] = None
    record = json.loads(texts[RECORD_FILE]) if texts[RECORD_FILE] else {}
    return RecordedRun(
        run_id=run_id,
        name=run.info.run_name or run_id,
        tracking_uri=uri,
        experiment_yaml=texts[CONFIG_FILE],
        record=record,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def rebuild(recorded: RecordedRun, overrides: Sequence[str] = ()) -> Experiment:
    """The experiment of a recorded run, with --set overrides; relative data paths resolve where they did."""
    if recorded.experiment_yaml is None:
        raise ConfigError(f"run {recorded.run_id}: no {CONFIG_FILE} artifact; it was not trained by mtl")
    data = yaml.safe_load(recorded.experiment_yaml)
    base = recorded.record.get("base_dir") or "."
    exp = validate(data, source=f"run {recorded.run_id}:{CONFIG_FILE}", overrides=list(overrides), base_dir=Path(base))
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    tracking = {"tags": {**exp.tracking.tags, REPRODUCES_TAG: recorded.run_id}}
    if "tracking.uri" not in keys:
        tracking["uri"] = recorded.tracking_uri
    if "tracking.run_name" not in keys:
        tracking["run_name"] = f"{recorded.name}-rerun"
    train = exp.train
    if "train.output_dir" not in keys:
        train = replace(train, output_dir=f"{exp.train.output_dir}-rerun-{recorded.run_id[:8]}")
    # `--nproc` is a launch flag and not part of the logged config: take the recorded world size
    # (a rerun starts its processes on this one node).
    world = int(recorded.record.get("environment", {}).get("world_size", 1) or 1)
    launch = exp.launch
    if "launch.nproc_per_node" not in keys and world > exp.launch.nproc_per_node:
        launch = replace(launch, nproc_per_node=world)
    return replace(exp, tracking=replace(exp.tracking, **tracking), train=train, launch=launch)


def current_record(exp: Experiment, before: dict[str, Any]) -> dict[str, Any]:
    """The record a new run of `exp` would log, as far as it can be known before training."""
    datasets = []
    for task_name, task in exp.tasks.items():
        for ds in task.datasets:
            for role in ("train", "dev", "test"):
                if ds.split(role) is None:
                    continue
                fp = records.split_fingerprint(ds, role)
                datasets.append({"task": task_name, "dataset": ds.name, "role": role, **fp})
    read = {(d["task"], d["dataset"], d["role"]) for d in before.get("datasets", [])}
    if read:  # compare the splits the recorded run read (and none it did not)
        datasets = [d for d in datasets if (d["task"], d["dataset"], d["role"]) in read]
    env = records.environment(exp, Runtime.from_environment(), world_size=exp.launch.nproc_per_node)
    return {"environment": env, "datasets": datasets}


def differences(recorded: RecordedRun, exp: Experiment) -> list[str]:
    """What differs between the recorded run and a run of `exp` now: data digests, versions, commit, machine."""
    if not recorded.record:
        return [f"run {recorded.run_id} has no {RECORD_FILE}: data digests and versions cannot be checked"]
    before = recorded.record
    now = current_record(exp, before)
    env_before = {k: v for k, v in before.get("environment", {}).items() if k not in _NOT_PREDICTABLE}
    env_now = {k: v for k, v in now["environment"].items() if k not in _NOT_PREDICTABLE}
    return records.differences({**before, "environment": env_before}, {**now, "environment": env_now})


def metric_differences(a: dict[str, float], b: dict[str, float], prefixes: tuple[str, ...] = ("eval/", "zeroshot/")):
    """(name, a, b) for every final evaluation metric that is not bit-identical between two runs."""
    names = sorted(k for k in a.keys() | b.keys() if k.startswith(prefixes))
    return [(k, a.get(k), b.get(k)) for k in names if a.get(k) != b.get(k)]


def latest_rerun_metrics(recorded: RecordedRun) -> dict[str, float] | None:
    """Final metrics of the newest run that reproduces `recorded` (for reruns trained in child processes)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=recorded.tracking_uri)
    found = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{REPRODUCES_TAG}` = '{recorded.run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return dict(found[0].data.metrics) if found else None


# --------------------------------------------------------------------------- compare


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(header, rows, left=len(header))


def compare_text(runs: Sequence[RecordedRun], all_rows: bool = False) -> str:
    """Metrics, data digests and environment of runs side by side (differing rows only, unless all_rows)."""
    ids = [r.run_id[:8] for r in runs]
    out = ["runs: " + ", ".join(f"{r.run_id[:8]} = {r.run_id} ({r.name})" for r in runs)]

    names = sorted(set().union(*(r.metrics for r in runs)))
    rows = []
    for name in names:
        values = [r.metrics.get(name) for r in runs]
        if not all_rows and len(set(values)) == 1:
            continue
        delta = []
        if len(runs) == 2 and all(isinstance(v, float) for v in values):
            delta = [_fmt(values[1] - values[0])]
        rows.append([name, *(_fmt(v) for v in values), *delta])
    header = ["metric", *ids, *(["B − A"] if len(runs) == 2 else [])]
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    out.append(f"\n# metrics ({'all' if all_rows else 'differing'}: {len(rows)} of {len(names)})")
    out.append(_table(header, rows) if rows else "(all identical)")

    def digests(r: RecordedRun) -> dict[str, str]:
        return {f"{d['task']}/{d['dataset']}/{d['role']}": d["digest"][:12] for d in r.record.get("datasets", [])}

    per_run = [digests(r) for r in runs]
    keys = sorted(set().union(*per_run))
    rows = [[k, *(d.get(k, "—") for d in per_run)] for k in keys]
    rows = [r for r in rows if all_rows or len(set(r[1:])) > 1]
    out.append(f"\n# data (sha256, first 12 hex digits): {len(rows)} of {len(keys)} shown")
    out.append(_table(["dataset split", *ids], rows) if rows else "(same data)")

    envs = [r.record.get("environment", {}) for r in runs]
    keys = sorted(set().union(*envs))
    rows = [[k, *(str(e.get(k, "—")) for e in envs)] for k in keys]
    rows = [r for r in rows if all_rows or len(set(r[1:])) > 1]
    out.append(f"\n# code and environment: {len(rows)} of {len(keys)} shown")
    out.append(_table(["key", *ids], rows) if rows else "(same code, versions and machine)")
    missing = [r.run_id for r in runs if not r.record]
    if missing:
        out.append(f"\nno {RECORD_FILE} in: {', '.join(missing)} (data and environment unknown)")
    return "\n".join(out)
