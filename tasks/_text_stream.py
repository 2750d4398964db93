"""Plain text too large to read whole: read in blocks of lines, each process its own blocks, tokenised
only when training reaches them.

The file is cut into blocks of about `block_bytes(size)` bytes that begin and end at line breaks (a block
holds the lines that start inside its byte range). Every epoch visits the blocks in an order drawn from
the seed; process r of W reads blocks r, r + W, r + 2W … of that order, so no two processes read the same
text in one pass. A block's lines are tokenised and packed into windows when it is reached (as BERT
pre-training and run_mlm's `group_texts` pack text), and a process's position is (epoch, block, window):
three numbers, saved with each checkpoint, from which a resumed run reads exactly what an uninterrupted
one would have read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtl.core.errors import ConfigError, DataError

STREAM_FROM_BYTES = 64 * 2**20  # a plain-text training file this large is streamed (unless `streaming: false`)

Windows = Callable[[list[str]], list[dict[str, Any]]]  # consecutive lines → packed training windows


def block_bytes(size: int) -> int:
    """Block size for a file of `size` bytes: at most 1 MiB (tokenised in well under a second), at least
    16 KiB, and about 1/256 of the file in between, so a small file still has blocks for many processes."""
    return int(min(2**20, max(2**14, size // 256)))


class TextBlocks:
    """A UTF-8 text file as blocks of whole lines."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.size = self.path.stat().st_size
        except OSError as err:
            raise DataError(f"{path}: cannot read the text ({err.strerror})") from None
        if self.size == 0:
            raise DataError(f"{path}: no text (the file is empty)")
        self.block = block_bytes(self.size)
        self.count = math.ceil(self.size / self.block)

    def _start(self, fh: Any, b: int) -> int:
        """Byte where block b's first line starts (the first line break at or after its nominal start)."""
        at = b * self.block
        if at == 0 or at >= self.size:
            return min(at, self.size)
        fh.seek(at - 1)
        fh.readline()
        return fh.tell()

    def lines(self, b: int) -> list[str]:
        """The non-blank lines of block b (stripped), as the text reader keeps them."""
        with self.path.open("rb") as fh:
            start, end = self._start(fh, b), self._start(fh, b + 1)
            if end <= start:
                return []
            fh.seek(start)
            raw = fh.read(end - start)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: byte {start + err.start}: not UTF-8 ({err.reason})") from None
        return [s for line in text.split("\n") if (s := line.strip())]


class TextStream:
    """One streamed training split: its blocks, how lines become windows, and its size for the sampler."""

    def __init__(self, path: Path, windows: Windows, name: str, size: int | None = None):
        self.blocks = TextBlocks(path)
        self.windows = windows
        self.name = name
        self.size = size if size is not None else self.estimate()

    def describe(self) -> str:
        return f"{self.blocks.path} ({self.blocks.count} blocks of {self.blocks.block:,} bytes)"

    def estimate(self) -> int:
        """Training windows in the whole file, estimated from its first block (no more is read)."""
        first = len(self.windows(self.blocks.lines(0)))
        if first == 0:
            raise DataError(f"{self.blocks.path}: no text in its first {self.blocks.block:,} bytes; "
                            "give the dataset an explicit `size:` (training windows) to stream it")
        share = min(1.0, self.blocks.block / self.blocks.size)
        return max(1, round(first / share))

    def open(self, seed: int, rank: int = 0, world: int = 1) -> StreamCursor:
        if self.blocks.count < world:
            raise ConfigError(f"{self.blocks.path}: {self.blocks.count} blocks of text, fewer than the {world} "
                              "processes that would each read their own; set `streaming: false` for this dataset")
        return StreamCursor(self, seed, rank, world)


