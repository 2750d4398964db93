"""What a person sees while a run goes: mtl's own lines and tables, third-party chatter only in the log file,
and a closing summary that says what ran, how fast, what it scored and where to look at it.

Third-party libraries (MLflow, transformers, DeepSpeed, datasets) log at INFO and draw bars of their own; on
the console they are cut to warnings, while `<output_dir>/mtl.log` keeps every INFO line of every library.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OWN = ("mtl", "tasks", "sampling", "launch", "__main__")  # loggers whose INFO lines belong on the console
LOG_FILE = "mtl.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UI_PORT = 5000  # `make ui`'s default


class _OwnOrWarning(logging.Filter):
    """The console shows mtl's INFO lines and every library's warnings, not the libraries' INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in OWN


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (a test's capture, a redirect), never a stale one."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _replace(kind: type, handler: logging.Handler | None) -> None:
    """One mtl handler of each kind on the root logger: a CLI call made twice in one process (tests, notebooks)
    does not print each line twice, nor write to an earlier run's log file."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mtl", False) and isinstance(h, kind)]:
        root.removeHandler(old)
        old.close()
    if handler is not None:
        handler._mtl = True  # type: ignore[attr-defined]
        root.addHandler(handler)


def setup(level: str = "INFO") -> None:
    """Console logging for a CLI command; call before MLflow, transformers or DeepSpeed are imported."""
    # MLflow then logs through the root logger (so the filter and the log file see it) and draws no
    # download bars when it reads a logged model back to validate it.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_OwnOrWarning())
    _replace(_Stderr, handler)
    logging.getLogger().setLevel(level)
    for noisy in ("urllib3", "filelock", "alembic", "httpx", "git", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # not even worth the log file


def log_to(folder: Path) -> Path | None:
    """Also write every log line (libraries' INFO included) to `folder/mtl.log`, appending across resumes."""
    path = (folder / LOG_FILE).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        _replace(logging.FileHandler, None)
        return None  # an unwritable folder is reported by the run's own checks, with the reason
    handler.setFormatter(logging.Formatter(FORMAT))
    _replace(logging.FileHandler, handler)
    return path


@contextmanager
def no_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model loads (the hub's download bars stay)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_hook(previous)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def run_address(run_id: str | None) -> tuple[str, str] | None:
    """(tracking URI, where to open the run in the MLflow UI) of a run, or None when it cannot be told."""
    if not run_id:
        return None
    try:
        import mlflow

        uri = mlflow.get_tracking_uri()
        experiment = mlflow.get_run(run_id).info.experiment_id
    except Exception:
        return None
    path = f"#/experiments/{experiment}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return uri, f"{uri.rstrip('/')}/{path}"
    return uri, f"http://127.0.0.1:{UI_PORT}/{path}  (after `mlflow ui --backend-store-uri {uri} --port {UI_PORT}`)"


def closing_summary(name: str, outcome: Any, wall_seconds: float, run_id: str | None, label: str = "run") -> str:
    """The last lines of a run: wall time, steps, tokens/s, the last and best scores, checkpoint, MLflow run."""
    stats = getattr(outcome, "train_stats", {}) or {}
    lines = [f"Done: {label} {name!r} in {duration(wall_seconds)}"
             + (f", {outcome.steps} steps" if getattr(outcome, "steps", None) else "")
             + (f", {stats['train/tokens_per_second']:,.0f} tokens/s" if "train/tokens_per_second" in stats else "")]
    means = {k: v for k, v in (getattr(outcome, "metrics", None) or {}).items() if "/mean_" in k}
    if means:
        lines.append("  last:  " + "  ".join(f"{k.removeprefix('eval/')}={v:.2f}" for k, v in sorted(means.items())))
    if getattr(outcome, "best_step", None) is not None and outcome.best_value is not None:
        metric = getattr(outcome, "best_metric", None) or "score"
        lines.append(f"  best:  step {outcome.best_step}, {metric}={outcome.best_value:.2f}  {outcome.best_checkpoint}")
    if getattr(outcome, "checkpoint", None):
        lines.append(f"  checkpoint: {outcome.checkpoint}")
    address = run_address(run_id)
    if address is not None:
        lines.append(f"  MLflow run {run_id} at {address[0]}")
        lines.append(f"  open it: {address[1]}")
    elif run_id:
        lines.append(f"  MLflow run {run_id}")
    return "\n".join(lines)


def regime_summary(name: str, label: str, outcome: Any, wall_seconds: float) -> str:
    """The last lines of a regime or comparison: its table is printed just above; here what ran, where it is."""
    stages = getattr(outcome, "stages", {}) or {}
    steps = sum(getattr(r, "steps", 0) or 0 for r in stages.values())
    lines = [f"Done: {label} of {name!r} in {duration(wall_seconds)}, {len(stages)} stages, {steps} steps"]
    if getattr(outcome, "output_dir", None):
        lines.append(f"  stage folders under {outcome.output_dir}")
    run_id = getattr(outcome, "run_id", None)
    address = run_address(run_id)
    if address is not None:
        lines.append(f"  MLflow run {run_id} at {address[0]} (each stage a nested run under it)")
        lines.append(f"  open it: {address[1]}")
    return "\n".join(lines)
