"""From experiment to features: read every dataset split once, fit vocabularies, tokenise once (cached)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl.config import DatasetConfig, Experiment
from tasks import get_family
from tasks.base import DataError, TaskFamily, counting_reads

log = logging.getLogger(__name__)

CACHE_VERSION = "1"


@dataclass
class Split:
    """One dataset split of one task, read and featurised."""

    task: str
    dataset: DatasetConfig
    role: str  # train | dev | test
    examples: list[Any]
    features: list[dict[str, Any]] = field(default_factory=list)
    zero_shot: bool = False  # evaluated in a language the task never trains on

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


def read_split(family: TaskFamily, ds: DatasetConfig, role: str) -> list[Any]:
    with counting_reads() as counts:
        examples = family.read(ds, role)
    family.read_counts[(ds.name, role)] = counts
    if ds.max_examples is not None:
        examples = examples[: ds.max_examples]
    if not examples:
        raise DataError(f"{ds.split(role)}: dataset {family.task.name}/{ds.name} ({role}) has no examples")
    return examples


def load_splits(
    exp: Experiment,
    families: dict[str, TaskFamily],
    roles: Iterable[str],
    fit: bool = True,
    cache_dir: Path | None = None,
) -> list[Split]:
    """Read the requested roles of every dataset, fit vocabularies on train data, and featurise."""
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
        if fit:
            family.fit([ex for s in task_splits if s.role == "train" for ex in s.examples])
        for s in task_splits:
            family.check(s.examples, s.dataset, s.role)
            s.features = _featurize_cached(family, s, exp, cache_dir)
            if not s.features:
                raise DataError(f"{s.dataset.split(s.role)}: {s.label} ({s.role}) produced no features")
        splits.extend(task_splits)
    return splits


def _source_fingerprint(ds: DatasetConfig, role: str) -> str:
    src = ds.split(role) or ""
    p = Path(src)
    if ds.hub is None and p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"hub:{ds.hub}:{ds.hub_config}:{src}"


def _featurize_cached(family: TaskFamily, split: Split, exp: Experiment, cache_dir: Path | None) -> list[dict]:
    if cache_dir is None:
        return family.featurize(split.examples, split.role)
    tok = family.tokenizer
    key_parts = {
        "v": CACHE_VERSION,
        "family": type(family).__module__ + "." + type(family).__qualname__,
        "options": family.task.options,
        "dataset": {k: v for k, v in split.dataset.__dict__.items() if k not in ("train", "dev", "test")},
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
                return pickle.load(fh)
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
    return features
