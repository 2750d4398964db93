"""What a run could not send to its tracking store, and sending it later.

Metrics go through `MetricSender`, a queue drained by a daemon thread, so that a store that does not
answer costs the training loop nothing: records that fail stay queued in order (with their step and
time) and are tried again with a growing wait. What is still unsent when a run ends (metrics, local
copies of artifacts, a model's checkpoint, the run's end) is appended to `unsent-metrics.jsonl`;
`sync_unsent` (`mtl sync-metrics FILE`) sends it once the store is back.

File format: one JSON object a line. A metric is `{run_id, key, value, timestamp, step}` (the format
of earlier versions); other records carry a `kind`:
- `artifact`: `{run_id, file, artifact_path}`, `file` relative to the file's folder (or absolute);
- `model`: `{run_id, checkpoint, model, folder, examples}`: log the checkpoint as pyfunc models (with
  `examples`, task → a few input rows, for their signatures) and/or as a folder;
- `end`: `{run_id, status, end_time}`: the run ended then, with that status (milliseconds since 1970).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mtl.core.errors import ConfigError

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit of metrics per log_batch
KEPT_DIR = "unsent-artifacts"  # local copies of artifacts, beside the unsent file


def now_ms() -> int:
    return int(time.time() * 1000)


def send_metrics(client: Any, records: list[dict[str, Any]]) -> None:
    """Log metric records ({run_id, key, value, timestamp, step}) in batches, keeping their times and steps."""
    from mlflow.entities import Metric

    by_run: dict[str, list[Any]] = {}
    for r in records:
        by_run.setdefault(r["run_id"], []).append(Metric(r["key"], r["value"], r["timestamp"], r["step"]))
    for run_id, metrics in by_run.items():
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + BATCH])


class MetricSender:
    """A queue of metric records and the daemon thread that sends them, oldest first.

    `put` never waits. Sends are at least `pace` seconds apart (fewer, larger batches: a server on the
    training machine then takes CPU from training less often). A failed send leaves the records queued
    and waits `retry_first` seconds, doubling up to `retry_max`, before the next try; `flush` and `close`
    skip either wait and wait (bounded) for one fresh try. SQL stores drop exact duplicates, so a record
    both sent late and written out is harmless.
    """

    def __init__(self, client: Any, retry_first: float, retry_max: float, pace: float = 0.0):
        self._client = client
        self._pace = pace
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._wait = retry_first
        self._retry_at = 0.0
        self._cv = threading.Condition()
        self._queue: list[dict[str, Any]] = []
        self._hurry = False  # skip the retry wait once (flush, close)
        self._closed = False
        self._begun = 0  # tries begun
        self._failed = 0  # number of the latest try that failed
        self.down = False  # the latest try failed (or the Tracker saw the store fail)
        self._thread = threading.Thread(target=self._run, name="mtl-metric-sender", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> list[dict[str, Any]]:
        with self._cv:
            return list(self._queue)

    def put(self, records: list[dict[str, Any]]) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("metric sender is closed")
            self._queue.extend(records)
            self._cv.notify_all()

    def mark_down(self) -> None:
        """The store failed another call: say so until a send succeeds again."""
        with self._cv:
            self.down = True

    def flush(self, timeout: float) -> bool:
        """Send what is queued now; True once the queue is empty, False when a fresh try failed or time ran out."""
        with self._cv:
            self._hurry = True
            self._cv.notify_all()
            first = self._begun + 1  # a try begun after this call
            self._cv.wait_for(lambda: not self._queue or self._failed >= first, timeout)
            return not self._queue

    def close(self, timeout: float) -> list[dict[str, Any]]:
        """Flush (bounded by `timeout`; none at 0), stop the thread, and return what is unsent, oldest first."""
        if timeout > 0:
            self.flush(timeout)
        with self._cv:
            self._closed = True
            left, self._queue = self._queue, []
            self._cv.notify_all()
        self._thread.join(timeout=1.0)  # a send still in flight is not waited for (its records are in `left`)
        return left

    def _due(self) -> bool:
        full = len(self._queue) >= BATCH and not self.down
        return bool(self._queue) and (self._hurry or full or time.monotonic() >= self._retry_at)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._due():
                    self._cv.wait(max(0.0, self._retry_at - time.monotonic()) if self._queue else None)
                if self._closed:
                    return
                run_id = self._queue[0]["run_id"]
                batch = []
                for r in self._queue[:BATCH]:
                    if r["run_id"] != run_id:
                        break
                    batch.append(r)
                self._begun += 1
                attempt = self._begun
                self._hurry = False
            try:
                send_metrics(self._client, batch)
                err = None
            except Exception as e:  # any failure: keep the records and try again later
                err = e
            with self._cv:
                if self._closed:  # close() has taken the queue
                    return
                if err is None:
                    del self._queue[: len(batch)]
                    if self.down or self._wait != self._retry_first:
                        log.warning("MLflow store answers again; sending the %d kept metric values",
                                    len(self._queue) + len(batch))
                    self.down = False
                    self._wait, self._retry_at = self._retry_first, time.monotonic() + self._pace
                else:
                    if not self.down and self._wait == self._retry_first:
                        log.warning("MLflow store not answering (%s: %s); keeping metrics to send when it is back",
                                    type(err).__name__, str(err)[:200])
                    self.down = True
                    self._failed = attempt
                    self._retry_at = time.monotonic() + self._wait
                    self._wait = min(self._wait * 2, self._retry_max)
                self._cv.notify_all()


# --------------------------------------------------------------------------- the unsent file


def write_unsent(target: Path, records: list[dict[str, Any]]) -> None:
    """Append records (metrics, kept artifacts, run ends) to the unsent file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def read_unsent(path: Path) -> list[dict[str, Any]]:
    """The records of an unsent file; a missing file or a bad line is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "no such file"
        raise ConfigError(f"{path}: {why}; sync-metrics takes the unsent-metrics.jsonl a run wrote beside its "
                          "checkpoints while its tracking server did not answer")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{n}: not a JSON record ({err.msg})") from None
        if not isinstance(record, dict) or "run_id" not in record:
            raise ConfigError(f"{path}:{n}: not a record of an unsent-metrics file (no run_id)")
        records.append(record)
    return records


@dataclass
class Synced:
    """What a sync sent."""

    metrics: int = 0
    artifacts: int = 0
    models: int = 0
    ended: list[tuple[str, str, int]] = field(default_factory=list)  # (run_id, status, end_time)
    missing: list[str] = field(default_factory=list)  # kept files or checkpoints no longer on disk


def sync_unsent(path: Path, uri: str) -> Synced:
    """Send an unsent file: metrics, then kept artifacts and models, then each run's recorded end.

    On a failure part-way the file is rewritten with what is still to send, and the error is raised.
    """
    import mlflow

    path = Path(path)
    records = read_unsent(path)
    client = mlflow.MlflowClient(tracking_uri=uri)
    done = Synced()
    todo = list(records)
    try:
        metrics = [r for r in todo if "kind" not in r]
        send_metrics(client, metrics)
        done.metrics = len(metrics)
        todo = [r for r in todo if "kind" in r]
        ends = {r["run_id"]: r for r in todo if r["kind"] == "end"}
        for r in [r for r in todo if r["kind"] in ("artifact", "model")]:
            _upload(client, uri, path.parent, r, ends.get(r["run_id"]), done)
            todo.remove(r)
        for r in list(todo):
            if r["kind"] == "end":
                client.set_terminated(r["run_id"], r["status"], int(r["end_time"]))
                done.ended.append((r["run_id"], r["status"], int(r["end_time"])))
            todo.remove(r)
    except BaseException:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in todo), encoding="utf-8")
        os.replace(tmp, path)
        raise
    return done


def _local(folder: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else folder / p


def _upload(client: Any, uri: str, folder: Path, r: dict[str, Any], end: dict[str, Any] | None,
            done: Synced) -> None:
    local = _local(folder, r["file"] if r["kind"] == "artifact" else r["checkpoint"])
    if not local.exists():
        log.warning("%s is no longer there; not uploaded to run %s", local, r["run_id"])
        done.missing.append(str(local))
        return
    if r["kind"] == "artifact":
        client.log_artifact(r["run_id"], str(local), r.get("artifact_path") or None)
        done.artifacts += 1
        return
    if r.get("folder"):
        client.log_artifacts(r["run_id"], str(local), f"checkpoint/{local.name}")
        done.artifacts += 1
    if r.get("model"):
        _log_models(client, uri, r["run_id"], local, end, r.get("examples") or {})
        done.models += 1


def example_rows(exp: Any, splits: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """A few input rows per table task (as `pyfunc.input_example` takes them), kept to log a model later."""
    from mtl.pyfunc import input_fields

    rows = {}
    for task, split in (splits or {}).items():
        fields = input_fields(exp, task) if task in exp.tasks else None
        if fields is not None and split is not None:
            rows[task] = [{f: getattr(ex, f, None) for f in fields} for ex in split.examples[:3]]
    return rows


def _log_models(client: Any, uri: str, run_id: str, checkpoint: Path, end: dict[str, Any] | None,
                rows: dict[str, list[dict[str, Any]]]) -> None:
    """Log the pyfunc models of a checkpoint into a recorded run (MLflow logs models into an active run)."""
    import mlflow

    from mtl import checkpoint as ckpt
    from mtl.experiment import load_experiment
    from mtl.pyfunc import log_task_models

    exp = load_experiment(ckpt.resolve(checkpoint).experiment_yaml(), check_files=False)
    before = client.get_run(run_id).info
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            splits = {t: SimpleNamespace(examples=[SimpleNamespace(**row) for row in r]) for t, r in rows.items()}
            uris = log_task_models(exp, checkpoint, splits)
            mlflow.log_dict(uris, "records/models.json")
    finally:
        mlflow.set_tracking_uri(previous)
    # start_run/end_run marked the run FINISHED now; put back how it ended (its own end record comes later)
    if end is None and before.status != "RUNNING":
        client.set_terminated(run_id, before.status, before.end_time)
    elif end is None:
        client.update_run(run_id, status="RUNNING")
