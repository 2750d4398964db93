"""Evaluation: predict every eval split, score it with its family, report in-language and zero-shot apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mtl.core.metric_key import MetricKey
from mtl.core.table import format_table
from mtl.data import Split
from mtl.runtime import Runtime
from tasks.base import TaskFamily


@dataclass
class Result:
    split: Split
    metrics: dict[str, float]
    predictions: list[Any]
    shown: tuple[str, ...] | None = None  # the metrics of the summary table (the family's table_metrics); None: all

    @property
    def role(self) -> str:
        return "zero-shot" if self.split.zero_shot else "eval"

    def metric_names(self) -> dict[str, float]:
        task, dataset = self.split.task, self.split.dataset.name
        return {str(MetricKey.for_role(self.role, task, dataset, k)): v for k, v in self.metrics.items()}


@torch.no_grad()
def predict_features(
    model: torch.nn.Module,
    family: TaskFamily,
    task: str,
    features: Sequence[dict[str, Any]],
    batch_size: int,
    runtime: Runtime,
    desc: str | None = None,
) -> list[Any]:
    """Per-feature records in feature order; length-sorted batches, shards spread over the runtime's ranks,
    forward passes under its autocast.

    Under `runtime.lockstep_eval` every rank runs as many forward passes as the rank with the most batches (a
    rank that has run out repeats one feature and drops the output), as ZeRO-3 gathers parameters in each one."""
    rank, world_size = runtime.rank, runtime.world
    stored = getattr(features, "lengths", None)  # the feature store keeps lengths apart from the rows
    lengths = stored if stored is not None else [len(f["input_ids"]) for f in features]
    order = sorted(range(len(features)), key=lengths.__getitem__)
    mine = order[rank::world_size]
    was_training = model.training
    model.eval()
    records: list[tuple[int, Any]] = []
    batches = range(0, len(mine), batch_size)
    passes = -(-len(order[0::world_size]) // batch_size) if runtime.lockstep_eval else len(batches)
    for n, start in enumerate(tqdm(range(0, passes * batch_size, batch_size), desc=desc,
                                   disable=desc is None or not runtime.main, leave=False)):
        idx = mine[start : start + batch_size] if n < len(batches) else []
        batch = family.collate([features[i] for i in idx or order[:1]])
        batch = {k: v.to(runtime.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with runtime.autocast():
            outputs = model(task, batch)
        if idx:
            records.extend(zip(idx, family.decode(outputs, batch), strict=True))
    model.train(was_training)
    merged: list[Any] = [None] * len(features)
    for part in runtime.gather(records):
        for i, rec in part:
            merged[i] = rec
    return merged


def evaluate(
    model: torch.nn.Module,
    families: dict[str, TaskFamily],
    splits: Sequence[Split],
    batch_size: int,
    runtime: Runtime,
    progress: bool = True,
) -> list[Result]:
    """Every split predicted (over the runtime's ranks: all of them must call it) and scored by its family."""
    results = []
    for split in splits:
        fam = families[split.task]
        desc = f"eval {split.label}" if progress else None
        records = predict_features(model, fam, split.task, split.features, batch_size, runtime, desc=desc)
        preds = fam.finalize(split.examples, split.features, records)
        metrics = fam.score(split.examples, preds, split.dataset)
        results.append(Result(split, metrics, preds, fam.table_metrics))
    return results


def summary(results: Sequence[Result], families: dict[str, TaskFamily]) -> dict[str, float]:
    """Flat metric names for logging, plus each task's mean primary metric over in-language datasets."""
    out: dict[str, float] = {}
    by_task: dict[str, list[float]] = {}
    for r in results:
        out.update(r.metric_names())
    for r in results:
        if not r.split.zero_shot:
            primary = families[r.split.task].primary_metric
            if primary in r.metrics:
                by_task.setdefault(r.split.task, []).append(r.metrics[primary])
    for task, values in by_task.items():
        out[str(MetricKey.mean(task, families[task].primary_metric))] = sum(values) / len(values)
    return out


def table(results: Sequence[Result]) -> str:
    """A fixed-width per-task, per-language table of the metrics each family shows; zero-shot rows are marked."""
    if not results:
        return "(no evaluation data)"
    rows = []
    for r in results:
        names = r.shown if r.shown is not None else tuple(r.metrics)
        metrics = "  ".join(f"{k}={r.metrics[k]:.2f}" for k in names if k in r.metrics)
        rows.append(
            (r.split.task, r.split.dataset.name, r.split.dataset.language, r.role, str(len(r.predictions)), metrics)
        )
    return format_table(("task", "dataset", "lang", "role", "n", "metrics"), rows, left=6)


def write_predictions(results: Sequence[Result], families: dict[str, TaskFamily], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        ext = families[r.split.task].prediction_suffix
        path = folder / f"{r.split.task}.{r.split.dataset.name}.{r.split.role}{ext}"
        families[r.split.task].write_predictions(r.split.examples, r.predictions, path)
        written.append(path)
    return written
