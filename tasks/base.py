"""The contract every task family fulfils.

A family is one module in `tasks/` holding a `TaskFamily` subclass decorated with
`@register`. The trainer, the evaluator, the CLI and the sampler only ever talk to
this interface, so adding a family edits nothing outside its own module.

Flow for one task (a config block with `family: <name>`):

    read(dataset, role)      → list of examples (family-defined objects, keep the raw input)
    fit(train examples)      → label vocabularies (saved with checkpoints via state_dict)
    featurize(examples)      → list of feature dicts; each has `input_ids` and `example_index`
                               (one example may give several features: windows)
    collate(features)        → batch of tensors (the model feeds input_ids/attention_mask/
                               token_type_ids to the encoder, the whole batch to the head)
    build_head(encoder_info) → nn.Module: head(hidden_states, batch) → dict with "loss"
                               when the batch has labels (see `loss_output`: the loss is also
                               given as sums and item counts, so that a distributed run averages
                               it over the items of the global batch)
    decode(outputs, batch)   → one plain-Python record per feature
    finalize(examples, features, records) → one prediction per example
    score(examples, predictions, dataset) → {metric name: value}
    write_predictions(examples, predictions, path) → the input format with predictions
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)
_READ_COUNTS: ContextVar[dict[str, int] | None] = ContextVar("mtl_read_counts", default=None)


@contextmanager
def counting_reads() -> Iterator[dict[str, int]]:
    """Collect what a reader skipped or repaired while it reads one split, for the run record."""
    counts = {"skipped": 0, "repaired": 0}
    token = _READ_COUNTS.set(counts)
    try:
        yield counts
    finally:
        _READ_COUNTS.reset(token)


def note_read(*, skipped: int = 0, repaired: int = 0) -> None:
    """Readers call this for examples they skip or repair; a no-op outside `counting_reads`."""
    counts = _READ_COUNTS.get()
    if counts is not None:
        counts["skipped"] += skipped
        counts["repaired"] += repaired


@dataclass
class EncoderInfo:
    """What a head needs to know about the shared encoder."""

    hidden_size: int
    num_layers: int  # hidden states returned by the encoder, embeddings included
    make_mix: Callable[[], nn.Module]  # a fresh per-task ScalarMix (or last-layer picker)
    dropout: float = 0.1
    # For heads that tie their output layer to the encoder's input embeddings or rebuild a head of the
    # encoder's own architecture (masked LM): its input embedding module and its transformers config.
    input_embeddings: nn.Module | None = None
    config: Any = None
    # The pretrained checkpoint (hub name or folder) and revision the encoder's weights were loaded from, so a
    # head can reuse that checkpoint's own head weights; None when the weights come from a config or an mtl
    # checkpoint (which then fills the head's weights too).
    checkpoint: str | None = None
    revision: str | None = None


WordPooling = Literal["first", "mean", "last"]


@dataclass
class FamilyOptions:
    """Base class for a family's `options:` block (families subclass it as a dataclass)."""


@dataclass
class WordLevelOptions(FamilyOptions):
    """Options every word-level family (tagging, parsing) shares."""

    # which sub-word pieces stand for a word: the first that carries characters (a bare "▁" is
    # skipped), the last, or the mean of the word's pieces
    word_pooling: WordPooling = "first"


