"""MLflow tracking that never stops training: a store that cannot be reached at the start turns
tracking off with a warning; a failure during the run skips that item with a warning.

Metrics are the exception: a server that goes down mid-run and comes back loses none of them.
Metrics that cannot be sent are kept (with their step and time) and sent when the server answers
again; whatever is still unsent when the run ends is written to `unsent-metrics.jsonl` beside the
run, and `mtl sync-metrics FILE` sends it later.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtl.config import TrackingConfig, flatten

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns"
RETRY_FIRST_S = 2.0  # first wait before sending buffered metrics again; doubles up to RETRY_MAX_S
RETRY_MAX_S = 60.0
RECORD_FILE = "records/run.json"
TAG_PREFIX = "mtl."
REPRODUCES_TAG = "mtl.reproduces"


def default_uri(root: Path | None = None) -> str:
    root = (root or Path.cwd()) / DEFAULT_STORE
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def _reachable(uri: str, timeout: float = 3.0) -> bool:
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return True
    except Exception:
        return False


class Tracker:
    """Thin, failure-tolerant wrapper over one MLflow run (and its nested stage runs)."""

    def __init__(self, cfg: TrackingConfig, experiment_name: str, active: bool = True):
        self.cfg = cfg
        self.experiment_name = cfg.experiment or experiment_name
        self.enabled = bool(cfg.enabled and active)
        self.run_id: str | None = None
        self._runs: list[Any] = []
        self._mlflow: Any = None
        self.pending: list[dict[str, Any]] = []  # metrics not yet accepted by the store, oldest first
        self._retry_at = 0.0
        self._retry_wait = RETRY_FIRST_S
        self.unsent_file: Path | None = None  # where unsent metrics go when the run ends
        self._client: Any = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ plumbing
    def _fail(self, what: str, err: BaseException) -> None:
        if not self._runs:  # no run to log into: tracking stays off for this run
            log.warning("MLflow %s failed (%s: %s); training continues without tracking", what, type(err).__name__,
                        err)
            self.enabled = False
            return
        # A run exists: the store may only be down for a while. This item is lost (said once per kind);
        # metrics keep being kept and sent when the store is back.
        if what not in self._warned:
            self._warned.add(what)
            log.warning("MLflow %s failed (%s: %s); skipped, tracking goes on", what, type(err).__name__, err)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as err:
            self._fail(what, err)
            return None

    # ------------------------------------------------------------------ runs
    def start(
        self, run_name: str | None = None, resume_run_id: str | None = None, tags: dict | None = None
    ) -> str | None:
        if not self.enabled:
            return None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        uri = self.cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
        if not _reachable(uri):
            log.warning("MLflow tracking server %s cannot be reached; training continues without tracking", uri)
            self.enabled = False
            return None

        def _start() -> str:
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(uri)
            if uri.startswith("sqlite:///"):
                db = Path(uri[len("sqlite:///") :])
                db.parent.mkdir(parents=True, exist_ok=True)
                if mlflow.get_experiment_by_name(self.experiment_name) is None:
                    artifacts = (db.parent / "artifacts").resolve().as_uri()
                    mlflow.create_experiment(self.experiment_name, artifact_location=artifacts)
            mlflow.set_experiment(self.experiment_name)
            nested = mlflow.active_run() is not None
            run = mlflow.start_run(
                run_id=resume_run_id,
                run_name=None if resume_run_id else (run_name or self.cfg.run_name),
                nested=nested,
                tags={**self.cfg.tags, **(tags or {})},
            )
            self._runs.append(run)
            return run.info.run_id

        self.run_id = self._call("start", _start)
        if self.run_id:
            log.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment_name, uri)
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.pending:
            self._retry_at = 0.0
            self._flush()
        if self.pending:
            self._save_unsent()
        while self._runs and self.enabled:
            self._runs.pop()
            self._call("end", lambda: self._mlflow.end_run(status=status))

    # ------------------------------------------------------------------ logging
    def log_config(self, config: dict[str, Any]) -> None:
        flat = {k: ("" if v is None else str(v)[:6000]) for k, v in flatten(config).items()}
        items = sorted(flat.items())
        for i in range(0, len(items), 100):
            chunk = dict(items[i : i + 100])
            self._call("log_params", lambda chunk=chunk: self._mlflow.log_params(chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send now, or keep them (a store that does not answer) and send them once it is back."""
        if not metrics or not self.enabled or not self._runs:
            return
        run = self._mlflow.active_run()
        run_id = run.info.run_id if run is not None else self._runs[-1].info.run_id
        stamp = int(time.time() * 1000)
        self.pending.extend(
            {"run_id": run_id, "key": _metric_key(k), "value": float(v), "timestamp": stamp, "step": step or 0}
            for k, v in metrics.items()
        )
        self._flush()

    def _flush(self) -> None:
        if not self.pending or time.monotonic() < self._retry_at:
            return
        try:
            if self._client is None:
                self._client = self._mlflow.MlflowClient()
            send_metrics(self._client, self.pending)
        except Exception as err:
            if self._retry_wait == RETRY_FIRST_S:
                log.warning("MLflow store not answering (%s: %s); keeping metrics to send when it is back",
                            type(err).__name__, str(err)[:200])
            self._retry_at = time.monotonic() + self._retry_wait
            self._retry_wait = min(self._retry_wait * 2, RETRY_MAX_S)
            return
        if self._retry_wait != RETRY_FIRST_S:
            log.warning("MLflow store answers again; sent %d kept metric values", len(self.pending))
        self.pending.clear()
        self._retry_wait = RETRY_FIRST_S

    def _save_unsent(self) -> None:
        target = self.unsent_file or Path.cwd() / "unsent-metrics.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as fh:
            for m in self.pending:
                fh.write(json.dumps(m) + "\n")
        log.warning("MLflow store still not answering: %d metric values written to %s; send them with "
                    "`mtl sync-metrics %s` when it is back", len(self.pending), target, target)
        self.pending.clear()

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()}))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", lambda: self._mlflow.log_text(text, artifact_file))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._call("log_dict", lambda: self._mlflow.log_dict(data, artifact_file))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def log_file_as(self, write: Callable[[Path], None], artifact_file: str) -> None:
        """Let `write` produce a file in a temporary folder, then upload it under artifact_file."""
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            write(target)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(target, None if parent in ("", ".") else parent)

    # ------------------------------------------------------------------ run records
    # A run as a complete record: data inputs, environment, plots, model (see mtl/records.py).

    def log_record(self, record: dict[str, Any]) -> None:
        """Log a run record (mtl.records.run_record): environment tags, one MLflow input per split, the JSON."""
        if not self.enabled:
            return
        env = {f"{TAG_PREFIX}{k}": str(v)[:5000] for k, v in record.get("environment", {}).items()}
        self._call("set_tags", lambda: self._mlflow.set_tags(env))
        self._call("log_input", lambda: _log_inputs(self._mlflow, record.get("datasets", [])))
        counts = {}
        for d in record.get("datasets", []):
            for what in ("read", "skipped", "repaired"):
                counts[f"data/{d['task']}/{d['dataset']}/{d['role']}/{what}"] = d[what]
        self.log_metrics(counts, step=0)
        self.log_dict(record, RECORD_FILE)

    def log_figure(self, draw: Callable[[Path], Any], artifact_file: str) -> None:
        """Draw a figure into a file and log it; a plotting failure only warns."""
        if not self.enabled:
            return
        try:
            self.log_file_as(draw, artifact_file)
        except Exception as err:  # a missing font or backend must not fail a finished run
            log.warning("could not draw %s (%s: %s)", artifact_file, type(err).__name__, err)

    def log_model(self, exp: Any, checkpoint: Path, examples: dict[str, Any] | None = None) -> None:
        """Log the checkpoint as one pyfunc model per task (and the folder itself if tracking.log_checkpoint)."""
        if not self.enabled:
            return
        if self.cfg.log_model:
            from mtl.pyfunc import log_task_models

            uris = self._call("log_model", lambda: log_task_models(exp, Path(checkpoint), examples))
            if uris:
                self.log_dict(uris, "records/models.json")
        if self.cfg.log_checkpoint:
            self._call(
                "log_checkpoint",
                lambda: self._mlflow.log_artifacts(str(checkpoint), f"checkpoint/{Path(checkpoint).name}"),
            )

    def history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        """The metric history of this run for every metric whose name starts with one of `prefixes`."""
        if not self.enabled or not self.run_id:
            return {}

        def fetch() -> dict[str, list[tuple[int, float]]]:
            client = self._mlflow.MlflowClient()
            names = [k for k in client.get_run(self.run_id).data.metrics if k.startswith(prefixes)]
            return {k: [(m.step, m.value) for m in client.get_metric_history(self.run_id, k)] for k in names}

        return self._call("metric history", fetch) or {}