class StreamCursor:
    """One process's reading position in a TextStream; `take(n)` gives the next n training windows."""

    def __init__(self, stream: TextStream, seed: int, rank: int, world: int):
        self.stream, self.seed, self.rank, self.world = stream, int(seed), int(rank), int(world)
        self._id = int.from_bytes(hashlib.sha256(stream.name.encode()).digest()[:8], "little") >> 1
        self.epoch, self.block, self.window = 0, 0, 0
        self._order = self._blocks(0)
        self._windows: list[dict[str, Any]] | None = None

    def _blocks(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, 3, self._id, epoch]).permutation(self.stream.blocks.count)
        return order[self.rank :: self.world]

    @property
    def current_block(self) -> int:
        """The file block this process reads now (its index in the file)."""
        return int(self._order[self.block])

    def take(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        empty = 0  # blocks in a row that gave no window: a whole pass of them means there is no text
        while len(out) < n:
            if self._windows is None:
                self._windows = self.stream.windows(self.stream.blocks.lines(self.current_block))
            if self.window < len(self._windows):
                got = self._windows[self.window : self.window + n - len(out)]
                out.extend(got)
                self.window += len(got)
                empty = 0
                continue
            empty += 1
            if empty > len(self._order):
                raise DataError(f"{self.stream.blocks.path}: process {self.rank} of {self.world} found no text "
                                "in any of its blocks")
            self._advance()
        return out

    def _advance(self) -> None:
        self.block, self.window, self._windows = self.block + 1, 0, None
        if self.block == len(self._order):
            self.epoch, self.block = self.epoch + 1, 0
            self._order = self._blocks(self.epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "block": self.block, "window": self.window, "rank": self.rank,
                "world": self.world, "blocks": self.stream.blocks.count, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["world"], state["blocks"], state["seed"]) != (self.world, self.stream.blocks.count, self.seed):
            raise ConfigError(
                f"{self.stream.blocks.path}: the checkpoint read this stream with {state['world']} process(es), "
                f"{state['blocks']} blocks and seed {state['seed']}; this run has {self.world}, "
                f"{self.stream.blocks.count} and {self.seed}: resume with the same processes, file and seed")
        self.epoch, self.block, self.window = int(state["epoch"]), int(state["block"]), int(state["window"])
        self._order = self._blocks(self.epoch)
        self._windows = None


class HubStream:
    """A hub dataset read in `datasets`' streaming mode: rows arrive as training reaches them, each process
    keeps its own (`split_dataset_by_node`), and rows are packed `ROWS` at a time into windows. The
    position saved with a checkpoint is the dataset's own state at the start of the current pack, and the
    window reached inside it; the rows are read in the dataset's order (no shuffle buffer, whose contents
    a resumed run could not restore)."""

    ROWS = 1000

    def __init__(self, load: Callable[[], Any], texts: Callable[[dict[str, Any]], list[str]], windows: Windows,
                 name: str, size: int | None = None):
        self.load, self.texts, self.windows, self.name = load, texts, windows, name
        if size is None:
            raise ConfigError(f"dataset {name}: a streamed hub dataset needs `size:` (its training windows, "
                              "for the sampler's weights and for epochs); its length is not known ahead")
        self.size = size

    def describe(self) -> str:
        return f"the hub in datasets' streaming mode ({self.ROWS} rows packed at a time)"

    def open(self, seed: int, rank: int = 0, world: int = 1) -> HubCursor:
        return HubCursor(self, rank, world)


class HubCursor:
    """One process's reading position in a HubStream; `take(n)` gives the next n training windows."""

    def __init__(self, stream: HubStream, rank: int, world: int):
        self.stream, self.rank, self.world = stream, rank, world
        self.epoch, self.window = 0, 0
        self._start_state: dict[str, Any] | None = None  # the dataset's state where the current pack began
        self._windows: list[dict[str, Any]] | None = None
        self._rows: Any = None
        self._restart(None)

    def _restart(self, state: dict[str, Any] | None) -> None:
        from datasets.distributed import split_dataset_by_node

        self._dataset = split_dataset_by_node(self.stream.load(), rank=self.rank, world_size=self.world)
        if state is not None:
            self._dataset.load_state_dict(state)
        self._rows = iter(self._dataset)

    def _next_pack(self) -> tuple[list[dict[str, Any]], bool]:
        """The windows of the next ROWS rows, and whether there was any row left."""
        import copy

        self._start_state = copy.deepcopy(self._dataset.state_dict())
        lines: list[str] = []
        read = False
        for _ in range(self.stream.ROWS):
            row = next(self._rows, None)
            if row is None:
                break
            read = True
            lines.extend(self.stream.texts(row))
        return (self.stream.windows(lines) if lines else []), read

    def take(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        fresh = False  # the epoch has just begun: a pass without rows means there are none at all
        while len(out) < n:
            if self._windows is None:
                windows, read = self._next_pack()
                if not read:
                    if fresh:
                        raise DataError(f"dataset {self.stream.name}: process {self.rank} of {self.world} "
                                        "found no text")
                    self.epoch, fresh = self.epoch + 1, True  # the rows ran out: read them again from the start
                    self._restart(None)
                    continue
                self._windows, self.window = windows, 0
            if self.window < len(self._windows):
                got = self._windows[self.window : self.window + n - len(out)]
                out.extend(got)
                self.window += len(got)
                fresh = False
                continue
            self._windows = None
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "window": self.window, "dataset": self._start_state, "world": self.world,
                "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world"] != self.world:
            raise ConfigError(f"dataset {self.stream.name}: the checkpoint streamed it with {state['world']} "
                              f"process(es), this run has {self.world}: resume with the same processes")
        self.epoch = int(state["epoch"])
        self._restart(state["dataset"])
        self._windows = self._next_pack()[0]
        self.window = int(state["window"])