class TaskFamily(ABC):
    """One kind of task: its reader, features, head, decoder and metric."""

    name: ClassVar[str]
    Options: ClassVar[type] = FamilyOptions
    accepts: ClassVar[tuple[str, ...]] = ()  # record shapes it reads (tasks/formats.py): any reader of them serves
    primary_metric: str = "accuracy"  # higher is better; used for summaries (families may set it per instance)
    default_format: ClassVar[str | None] = None
    # How this family's heads read the encoder unless the experiment says otherwise (`encoder.mix`,
    # a task's `mix`, `encoder.dropout`): measured per family, see benchmarks/README.md.
    default_mix: ClassVar[str] = "last"
    default_dropout: ClassVar[float] = 0.1
    # Metrics the summary table shows, in order (None: all that score() returns); the log gets them all.
    table_metrics: ClassVar[tuple[str, ...] | None] = None
    prediction_suffix: ClassVar[str] = ".txt"  # file ending of write_predictions output
    supervised: ClassVar[bool] = True  # False for self-supervised objectives (MLM), which regimes treat apart

    def __init__(self, task: TaskConfig, tokenizer: Any, max_length: int):
        self.task = task
        self.tokenizer = tokenizer
        self.max_length = max_length
        # the family's typed Options: built when the experiment was assembled (mtl/experiment.py); a TaskConfig
        # built in code passes an Options instance
        self.options = task.options

    @classmethod
    def format_name(cls, dataset: DatasetConfig) -> str | None:
        """The reader format of a dataset: its own `format:`, else the family's default."""
        return dataset.format or cls.default_format

    # ---------------------------------------------------------------- data
    @abstractmethod
    def read(self, dataset: DatasetConfig, role: str) -> list[Any]:
        """Read one split ("train", "dev" or "test") of a dataset; raise DataError on bad input.

        The records come from `tasks.formats.read_records` (the dataset's reader, its options, a file or
        the hub); a family turns them into its examples and opens no file and calls no hub itself."""

    def fit(self, train_examples: Sequence[Any]) -> None:
        """Build label vocabularies from the training examples of every dataset of this task."""

    def check(self, examples: Sequence[Any], dataset: DatasetConfig, role: str) -> None:
        """Validate examples against the vocabularies (e.g. a label outside the declared set)."""

    @abstractmethod
    def featurize(self, examples: Sequence[Any], role: str) -> list[dict[str, Any]]:
        """Tokenise once; every feature has `input_ids` (list[int]) and `example_index`."""

    def featurize_chunk(self, examples: Sequence[Any], role: str, start: int) -> list[dict[str, Any]]:
        """Features of examples[start:start + len(examples)] of a split, indexed in the whole split.

        The feature store featurises a split chunk by chunk; the features of every chunk together must
        equal `featurize` of the whole split. A family whose features depend on an example's position
        (a seed per example, say) overrides this."""
        features = self.featurize(examples, role)
        if start:
            for f in features:
                f["example_index"] += start
        return features

    def streams(self, dataset: DatasetConfig, role: str) -> bool:
        """Whether this split is read as a stream while training rather than stored whole (only plain text
        for masked LM does so; such a family overrides this and `stream`)."""
        if dataset.streaming:
            raise ConfigError(f"dataset {dataset.name!r}: streaming applies to the plain-text training files of "
                              f"an mlm task, not to the {self.name} family")
        return False

    def stream(self, dataset: DatasetConfig) -> Any:
        """The training stream of a dataset for which `streams` is true (tasks/_text_stream.TextStream)."""
        raise NotImplementedError(f"the {self.name} family does not stream")

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad encoder inputs; families extend this with their own label tensors."""
        return pad_encoder_inputs(features, self.tokenizer.pad_token_id or 0)

    # ---------------------------------------------------------------- model
    @abstractmethod
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        """A module called as head(hidden_states, batch) returning a dict (with 'loss' if labelled)."""

    # ---------------------------------------------------------------- output
    @abstractmethod
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        """One plain-Python record per feature in the batch (move tensors to CPU here)."""

    def finalize(
        self, examples: Sequence[Any], features: Sequence[dict[str, Any]], records: Sequence[Any]
    ) -> list[Any]:
        """Join per-feature records into one prediction per example (default: one feature each)."""
        preds: list[Any] = [None] * len(examples)
        for feat, rec in zip(features, records, strict=True):
            preds[feat["example_index"]] = rec
        return preds

    @abstractmethod
    def score(self, examples: Sequence[Any], predictions: Sequence[Any], dataset: DatasetConfig) -> dict[str, float]:
        """Metrics for one dataset (dataset.language lets a family pick a language-aware metric)."""

    def sample_scorer(self, examples: Sequence[Any], predictions: Sequence[Any],
                      dataset: DatasetConfig) -> Callable[[Sequence[int]], dict[str, float]]:
        """A function from a resample of the examples (`indices`, with repeats) to its metrics: the paired
        bootstrap of mtl/significance.py calls it a thousand times. A family whose score keys examples by id
        overrides it so that repeats still count; one whose metrics are sums over examples, so that a
        resample is scored by adding counts computed once."""

        def score(indices: Sequence[int]) -> dict[str, float]:
            return self.score([examples[i] for i in indices], [predictions[i] for i in indices], dataset)

        return score

    @abstractmethod
    def write_predictions(self, examples: Sequence[Any], predictions: Sequence[Any], path: Path) -> None:
        """Write predictions in the input's own format (the file must read back)."""

    @property
    def read_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """(dataset name, role) → examples skipped and repaired when that split was read."""
        return self.__dict__.setdefault("_read_counts", {})

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable vocabularies, saved beside each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MixedHead(nn.Module):
    """The start every head shares: its own view of the encoder layers (scalar mix or last layer),
    then dropout."""

    def __init__(self, encoder: EncoderInfo):
        super().__init__()
        self.mix = encoder.make_mix()
        self.dropout = nn.Dropout(encoder.dropout)

    def mixed(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.dropout(self.mix(hidden_states))


def loss_output(sums: Sequence[torch.Tensor], counts: Sequence[torch.Tensor | int]) -> dict[str, torch.Tensor]:
    """A head's loss as `loss_sum` and `loss_count` (one entry per loss term) plus their `loss`.

    Term k is a mean over its items (labelled words, examples, answer spans …): `sums[k]` is the
    sum of the per-item losses and `counts[k]` the number of items. `loss` is the sum over terms of
    sum / count on this batch (a term without items adds zero but stays in the graph). The trainer
    divides each sum by the count of the global batch instead (all ranks together, mtl/loss.py), so
    ranks holding different numbers of items train as one process would on the whole batch. The
    number and order of terms must not depend on the batch, only on the task.
    """
    total = torch.stack([s.float() for s in sums])
    n = torch.stack([torch.as_tensor(c, dtype=torch.float32, device=total.device) for c in counts])
    return {"loss": (total / n.clamp(min=1)).sum(), "loss_sum": total, "loss_count": n}


def pad_encoder_inputs(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad input_ids (and token_type_ids when present) to the longest feature."""
    width = max(len(f["input_ids"]) for f in features)
    n = len(features)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long) if "token_type_ids" in features[0] else None
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
        mask[i, :k] = 1
        if types is not None:
            types[i, :k] = torch.tensor(f["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def pad_int_lists(rows: Sequence[Sequence[int]], pad: int, width: int | None = None) -> torch.Tensor:
    """Stack ragged int lists into one tensor padded with `pad` (e.g. -100 for ignored labels)."""
    width = width if width is not None else max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def labelled_pairs(examples: Sequence[Any], predictions: Sequence[Any], dataset: DatasetConfig, task: str
                   ) -> tuple[list[Any], list[Any]]:
    """Gold and predicted labels of the examples that have a gold `label` (a test split may have none; a
    warning says so when none has)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    labelled = [(ex.label, p) for ex, p in zip(examples, predictions, strict=True) if ex.label is not None]
    if not labelled:
        log.warning("dataset %s of task %s has no labels; nothing to score", dataset.name, task)
    return [g for g, _ in labelled], [p for _, p in labelled]


class LabelVocab:
    """A label ↔ id map that reports unknown labels instead of inventing ids."""

    def __init__(self, labels: Sequence[str] = ()):
        self.labels: list[str] = []
        self.index: dict[str, int] = {}
        for label in labels:
            self.add(label)

    def add(self, label: str) -> int:
        if label not in self.index:
            self.index[label] = len(self.labels)
            self.labels.append(label)
        return self.index[label]

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: str) -> bool:
        return label in self.index

    def id(self, label: str, where: str = "") -> int:
        try:
            return self.index[label]
        except KeyError:
            known = ", ".join(self.labels[:20]) + (" …" if len(self.labels) > 20 else "")
            raise DataError(f"{where}: unknown label {label!r} (known: {known})") from None

    def to_list(self) -> list[str]:
        return list(self.labels)


WORD_MARKERS = "▁Ġ"  # word-start markers of SentencePiece and byte-level BPE vocabularies


def marker_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of pieces that are nothing but a word-start marker ("▁", "Ġ").

    SentencePiece vocabularies often lack a "▁"-prefixed piece for a CJK word, so the word becomes
    a bare "▁" and then its characters; a head reading that bare piece would see the same vector
    for most Chinese and Japanese words. Cached on the tokenizer.
    """
    cached = getattr(tokenizer, "_mtl_marker_ids", None)
    if cached is not None:
        return cached
    ids = frozenset(i for piece, i in tokenizer.get_vocab().items() if piece and not piece.strip(WORD_MARKERS))
    try:
        tokenizer._mtl_marker_ids = ids
    except AttributeError:
        pass
    return ids


def encode_words(tokenizer: Any, words: Sequence[str], max_length: int) -> list[dict[str, Any]]:
    """Tokenise pre-split words for word-level heads, in windows that fit the encoder.

    Returns one or more windows, each {"input_ids", "word_starts", "word_ends", "first_word"}: word
    first_word + j spans the pieces word_starts[j] … word_ends[j] (inclusive), where the span starts at
    the word's first piece that carries characters: a bare word-start marker ("▁" alone) is skipped,
    unless it is all the word has. A word the tokenizer turns into nothing (a stray control character,
    say) is encoded as the unknown token, so every word keeps a position. Long sentences are cut at
    word boundaries, never truncated.
    """
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    pieces: list[list[int]] = [[] for _ in words]
    if words:
        # As one split sequence, so tokenizers that mark word starts (▁, Ġ) see each word as one.
        enc = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False)
        for tok_id, w in zip(enc["input_ids"], enc.word_ids(), strict=True):
            if w is not None:
                pieces[w].append(tok_id)
    pieces = [p if p else [unk] for p in pieces]
    markers = marker_ids(tokenizer)
    prefix, suffix = special_template(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for tokens")
    windows: list[dict[str, Any]] = []
    start = 0
    while start < len(words) or (start == 0 and not windows):
        ids: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        end = start
        while end < len(words):
            p = pieces[end][:budget]  # a single word longer than the window keeps its first pieces
            if ids and len(ids) + len(p) > budget:
                break
            skip = next((k for k, tok in enumerate(p) if tok not in markers), 0)
            starts.append(len(ids) + skip)
            ids.extend(p)
            ends.append(len(ids) - 1)
            end += 1
        windows.append({"input_ids": [*prefix, *ids, *suffix], "word_starts": [s + len(prefix) for s in starts],
                        "word_ends": [e + len(prefix) for e in ends], "first_word": start})
        if end == start:  # empty sentence
            break
        start = end
    return windows


def pool_words(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per word from its pieces [starts, ends] (inclusive): the first, the last, or their mean.

    x is [batch, pieces, hidden]; starts and ends are [batch, words] (padding words may point anywhere
    inside the row). The mean uses a running sum, so its cost does not grow with word length.
    """
    def at(index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return source.gather(1, index.unsqueeze(-1).expand(-1, -1, source.size(-1)))

    if pooling == "first":
        return at(starts, x)
    if pooling == "last":
        return at(ends, x)
    if pooling != "mean":
        raise ValueError(f"word pooling must be first, mean or last, not {pooling!r}")
    running = torch.cat([x.new_zeros(x.size(0), 1, x.size(-1)), x.cumsum(1)], dim=1)
    total = at(ends + 1, running) - at(starts, running)
    count = (ends - starts + 1).clamp(min=1).unsqueeze(-1).to(x.dtype)
    return total / count


def special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence, read off its own output
    (transformers 5 tokenizers no longer offer build_inputs_with_special_tokens)."""
    cached = getattr(tokenizer, "_mtl_special_template", None)
    if cached is not None:
        return cached
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next(i for i in range(len(full) - len(inner) + 1) if full[i : i + len(inner)] == inner)
    template = (full[:at], full[at + len(inner) :])
    try:
        tokenizer._mtl_special_template = template
    except AttributeError:
        pass
    return template
