"""From experiment to features: read every dataset split once, fit vocabularies, tokenise once (stored)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import mtl.feature_store as feature_store
from mtl.core.config import DatasetConfig, Experiment
from mtl.core.errors import ConfigError, DataError
from tasks import get_family
from tasks.base import TaskFamily, counting_reads

log = logging.getLogger(__name__)

CACHE_VERSION = "4"  # bump when a family's features or the store's layout change
T = TypeVar("T")


class Split:
    """One dataset split of one task: its features, and its examples when they are needed.

    Features come from the feature store (memory-mapped, see mtl/feature_store.py) or from memory.
    Examples (what decoding, scoring and prediction files need) are held when the split was read in this
    run; otherwise they are read from the source the first time they are asked for, so a training split
    served from the store is never parsed.
    """

    def __init__(
        self,
        task: str,
        dataset: DatasetConfig,
        role: str,  # train | dev | test
        examples: list[Any] | None = None,
        features: Sequence[dict[str, Any]] = (),
        zero_shot: bool = False,  # evaluated in a language the task never trains on
        tokenised: bool = False,  # features were made in this run, not read from the store
        reader: Callable[[], list[Any]] | None = None,
        n_examples: int | None = None,
        stream: Any = None,  # a streamed training split (tasks/_text_stream.TextStream): no stored features
    ):
        if examples is None and reader is None:
            raise ValueError("a Split needs its examples or a way to read them")
        self.stream = stream
        self.task = task
        self.dataset = dataset
        self.role = role
        self._examples = examples
        self._reader = reader
        self._n_examples = n_examples
        self.features = features
        self.zero_shot = zero_shot
        self.tokenised = tokenised

    @property
    def examples(self) -> list[Any]:
        if self._examples is None:
            assert self._reader is not None
            self._examples = self._reader()
            if self._n_examples is not None and len(self._examples) != self._n_examples:
                raise DataError(f"{self.dataset.split(self.role)}: {self.label} ({self.role}) now reads as "
                                f"{len(self._examples)} examples where its stored features have "
                                f"{self._n_examples}; the source changed during the run")
        return self._examples

    @examples.setter
    def examples(self, value: list[Any]) -> None:
        self._examples = value

    @property
    def n_examples(self) -> int:
        """How many examples the split has (without reading them)."""
        return self._n_examples if self._n_examples is not None and self._examples is None else len(self.examples)

    @property
    def size(self) -> int:
        """Training features of the split: stored ones, or a streamed split's estimated windows."""
        return self.stream.size if self.stream is not None else len(self.features)

    @property
    def group(self) -> tuple[str, str]:
        return (self.task, self.dataset.name)

    @property
    def lengths(self) -> np.ndarray:
        stored = getattr(self.features, "lengths", None)
        if stored is not None:
            return stored
        return np.asarray([len(f["input_ids"]) for f in self.features], dtype=np.int64)

    @property
    def label(self) -> str:
        return f"{self.task}/{self.dataset.name}"

    def with_dataset(self, dataset: DatasetConfig) -> Split:
        """The same split under another dataset config (a renamed one, say)."""
        other = copy.copy(self)
        other.dataset = dataset
        return other

    def __repr__(self) -> str:
        return f"Split({self.label}, {self.role}, {len(self.features)} features)"


def build_families(exp: Experiment, tokenizer: Any) -> dict[str, TaskFamily]:
    return {name: get_family(task.family)(task, tokenizer, exp.encoder.max_length) for name, task in exp.tasks.items()}


def limit(examples: Sequence[T], n: int | None) -> list[T]:
    """The first n examples (DatasetConfig.max_examples); all of them when n is None."""
    if n is None:
        return list(examples)
    if n < 1:
        raise DataError(f"max_examples must be at least 1, got {n}")
    return list(examples[:n])


def read_examples(family: TaskFamily, ds: DatasetConfig, role: str) -> tuple[list[Any], dict[str, int]]:
    """One split as the family reads it, cut to the dataset's max_examples (the one place that cut is made),
    with what the reader skipped or repaired."""
    with counting_reads() as counts:
        examples = limit(family.read(ds, role), ds.max_examples)
    if not examples:
        raise DataError(f"{ds.split(role)}: dataset {family.task.name}/{ds.name} ({role}) has no examples")
    return examples, dict(counts)


def read_split(family: TaskFamily, ds: DatasetConfig, role: str) -> list[Any]:
    """`read_examples`, with the counts kept in `family.read_counts` (see `drop_featureless` for the rest)."""
    examples, counts = read_examples(family, ds, role)
    family.read_counts[(ds.name, role)] = counts
    return examples


def feature_cache_dir(exp: Experiment) -> Path:
    """Where tokenised features are kept between runs (train.cache_dir, else beside the run folders)."""
    return Path(exp.train.cache_dir) if exp.train.cache_dir else exp.output_dir.parent / ".cache" / "features"


