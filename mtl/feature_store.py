"""Tokenised features on disk: one Arrow file per split, memory-mapped by every process that reads it.

A split's features are written once, in chunks, to an Arrow IPC file (one row per feature: its token
length and the feature itself, serialised with pickle so that every family's feature comes back exactly
as `featurize` made it: same keys, same types). Training and evaluation then read rows from the mapped
file, so what a process holds of a split is its array of lengths, not its features; processes on one
machine share the pages through the page cache. A build is guarded by a file lock, so when several
processes (the ranks of one job, or two jobs) need the same missing entry, one builds it and the others
wait and then map it.

An entry is a folder `<name>-<digest>/` holding `features.arrow` and `meta.json`; it is written under a
temporary name and renamed into place, so a killed build leaves no entry that looks complete.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK = 2048  # examples featurised (and written) at a time: bounds the memory a build holds in features
_SCHEMA = pa.schema([("length", pa.int32()), ("feature", pa.large_binary())])


class FeatureRows(Sequence[dict[str, Any]]):
    """The features of one split, read row by row from a memory-mapped Arrow file."""

    def __init__(self, path: Path):
        self.path = path
        with pa.memory_map(str(path), "r") as source:
            table = pa.ipc.open_file(source).read_all()
        self._table = table  # keeps the mapping alive; its buffers point into the mapped file
        self.lengths = table.column("length").to_numpy().astype(np.int64)
        self._chunks: list[tuple[np.ndarray, memoryview]] = []
        starts = [0]
        for chunk in table.column("feature").chunks:
            _, offsets, data = chunk.buffers()
            offs = np.frombuffer(offsets, dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
            self._chunks.append((offs, memoryview(data) if data is not None else memoryview(b"")))
            starts.append(starts[-1] + len(chunk))
        self._starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"feature {i} of {len(self)} in {self.path}")
        c = int(np.searchsorted(self._starts, i, side="right")) - 1
        offs, data = self._chunks[c]
        k = i - int(self._starts[c])
        return pickle.loads(data[int(offs[k]) : int(offs[k + 1])])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


@dataclass
class Entry:
    """One split's features in the store, with what was learnt while building them."""

    features: FeatureRows
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> list[int]:
        """Indices (in the split as read) of the examples that gave no features."""
        return list(self.meta.get("dropped", []))


def entry_path(cache_dir: Path, name: str, digest: str) -> Path:
    return cache_dir / f"{name}-{digest}"


def open_entry(path: Path) -> Entry | None:
    """The entry at `path`, or None when it is missing or unreadable (then it is rebuilt)."""
    meta_file, data_file = path / "meta.json", path / "features.arrow"
    if not meta_file.is_file() or not data_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        rows = FeatureRows(data_file)
        if len(rows) != meta["features"]:
            raise ValueError(f"{len(rows)} rows where meta.json says {meta['features']}")
        return Entry(rows, meta)
    except Exception as err:  # a damaged entry is rebuilt, never served
        log.warning("feature store entry %s unreadable (%s); rebuilding it", path, err)
        return None


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for building the entry at `path` (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to build %s", path.name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def first_of_each(logger: logging.Logger) -> Iterator[None]:
    """While a split is built chunk by chunk, let a family's logger say each thing once (its first
    instance) rather than once per chunk, and then say how many were held back."""
    seen: dict[tuple[str, int], int] = {}

    def once(record: logging.LogRecord) -> bool:
        where = (record.pathname, record.lineno)
        seen[where] = seen.get(where, 0) + 1
        return seen[where] == 1

    logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)
        held = sum(n - 1 for n in seen.values())
        if held:
            logger.info("(%d more messages like those above, one per chunk of %d examples)", held, CHUNK)


Featurize = Callable[[Sequence[Any], int], list[dict[str, Any]]]

_WORK: tuple[Featurize, Sequence[Any]] | None = None  # what a forked tokenising worker featurises


def _encode_chunk(bounds: tuple[int, int]) -> tuple[int, list[int], list[int], list[bytes]]:
    assert _WORK is not None
    featurize, examples = _WORK
    start, end = bounds
    feats = featurize(examples[start:end], start)
    index = [int(f["example_index"]) for f in feats]
    lengths = [len(f["input_ids"]) for f in feats]
    return start, index, lengths, [pickle.dumps(f, protocol=pickle.HIGHEST_PROTOCOL) for f in feats]


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)] or [(0, 0)]


def _encoded(featurize: Featurize, examples: Sequence[Any], workers: int, desc: str) -> Iterator[tuple]:
    """Chunks in order, featurised here or by `workers` forked processes (same result either way)."""
    global _WORK
    bounds = _chunks(len(examples))
    _WORK = (featurize, examples)
    try:
        if workers <= 1 or len(bounds) == 1:
            yield from (_encode_chunk(b) for b in bounds)
            return
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are the parallelism
        with multiprocessing.get_context("fork").Pool(min(workers, len(bounds))) as pool:
            yield from pool.imap(_encode_chunk, bounds)
    finally:
        _WORK = None


def build_entry(
    path: Path,
    examples: Sequence[Any],
    featurize: Featurize,
    meta: dict[str, Any],
    workers: int = 1,
    desc: str = "tokenise",
    progress: bool = True,
) -> Entry:
    """Featurise `examples` chunk by chunk into a new entry at `path`.

    `featurize(chunk, start)` gives the chunk's features with example indices counted from `start`.
    Examples that give no features are left out (counted in meta["dropped"]), and the others' indices
    are renumbered in order, so the stored features index the examples that remain.
    """
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept_so_far = 0
    dropped: list[int] = []
    n_features = 0
    started = time.perf_counter()
    bar = tqdm(total=len(examples), desc=desc, unit="ex", disable=not progress or len(examples) < 4 * CHUNK,
               leave=False, dynamic_ncols=True)
    try:
        with pa.OSFile(str(tmp / "features.arrow"), "wb") as sink, pa.ipc.new_file(sink, _SCHEMA) as writer:
            for start, index, lengths, rows in _encoded(featurize, examples, workers, desc):
                end = min(start + CHUNK, len(examples))
                present = sorted(set(index))
                renumber = {old: kept_so_far + k for k, old in enumerate(present)}
                dropped.extend(i for i in range(start, end) if i not in renumber)
                if any(renumber[i] != i for i in present):
                    rows = [_reindex(r, renumber) for r in rows]
                kept_so_far += len(present)
                n_features += len(rows)
                if rows:
                    writer.write_batch(pa.record_batch(
                        [pa.array(lengths, pa.int32()), pa.array(rows, pa.large_binary())], schema=_SCHEMA))
                bar.update(end - start)
        meta = {**meta, "examples": len(examples), "features": n_features, "dropped": dropped,
                "seconds": round(time.perf_counter() - started, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(path, ignore_errors=True)  # an unreadable old entry
        os.replace(tmp, path)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    entry = open_entry(path)
    if entry is None:
        raise RuntimeError(f"feature store entry {path} could not be read back after writing it")
    return entry


def _reindex(row: bytes, renumber: dict[int, int]) -> bytes:
    feat = pickle.loads(row)
    return pickle.dumps({**feat, "example_index": renumber[feat["example_index"]]}, protocol=pickle.HIGHEST_PROTOCOL)


def read_json(path: Path) -> Any | None:
    """A small JSON file of the store, or None when missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
