"""From experiment to features: read every dataset split once, fit vocabularies, tokenise once (cached)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mtl.config import DatasetConfig, Experiment
from tasks import get_family
from tasks.base import DataError, TaskFamily, counting_reads

log = logging.getLogger(__name__)

CACHE_VERSION = "3"  # bump when a family's features change shape
T = TypeVar("T")


@dataclass
class Split:
    """One dataset split of one task, read and featurised."""

    task: str
    dataset: DatasetConfig
    role: str  # train | dev | test
    examples: list[Any]
    features: list[dict[str, Any]] = field(default_factory=list)
    zero_shot: bool = False  # evaluated in a language the task never trains on
    tokenised: bool = False  # features were made in this run, not read from the cache

    @property
    def group(self) -> tuple[str, str]:
        return (self.task, self.dataset.name)

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    @property
    def label(self) -> str:
        return f"{self.task}/{self.dataset.name}"


def build_families(exp: Experiment, tokenizer: Any) -> dict[str, TaskFamily]:
    return {name: get_family(task.family)(task, tokenizer, exp.encoder.max_length) for name, task in exp.tasks.items()}


def train_languages(exp: Experiment, task: str) -> set[str]:
    return {ds.language for ds in exp.tasks[task].datasets if ds.train}


def limit(examples: Sequence[T], n: int | None) -> list[T]:
    """The first n examples (DatasetConfig.max_examples); all of them when n is None."""
    if n is None:
        return list(examples)
    if n < 1:
        raise DataError(f"max_examples must be at least 1, got {n}")
    return list(examples[:n])


def read_split(family: TaskFamily, ds: DatasetConfig, role: str) -> list[Any]:
    """One split as the family reads it, cut to the dataset's max_examples (the one place that cut is made);
    what the reader skipped or repaired goes to `family.read_counts` (see `drop_featureless` for the rest)."""
    with counting_reads() as counts:
        examples = limit(family.read(ds, role), ds.max_examples)
    family.read_counts[(ds.name, role)] = counts
    if not examples:
        raise DataError(f"{ds.split(role)}: dataset {family.task.name}/{ds.name} ({role}) has no examples")
    return examples


def feature_cache_dir(exp: Experiment) -> Path:
    """Where tokenised features are kept between runs (train.cache_dir, else beside the run folders)."""
    return Path(exp.train.cache_dir) if exp.train.cache_dir else exp.output_dir.parent / ".cache" / "features"


def load_splits(
    exp: Experiment,
    families: dict[str, TaskFamily],
    roles: Iterable[str],
    fit: bool | Collection[str] = True,
    cache_dir: Path | None = None,
) -> list[Split]:
    """Read the requested roles of every dataset, fit vocabularies on train data (of every task, of none, or
    of the tasks named in `fit`: those a checkpoint brings no vocabulary for), and featurise."""
    roles = list(roles)
    splits: list[Split] = []
    for task_name, task in exp.tasks.items():
        family = families[task_name]
        langs = train_languages(exp, task_name)
        task_splits = []
        for ds in task.datasets:
            for role in roles:
                if ds.split(role) is None:
                    continue
                examples = read_split(family, ds, role)
                zero = role != "train" and ds.train is None and ds.language not in langs
                task_splits.append(Split(task_name, ds, role, examples, zero_shot=zero))
        if fit is True or (not isinstance(fit, bool) and task_name in fit):
            family.fit([ex for s in task_splits if s.role == "train" for ex in s.examples])
        for s in task_splits:
            family.check(s.examples, s.dataset, s.role)
            s.features, s.tokenised = _featurize_cached(family, s, exp, cache_dir)
            if not s.features:
                raise DataError(f"{s.dataset.split(s.role)}: {s.label} ({s.role}) produced no features")
            left_out = drop_featureless(s)
            if left_out:  # skipped after reading (UD sentences too long to parse): counted as read skips
                counts = family.read_counts.setdefault((s.dataset.name, s.role), {"skipped": 0, "repaired": 0})
                counts["skipped"] += left_out
        splits.extend(task_splits)
    if cache_dir is not None:
        fresh = sum(1 for s in splits if s.tokenised)
        log.info("features: %d of %d splits from the cache, %d tokenised", len(splits) - fresh, len(splits), fresh)
    return splits


def drop_featureless(split: Split) -> int:
    """Drop the examples a family gave no features (e.g. UD sentences too long to parse, under
    skip_invalid), so that evaluation and predictions cover exactly what the model sees; returns how
    many were dropped (from the features themselves, so the count holds when they come from the cache)."""
    kept = sorted({f["example_index"] for f in split.features})
    if len(kept) == len(split.examples):
        return 0
    dropped = len(split.examples) - len(kept)
    log.info("%s (%s): %d of %d examples have no features and are left out", split.label, split.role,
             dropped, len(split.examples))
    new_index = {old: new for new, old in enumerate(kept)}
    split.examples = [split.examples[i] for i in kept]
    split.features = [{**f, "example_index": new_index[f["example_index"]]} for f in split.features]
    return dropped


def _plain(options: Any) -> Any:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options


def _source_fingerprint(ds: DatasetConfig, role: str) -> str:
    src = ds.split(role) or ""
    p = Path(src)
    if ds.hub is None and p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"hub:{ds.hub}:{ds.hub_config}:{src}"


def _featurize_cached(
    family: TaskFamily, split: Split, exp: Experiment, cache_dir: Path | None
) -> tuple[list[dict], bool]:
    """The split's features, and whether they were tokenised now (False: read from the cache)."""
    if cache_dir is None:
        return family.featurize(split.examples, split.role), True
    tok = family.tokenizer
    dataset = dataclasses.asdict(split.dataset)  # typed reader options become a mapping
    key_parts = {
        "v": CACHE_VERSION,
        "family": type(family).__module__ + "." + type(family).__qualname__,
        "options": _plain(family.options),
        "dataset": {k: v for k, v in dataset.items() if k not in ("train", "dev", "test")},
        "source": _source_fingerprint(split.dataset, split.role),
        "role": split.role,
        "tokenizer": [tok.name_or_path, len(tok), type(tok).__name__],
        "max_length": family.max_length,
        "state": family.state_dict(),
    }
    digest = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir / f"{split.task}-{split.dataset.name}-{split.role}-{digest}.pkl"
    if path.exists():
        try:
            with path.open("rb") as fh:
                features = pickle.load(fh)
            log.info("features of %s (%s) from the cache: nothing tokenised", split.label, split.role)
            return features, False
        except Exception as err:  # a corrupt cache entry is rebuilt, not fatal
            log.warning("feature cache %s unreadable (%s); rebuilding", path, err)
    started = time.perf_counter()
    features = family.featurize(split.examples, split.role)
    log.info("tokenised %s (%s): %d examples → %d features in %.1f s (cached for next time)",
             split.label, split.role, len(split.examples), len(features), time.perf_counter() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        pickle.dump(features, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return features, True


def resolve_steps(exp: Experiment, train_splits: list[Split]) -> int:
    """Optimiser steps of a stage: train.steps, else train.epochs (default 1) passes over the training features."""
    if exp.train.steps is not None:
        return exp.train.steps
    total = sum(len(s.features) for s in train_splits)
    per_step = exp.sampling.batch_size * exp.train.grad_accum
    if exp.sampling.max_tokens:
        mean_len = sum(sum(s.lengths) for s in train_splits) / max(1, total)
        fit = max(1, int(exp.sampling.max_tokens // max(1.0, mean_len)))
        per_step = min(exp.sampling.batch_size, fit) * exp.train.grad_accum
    return max(1, math.ceil((exp.train.epochs or 1.0) * total / per_step))