def is_zero_shot(exp: Experiment, task: str, ds: DatasetConfig, role: str, trained: Collection[str] | None = None
                 ) -> bool:
    """The zero-shot rule, the one place it is written: a split evaluated in a language that none of the task's
    trained datasets has (reported apart from in-language results, as zeroshot/…). `trained`: the names of the
    datasets that train (a regime stage trains some of them; default: every one with a train split)."""
    datasets = exp.tasks[task].datasets
    names = {d.name for d in datasets if d.train} if trained is None else set(trained)
    languages = {d.language for d in datasets if d.name in names}
    return role != "train" and ds.name not in names and ds.language not in languages


def load_splits(
    exp: Experiment,
    families: dict[str, TaskFamily],
    roles: Iterable[str],
    fit: bool | Collection[str] = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> list[Split]:
    """Read the requested roles of every dataset, fit vocabularies on train data (of every task, of none, or
    of the tasks named in `fit`: those a checkpoint brings no vocabulary for), and featurise.

    With a `cache_dir`, features live in the feature store and what is there is not made again: a split
    whose features are stored is not read (its examples are read later, only if they are asked for), and
    fitted vocabularies are stored too, so a start with nothing changed parses no source."""
    roles = list(roles)
    splits: list[Split] = []
    for task_name, task in exp.tasks.items():
        family = families[task_name]
        held: dict[tuple[str, str], list[Any]] = {}  # examples read in this call, until featurised

        def examples_of(ds: DatasetConfig, role: str, family: TaskFamily = family, held: dict = held) -> list[Any]:
            key = (ds.name, role)
            if key not in held:
                held[key] = read_split(family, ds, role)
            return held[key]

        wanted = [(ds, role) for ds in task.datasets for role in roles if ds.split(role) is not None]
        if cache_dir is None:
            for ds, role in wanted:
                if not family.streams(ds, role):
                    examples_of(ds, role)
        if fit is True or (not isinstance(fit, bool) and task_name in fit):
            _fit(family, exp, task_name, examples_of, cache_dir)
        for ds, role in wanted:
            zero = is_zero_shot(exp, task_name, ds, role)
            if family.streams(ds, role):
                splits.append(_streamed_split(family, task_name, ds, role))
                continue
            if ds.size is not None:
                raise ConfigError(f"dataset {ds.name!r} of task {task_name}: size applies to a streamed dataset only "
                                  "(a large plain-text training file of an mlm task, or streaming: true)")
            if cache_dir is None:
                split = Split(task_name, ds, role, examples_of(ds, role), zero_shot=zero)
                family.check(split.examples, ds, role)
                split.features, split.tokenised = family.featurize(split.examples, role), True
                _require_features(split)
                _count_left_out(family, split, drop_featureless(split))
            else:
                split = _stored_split(family, exp, task_name, ds, role, zero, examples_of, cache_dir, progress)
            held.pop((ds.name, role), None)
            splits.append(split)
    stored = [s for s in splits if s.stream is None]
    if cache_dir is not None and stored:
        fresh = sum(1 for s in stored if s.tokenised)
        log.info("features: %d of %d splits from the store, %d tokenised", len(stored) - fresh, len(stored), fresh)
    return splits


def _require_features(split: Split) -> None:
    if not len(split.features):
        raise DataError(f"{split.dataset.split(split.role)}: {split.label} ({split.role}) produced no features")


def _count_left_out(family: TaskFamily, split: Split, left_out: int) -> None:
    """Examples left out after reading (UD sentences too long to parse) count as skipped by the reader."""
    if left_out:
        counts = family.read_counts.setdefault((split.dataset.name, split.role), {"skipped": 0, "repaired": 0})
        counts["skipped"] += left_out


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


def _dataset_key(ds: DatasetConfig, role: str) -> dict[str, Any]:
    """What of a dataset decides what is read from one of its splits: its settings and its source's state."""
    dataset = dataclasses.asdict(ds)  # typed reader options become a mapping
    return {"dataset": {k: v for k, v in dataset.items() if k not in ("train", "dev", "test")},
            "source": _source_fingerprint(ds, role), "role": role}


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _family_name(family: TaskFamily) -> str:
    return type(family).__module__ + "." + type(family).__qualname__


ExamplesOf = Callable[[DatasetConfig, str], list[Any]]


def _fit(family: TaskFamily, exp: Experiment, task: str, examples_of: ExamplesOf, cache_dir: Path | None) -> None:
    """Fit the task's vocabularies on its training examples, or take the stored result of that same fit."""
    if type(family).fit is TaskFamily.fit:
        return  # nothing to fit (masked LM): nothing to read
    train = [ds for ds in exp.tasks[task].datasets if ds.train]

    def fit_now() -> None:
        family.fit([ex for ds in train for ex in examples_of(ds, "train")])

    if cache_dir is None:
        fit_now()
        return
    key = {"v": CACHE_VERSION, "family": _family_name(family), "options": _plain(family.options),
           "train": [_dataset_key(ds, "train") for ds in train], "before": family.state_dict()}
    path = cache_dir / f"vocab-{task}-{_digest(key)}.json"
    with feature_store.build_lock(path):
        stored = feature_store.read_json(path)
        if isinstance(stored, dict) and "state" in stored:
            family.load_state_dict(stored["state"])
            log.info("task %s: vocabularies from the store (%s)", task, path.name)
            return
        fit_now()
        feature_store.write_json(path, {"state": family.state_dict()})


def _stored_split(
    family: TaskFamily,
    exp: Experiment,
    task: str,
    ds: DatasetConfig,
    role: str,
    zero_shot: bool,
    examples_of: ExamplesOf,
    cache_dir: Path,
    progress: bool,
) -> Split:
    """The split with its features from the store, built now (once, under a lock) when they are missing."""
    tok = family.tokenizer
    key_parts = {
        "v": CACHE_VERSION,
        "family": _family_name(family),
        "options": _plain(family.options),
        **_dataset_key(ds, role),
        "tokenizer": [tok.name_or_path, len(tok), type(tok).__name__],
        "max_length": family.max_length,
        "state": family.state_dict(),
    }
    path = feature_store.entry_path(cache_dir, f"{task}-{ds.name}-{role}", _digest(key_parts))
    label = f"{task}/{ds.name}"
    entry = feature_store.open_entry(path)
    examples = None
    if entry is None:
        with feature_store.build_lock(path):
            entry = feature_store.open_entry(path)  # another process may have built it meanwhile
            if entry is None:
                examples = examples_of(ds, role)
                family.check(examples, ds, role)
                with feature_store.first_of_each(logging.getLogger(type(family).__module__)):
                    entry = feature_store.build_entry(
                        path, examples, lambda chunk, start: family.featurize_chunk(chunk, role, start),
                        {"read_counts": family.read_counts.get((ds.name, role), {})},
                        workers=exp.train.tokenize_workers, desc=f"tokenise {label} ({role})", progress=progress)
                meta = entry.meta
                log.info("tokenised %s (%s): %d examples → %d features in %.1f s (stored for next time)",
                         label, role, meta["examples"], meta["features"], meta["seconds"])
    else:
        log.info("features of %s (%s) from the store: nothing read or tokenised", label, role)
    dropped = entry.dropped
    counts = dict(entry.meta.get("read_counts", {"skipped": 0, "repaired": 0}))
    family.read_counts[(ds.name, role)] = counts
    split = Split(task, ds, role, features=entry.features, zero_shot=zero_shot, tokenised=examples is not None,
                  n_examples=entry.meta["examples"] - len(dropped),
                  reader=lambda: _kept(read_examples(family, ds, role)[0], dropped))
    _require_features(split)
    if dropped:
        log.info("%s (%s): %d of %d examples have no features and are left out", label, role, len(dropped),
                 entry.meta["examples"])
        _count_left_out(family, split, len(dropped))
    if examples is not None and role != "train":  # evaluation examples read now are kept; training ones are not
        split.examples = _kept(examples, dropped)
    return split


def _streamed_split(family: TaskFamily, task: str, ds: DatasetConfig, role: str) -> Split:
    """A training split read in blocks while training: nothing is read now but its first block (its size)."""
    if ds.max_examples is not None:
        raise ConfigError(f"dataset {ds.name!r} of task {task}: max_examples does not apply to a streamed dataset (a "
                          "text or JSON-lines file of 64 MiB or more is streamed); use size: or set streaming: false")
    stream = family.stream(ds)
    log.info("%s/%s (%s): streamed from %s, %s %d training windows", task, ds.name, role, stream.describe(),
             "size: given as" if ds.size else "estimated at", stream.size)
    family.read_counts[(ds.name, role)] = {"skipped": 0, "repaired": 0}

    def unavailable() -> list[Any]:
        raise DataError(f"{ds.split(role)}: {task}/{ds.name} ({role}) is streamed; its examples are not held")

    return Split(task, ds, role, reader=unavailable, n_examples=stream.size, stream=stream)


def _kept(examples: list[T], dropped: Sequence[int]) -> list[T]:
    if not dropped:
        return examples
    out = set(dropped)
    return [ex for i, ex in enumerate(examples) if i not in out]


def resolve_steps(exp: Experiment, train_splits: list[Split]) -> int:
    """Optimiser steps of a stage: train.steps, else train.epochs (default 1) passes over the training features."""
    if exp.train.steps is not None:
        if exp.train.epochs is not None:
            log.warning("train.steps is %d and train.epochs is %s: the run trains %d steps; epochs is not used",
                        exp.train.steps, exp.train.epochs, exp.train.steps)
        return exp.train.steps
    total = sum(s.size for s in train_splits)
    per_step = exp.sampling.batch_size * exp.train.grad_accum
    if exp.sampling.max_tokens:
        tokens = sum(s.size * exp.encoder.max_length if s.stream else int(np.sum(s.lengths)) for s in train_splits)
        mean_len = tokens / max(1, total)
        fit = max(1, int(exp.sampling.max_tokens // max(1.0, mean_len)))
        per_step = min(exp.sampling.batch_size, fit) * exp.train.grad_accum
    return max(1, math.ceil((exp.train.epochs or 1.0) * total / per_step))