def send_metrics(client: Any, records: list[dict[str, Any]]) -> None:
    """Log metric records ({run_id, key, value, timestamp, step}) in batches, keeping their times and steps."""
    from mlflow.entities import Metric

    by_run: dict[str, list[Any]] = {}
    for r in records:
        by_run.setdefault(r["run_id"], []).append(Metric(r["key"], r["value"], r["timestamp"], r["step"]))
    for run_id, metrics in by_run.items():
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=metrics[i : i + 1000])


def sync_unsent(path: Path, uri: str | None = None) -> int:
    """Send the metrics a run could not send (see Tracker); returns how many were sent."""
    import mlflow

    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    client = mlflow.MlflowClient(tracking_uri=uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri())
    send_metrics(client, records)
    return len(records)


def _metric_key(name: str) -> str:
    # MLflow allows alphanumerics, _ - . space : and /; language codes like zh-TW are fine.
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def _log_inputs(mlflow: Any, datasets: list[dict[str, Any]]) -> None:
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    for d in datasets:
        if d.get("hub"):
            source: Any = HuggingFaceDatasetSource(
                d["hub"], config_name=d.get("hub_config"), revision=d.get("hub_revision")
            )
        else:
            source = local(d["source"])
        # MLflow keeps at most 36 characters of a digest; the full SHA-256 travels as a tag.
        dataset = MetaDataset(source, name=f"{d['task']}/{d['dataset']}/{d['role']}", digest=d["digest"][:32])
        tags = {
            "mtl.sha256": d["digest"],
            "mtl.task": d["task"],
            "mtl.language": d["language"],
            "mtl.examples_read": str(d["read"]),
            "mtl.examples_skipped": str(d["skipped"]),
            "mtl.examples_repaired": str(d["repaired"]),
        }
        mlflow.log_input(dataset, context=d["context"], tags=tags)
