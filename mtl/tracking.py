"""MLflow tracking that never stops training: a store that cannot be reached at the start turns
tracking off with a warning; a failure during the run skips that item with a warning.

A server that goes down mid-run and comes back loses nothing logged: metrics are sent by a background
thread (mtl/unsent.py), so training never waits on the server; those it cannot send are kept (with
their step and time) and sent when it answers again. Artifacts that cannot be uploaded are copied
beside the run and uploaded at the end if the server is back by then. Whatever is still unsent when
the run ends (metrics, the kept artifacts, the model's checkpoint, the run's end status and time) is
written to `unsent-metrics.jsonl` beside the run, and `mtl sync-metrics FILE` sends it later.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtl import unsent
from mtl.core.config import TrackingConfig, flatten
from mtl.core.metric_key import mlflow_safe
from mtl.unsent import KEPT_DIR, MetricSender, Synced, example_rows, now_ms, send_metrics, write_unsent

__all__ = ["Tracker", "default_run_name", "default_uri", "send_metrics", "sync_unsent"]

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns"
RETRY_FIRST_S = 2.0  # first wait before sending kept metrics again; doubles up to RETRY_MAX_S
RETRY_MAX_S = 60.0
FLUSH_WAIT_S = 60.0  # at most this long for a last try to send metrics when a run ends
SEND_EVERY_S = 1.0  # metrics are sent in batches at most this often
RECORD_FILE = "records/run.json"
TAG_PREFIX = "mtl."
REPRODUCES_TAG = "mtl.reproduces"


def default_uri(root: Path | None = None) -> str:
    root = (root or Path.cwd()) / DEFAULT_STORE
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def sync_unsent(path: Path, uri: str | None = None) -> Synced:
    """`mtl sync-metrics FILE`: send what a run kept, to `uri`, else MLFLOW_TRACKING_URI, else mlruns/."""
    return unsent.sync_unsent(path, uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri())


def default_run_name(name: str, *what: str) -> str:
    """A run name that says what ran and differs between runs: `<experiment>[-<what>]-<MMDD-HHMMSS>-<hex>`."""
    return "-".join([name, *what, time.strftime("%m%d-%H%M%S"), secrets.token_hex(2)])


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
        self.name = experiment_name  # what ran: the first part of a default run name
        self.experiment_name = cfg.experiment or experiment_name
        self.enabled = bool(cfg.enabled and active)
        self.run_id: str | None = None
        self._runs: list[Any] = []
        self._mlflow: Any = None
        self._uri = ""
        self._said: tuple[Any, ...] = (None, None, None)  # (outer run, role, name): for the line that names the run
        self._sender: MetricSender | None = None
        self._local: dict[str, dict[str, list[tuple[int, float]]]] = {}  # run → metric → history, as logged
        self.kept: list[dict[str, Any]] = []  # artifacts (and models) not uploaded yet, oldest first
        self._model_args: tuple[Any, Path, Any] | None = None  # the kept model's, to log it from this process
        self.unsent_file: Path | None = None  # where unsent metrics go when the run ends
        self._warned: set[str] = set()

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Metric records not yet accepted by the store, oldest first."""
        return self._sender.pending if self._sender else []

    # ------------------------------------------------------------------ plumbing
    def _fail(self, what: str, err: BaseException) -> None:
        if not self._runs:  # no run to log into: tracking stays off for this run
            log.warning("MLflow %s failed (%s: %s); training continues without tracking", what, type(err).__name__,
                        err)
            self.enabled = False
            return
        # A run exists: the store may only be down for a while. This item is lost (said once per kind);
        # metrics and artifacts are kept and sent when the store is back.
        if what not in self._warned:
            self._warned.add(what)
            log.warning("MLflow %s failed (%s: %s); skipped, tracking goes on", what, type(err).__name__, err)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        if self._down():  # a call would only wait for a store known not to answer
            self._fail(what, ConnectionError(f"{self._uri} is not answering"))
            return None
        try:
            return fn()
        except Exception as err:
            self._note_failure()
            self._fail(what, err)
            return None

    def _down(self) -> bool:
        """A tracking server known not to answer (a local store that failed is not "down": it is tried again)."""
        return self._sender is not None and self._sender.down and self._uri.startswith(("http://", "https://"))

    def _note_failure(self) -> None:
        """After a failed call: is the server down (keep things for later) or was it this item (skip it)?"""
        if self._sender is not None and not _reachable(self._uri):
            self._sender.mark_down()

    def _active_run_id(self) -> str:
        run = self._mlflow.active_run()
        return run.info.run_id if run is not None else self._runs[-1].info.run_id

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
        self._uri = uri

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
            outer = mlflow.active_run()
            nested = outer is not None
            self._said = (outer.info.run_id if outer else None, (tags or {}).get("mtl.role") or self.cfg.tags.get(
                "mtl.role"))
            run = mlflow.start_run(
                run_id=resume_run_id,
                run_name=None if resume_run_id else (run_name or self.cfg.run_name or default_run_name(self.name)),
                nested=nested,
                tags={**self.cfg.tags, **(tags or {})},
            )
            self._runs.append(run)
            self._said = (*self._said, run.info.run_name)
            if self._sender is None:
                self._sender = MetricSender(mlflow.MlflowClient(tracking_uri=uri), RETRY_FIRST_S, RETRY_MAX_S,
                                            SEND_EVERY_S)
            return run.info.run_id

        self.run_id = self._call("start", _start)
        if self.run_id:
            parent, role, name = self._said
            what = f"{role} run" if role else "run"
            inside = f", inside run {parent}" if parent else ""
            log.info("MLflow %s %s %r%s in experiment %r at %s", what, self.run_id, name, inside, self.experiment_name,
                     uri)
        return self.run_id

    def flush(self, timeout: float = FLUSH_WAIT_S) -> bool:
        """Send the kept metrics now (waiting at most `timeout`); True when none is left unsent."""
        return self._sender.flush(timeout) if self._sender else True

    def end(self, status: str = "FINISHED") -> None:
        """End the run; what the store did not take (metrics, artifacts, the end itself) goes to the unsent file."""
        end_time = now_ms()
        known_down = self._down() and not _reachable(self._uri)  # then no last try: it would only wait
        left = self._sender.close(0.0 if known_down else FLUSH_WAIT_S) if self._sender else []
        down = bool(left) or known_down
        self._sender = None
        if self.kept and self.enabled and not down:  # the store is back: upload what was kept
            down = not self._upload_kept()
        ends: list[dict[str, Any]] = []
        while self._runs and self.enabled:
            run_id = self._runs.pop().info.run_id
            try:
                if down:
                    _drop_active_run(self._mlflow)
                else:
                    self._mlflow.end_run(status=status)  # pops the active run before it calls the store
                    continue
            except Exception as err:  # the run is no longer active here; its end is kept for sync-metrics
                log.warning("MLflow end of run %s failed (%s: %s)", run_id, type(err).__name__, str(err)[:200])
            ends.append({"kind": "end", "run_id": run_id, "status": status, "end_time": end_time})
        if left or self.kept or ends:
            self._save_unsent(left, ends)

    def _upload_kept(self) -> bool:
        """Upload the kept artifacts and model (the store answers again); False if it failed again (the rest
        stay kept)."""
        from mtl.unsent import Synced, _upload

        client = self._mlflow.MlflowClient(tracking_uri=self._uri)
        folder = self._unsent_target().parent
        while self.kept:
            r = self.kept[0]
            try:
                if r["kind"] == "model" and self._model_args is not None:  # into the run still active here
                    self._send_model(*self._model_args, r)
                else:
                    _upload(client, self._uri, folder, r, None, Synced())
            except Exception as err:
                log.warning("MLflow upload of kept artifacts failed (%s: %s); they stay kept", type(err).__name__,
                            str(err)[:200])
                return False
            self.kept.pop(0)
        return True

    # ------------------------------------------------------------------ logging
    def log_config(self, config: dict[str, Any]) -> None:
        flat = {k: ("" if v is None else str(v)[:6000]) for k, v in flatten(config).items()}
        items = sorted(flat.items())
        for i in range(0, len(items), 100):
            chunk = dict(items[i : i + 100])
            self._call("log_params", lambda chunk=chunk: self._mlflow.log_params(chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue them for the sender thread and return at once; a store that does not answer gets them later."""
        if not metrics or not self.enabled or not self._runs or self._sender is None:
            return
        run_id = self._active_run_id()
        stamp = now_ms()
        records = [{"run_id": run_id, "key": mlflow_safe(k), "value": float(v), "timestamp": stamp, "step": step or 0}
                   for k, v in metrics.items()]
        local = self._local.setdefault(run_id, {})
        for r in records:
            local.setdefault(r["key"], []).append((r["step"], r["value"]))
        self._sender.put(records)

    def _unsent_target(self) -> Path:
        return self.unsent_file or Path.cwd() / "unsent-metrics.jsonl"

    def _save_unsent(self, metrics: list[dict[str, Any]], ends: list[dict[str, Any]]) -> None:
        target = self._unsent_target()
        write_unsent(target, [*metrics, *self.kept, *ends])
        log.warning("MLflow store still not answering: %d metric values, %d kept artifacts and %d run ends written "
                    "to %s; send them with `mtl sync-metrics %s` when it is back", len(metrics), len(self.kept),
                    len(ends), target, target)
        self.kept = []

    # ------------------------------------------------------------------ artifacts, kept when the store is down
    def _artifact(self, what: str, upload: Callable[[], Any], keep: Callable[[Path], None], artifact_file: str) -> None:
        """Upload now; when the store does not answer, keep a copy beside the run to upload later."""
        if not self.enabled or not self._runs:
            return
        if not self._down():
            try:
                upload()
                return
            except Exception as err:
                self._note_failure()
                if not self._down():  # the store answers: this item failed on its own
                    self._fail(what, err)
                    return
        run_id = self._active_run_id()
        root = self._unsent_target().parent
        local = root / KEPT_DIR / run_id / artifact_file
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            keep(local)
        except Exception as err:
            log.warning("could not keep %s for later (%s: %s); it is lost", artifact_file, type(err).__name__, err)
            return
        parent = str(Path(artifact_file).parent)
        self.kept.append({"kind": "artifact", "run_id": run_id, "file": str(local.relative_to(root)),
                          "artifact_path": None if parent in ("", ".") else parent})
        if what not in self._warned:
            self._warned.add(what)
            log.warning("MLflow store not answering: %s kept in %s, to upload when it is back", artifact_file,
                        root / KEPT_DIR)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()}))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._artifact("log_text", lambda: self._mlflow.log_text(text, artifact_file),
                       lambda local: local.write_text(text, encoding="utf-8"), artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        def keep(local: Path) -> None:  # as MLflow writes it
            if local.suffix in (".yml", ".yaml"):
                import yaml

                local.write_text(yaml.dump(data, indent=2, default_flow_style=False), encoding="utf-8")
            else:
                local.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")

        self._artifact("log_dict", lambda: self._mlflow.log_dict(data, artifact_file), keep, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            name = f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name
            self._artifact("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path),
                           lambda local: shutil.copy2(path, local), name)

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
        """Log the checkpoint as one pyfunc model per task (and the folder itself if tracking.log_checkpoint).

        With the store down, the checkpoint's path is kept (not a copy: it may be large) to log later."""
        if not self.enabled or not self._runs or not (self.cfg.log_model or self.cfg.log_checkpoint):
            return
        todo = {"model": self.cfg.log_model, "folder": self.cfg.log_checkpoint}
        if not self._down():
            try:
                self._send_model(exp, Path(checkpoint), examples, todo)
                return
            except Exception as err:
                self._note_failure()
                if not self._down():  # the store answers: this model failed on its own
                    self._fail("log_model", err)
                    return
        root = self._unsent_target().parent.resolve()
        path = Path(checkpoint).resolve()
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        rows = example_rows(exp, examples) if todo["model"] else {}
        self.kept.append({"kind": "model", "run_id": self._active_run_id(), "checkpoint": str(shown), **todo,
                          "examples": rows})
        self._model_args = (exp, Path(checkpoint), examples)
        log.warning("MLflow store not answering: the model of %s is to be logged when it is back", checkpoint)

    def _send_model(self, exp: Any, checkpoint: Path, examples: dict[str, Any] | None, todo: dict[str, bool]) -> None:
        """Log what `todo` still asks for into the active run; each part done is set False (raises on failure)."""
        if todo["model"]:
            from mtl.pyfunc import log_task_models

            uris = log_task_models(exp, checkpoint, examples)
            self._mlflow.log_dict(uris, "records/models.json")
            todo["model"] = False
        if todo["folder"]:
            self._mlflow.log_artifacts(str(checkpoint), f"checkpoint/{checkpoint.name}")
            todo["folder"] = False

    def history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        """The metric history of this run for every metric whose name starts with one of `prefixes`
        (from the store; with the store down, what this process logged)."""
        if not self.enabled or not self.run_id:
            return {}
        run_id = self.run_id

        def fetch() -> dict[str, list[tuple[int, float]]]:
            client = self._mlflow.MlflowClient(tracking_uri=self._uri)
            names = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefixes)]
            return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in names}

        found = self._call("metric history", fetch) if not self._down() and self.flush() else None
        if found is not None:
            return found
        return {k: list(v) for k, v in self._local.get(run_id, {}).items() if k.startswith(prefixes)}


def _drop_active_run(mlflow: Any) -> None:
    """Forget the active run without calling a store known to be down (end_run would wait on it)."""
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    if stack is None:  # another MLflow: end_run pops first, then fails on the store
        mlflow.end_run()
    elif stack.get():
        stack.get().pop()
        fluent.MLFLOW_RUN_ID.unset()


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
