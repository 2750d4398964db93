"""Sentence and sentence-pair classification and regression (GLUE, XNLI, sentiment …).

The head reads the first token ([CLS] / <s>) of the task's scalar mix of encoder layers.
Inputs longer than the encoder are cut at the head, the tail, or both ends (Sun et al.
2019 keep a quarter from the start and the rest from the end), or read in overlapping
windows whose first-token vectors are mean- or max-pooled into one vector per example.
A pair is cut from its longer text first; in windows, the longer text slides and the
shorter one (up to half the budget) is repeated in every window.

All four modes tokenise each input once, without truncation, and then choose which
positions to keep, using the tokenizer's own special tokens and sequence ids; so they work
for any fast tokenizer and one over-long first text cannot fail a whole batch (it makes
the tokenizer's built-in overflow raise). Windows match `return_overflowing_tokens` with
`stride` token for token.

Windows stay inside one feature: a feature's `input_ids` holds all of its windows one
after another and `window_lengths` says where each ends. `collate` splits them into rows
of the batch and records which example each row belongs to, so the head pools the
windows of an example in one batch, the sampler sees the real token cost of an example
as len(input_ids), and `finalize` stays one prediction per feature. The encoder still sees
at most a batch's worth of those rows per pass (mtl/model.py), so one huge input does not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError, DataError
from tasks import register
from tasks._classification_metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_scores,
    regression_scores,
)
from tasks.base import (
    EncoderInfo,
    FamilyOptions,
    LabelVocab,
    MixedHead,
    TaskFamily,
    labelled_pairs,
    loss_output,
    note_read,
    pad_encoder_inputs,
)
from tasks.formats import ROWS, read_records
from tasks.readers import cell_text, one_line, table_format

log = logging.getLogger(__name__)

DEFAULT_FIELDS = {"text": "sentence", "label": "label"}
KNOWN_FIELDS = ("text", "text_pair", "label", "id")


@dataclass
class ClassificationOptions(FamilyOptions):
    """The `options:` block of a classification task."""

    labels: list[str] | None = None  # the declared label set; default: the training labels, sorted
    regression: bool = False  # a real-valued label (STS-B): MSE loss, correlation metrics
    metrics: list[str] | None = None  # default: accuracy+f1 (2 classes), accuracy (more), pearson+spearman
    primary_metric: str | None = None  # default: the first metric (accuracy, or pearson for regression)
    positive_label: str | None = None  # positive class for f1; default: the second label
    skip_labels: list[str] = field(default_factory=list)  # labels that mark rows to skip (OCNLI's "-")
    long_inputs: Literal["head", "tail", "head_tail", "windows"] = "head"
    head_tokens: int | None = None  # head_tail: tokens kept from the start; default a quarter of the budget
    window_stride: int | None = None  # windows: tokens neighbouring windows share (HF's stride); default window/4
    pool: Literal["mean", "max"] = "mean"  # windows: how window vectors become one
    # windows: at most this many per input (its first ones; how many inputs were cut is logged), so one huge
    # row cannot fill memory; None: no cap
    max_windows: int | None = 64

    def __post_init__(self) -> None:
        allowed = REGRESSION_METRICS if self.regression else CLASSIFICATION_METRICS
        kind = "regression" if self.regression else "classification"
        for name in self.metrics or []:
            if name not in allowed:
                raise ConfigError(f"options.metrics: {name!r} is not a {kind} metric (allowed: {', '.join(allowed)})")
        if self.metrics is not None and not self.metrics:
            raise ConfigError("options.metrics: name at least one metric, or leave it out for the defaults")
        if self.primary_metric is not None:
            among = self.metrics if self.metrics is not None else allowed
            if self.primary_metric not in among:
                raise ConfigError(f"options.primary_metric: {self.primary_metric!r} is not among {list(among)}")
        if self.regression and (self.labels is not None or self.positive_label is not None):
            raise ConfigError("options: labels and positive_label do not apply to regression")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"options.labels: repeated label in {self.labels}")
        if self.labels is not None and len(self.labels) < 2:
            raise ConfigError("options.labels: a classifier needs at least two labels")
        if self.head_tokens is not None and self.head_tokens < 0:
            raise ConfigError("options.head_tokens: must be ≥ 0")
        if self.window_stride is not None and self.window_stride < 0:
            raise ConfigError("options.window_stride: must be ≥ 0")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError("options.max_windows: must be at least 1 (or null: no cap)")


@dataclass
class ClassificationExample:
    """One input (a text or a pair) with its label: a class name, a float, or None when unlabelled."""

    text: str
    text_pair: str | None
    label: str | float | None
    where: str  # file:line, for error messages
    id: str | None = None


@register
class Classification(TaskFamily):
    """[CLS] classification or regression over one text or a pair of texts."""

    name = "classification"
    windows_cut: int = 0  # inputs cut to options.max_windows by the last featurize
    Options = ClassificationOptions
    accepts = (ROWS,)

    def __init__(self, task: TaskConfig, tokenizer: Any, max_length: int):
        super().__init__(task, tokenizer, max_length)
        opts: ClassificationOptions = self.options
        self.vocab: LabelVocab | None = LabelVocab(opts.labels) if opts.labels is not None else None
        self.primary_metric = opts.primary_metric or (opts.metrics or ["pearson" if opts.regression else "accuracy"])[0]

    # ---------------------------------------------------------------- data
    @classmethod
    def format_name(cls, dataset: DatasetConfig) -> str | None:
        return table_format(dataset)

    def read(self, dataset: DatasetConfig, role: str) -> list[ClassificationExample]:
        """Rows of any table reader (a file or the hub) as examples; label_map and skip_labels applied."""
        records = read_records(self, dataclasses.replace(dataset, fields=self._fields(dataset)), role)
        rows, reader = records.items, records.options
        examples: list[ClassificationExample] = []
        skipped = 0
        for row in rows:
            label = row.get("label")
            if isinstance(label, str):
                label = label.strip()
            if label is not None and str(label) in self.options.skip_labels:
                skipped += 1
                continue
            if reader.label_map is not None and label not in (None, ""):
                if str(label) not in reader.label_map:
                    raise DataError(f"{row['_where']}: label {label!r} is not in options.label_map "
                                    f"({', '.join(reader.label_map)})")
                label = reader.label_map[str(label)]
            examples.append(self._example(row, label))
        source = dataset.split(role)
        note_read(skipped=skipped)
        if skipped:
            log.warning("%s: skipped %d of %d rows whose label is in skip_labels %s", source, skipped, len(rows),
                        self.options.skip_labels)
        if not examples:
            raise DataError(f"{source}: no examples left (every row has a label in skip_labels)")
        self._check_labelled(examples, role)
        return examples

    def _fields(self, dataset: DatasetConfig) -> dict[str, Any]:
        fields = dict(dataset.fields) if dataset.fields else dict(DEFAULT_FIELDS)
        unknown = sorted(set(fields) - set(KNOWN_FIELDS))
        if unknown:
            raise DataError(f"dataset {dataset.name}: unknown field(s) {unknown} (allowed: {', '.join(KNOWN_FIELDS)})")
        if "text" not in fields:
            raise DataError(f"dataset {dataset.name}: fields must name the `text` column")
        if "label" not in fields:
            if any(isinstance(v, int) for v in fields.values()):
                raise DataError(f"dataset {dataset.name}: fields must give the `label` column index")
            fields["label"] = DEFAULT_FIELDS["label"]
        return fields

    def _example(self, row: dict[str, Any], label: Any) -> ClassificationExample:
        where = row["_where"]
        text = cell_text(row.get("text"), "text", where)
        pair = cell_text(row["text_pair"], "text_pair", where) if "text_pair" in row else None
        if label == "" or label is None:
            label = None
        elif self.options.regression:
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise DataError(f"{where}: label {label!r} is not a number (regression: true)") from None
        else:
            label = str(label)
        ident = row.get("id")
        return ClassificationExample(text, pair, label, where, None if ident is None else str(ident))

    @staticmethod
    def _check_labelled(examples: Sequence[ClassificationExample], role: str) -> None:
        """Train and dev rows need labels; a test split is labelled completely or not at all."""
        missing = [ex for ex in examples if ex.label is None]
        if not missing or (role == "test" and len(missing) == len(examples)):
            return
        raise DataError(f"{missing[0].where}: empty label in a labelled {role} split "
                        "(use options.skip_labels to skip rows with a placeholder label)")

    def fit(self, train_examples: Sequence[ClassificationExample]) -> None:
        if self.options.regression:
            return
        if self.options.labels is None:
            seen = {ex.label for ex in train_examples if ex.label is not None}
            if len(seen) < 2:
                raise DataError(f"the training data of task {self.task.name!r} has {len(seen)} distinct label(s); "
                                "a classifier needs at least two")
            self.vocab = LabelVocab(_sorted_labels(seen))
        else:
            self.vocab = LabelVocab(self.options.labels)
            self.check(train_examples, None, "train")
        self._check_metric_labels()

    def _check_metric_labels(self) -> None:
        assert self.vocab is not None
        binary_metrics = {"f1", "accuracy_f1"} & set(self.metric_names())
        if binary_metrics and len(self.vocab) != 2:
            raise ConfigError(f"task {self.task.name}: metric(s) {sorted(binary_metrics)} need exactly two labels, "
                              f"found {len(self.vocab)}: {self.vocab.labels}; use macro_f1")
        if self.options.positive_label is not None and self.options.positive_label not in self.vocab:
            raise ConfigError(f"task {self.task.name}: positive_label {self.options.positive_label!r} "
                              f"is not a label ({self.vocab.labels})")

    def check(self, examples: Sequence[ClassificationExample], dataset: DatasetConfig | None, role: str) -> None:
        if self.options.regression:
            return
        vocab = self._require_vocab()
        origin = "declared labels" if self.options.labels is not None else "labels of the training data"
        for ex in examples:
            if ex.label is not None and ex.label not in vocab:
                raise DataError(f"{ex.where}: label {ex.label!r} is not among the {origin} ({', '.join(vocab.labels)})")

    def _require_vocab(self) -> LabelVocab:
        if self.vocab is None:
            raise RuntimeError(f"task {self.task.name}: call fit() or load_state_dict() before featurize/decode")
        return self.vocab

    # ---------------------------------------------------------------- features
    def featurize(self, examples: Sequence[ClassificationExample], role: str) -> list[dict[str, Any]]:
        if not examples:
            return []
        texts = [ex.text for ex in examples]
        pairs = [ex.text_pair or "" for ex in examples] if any(ex.text_pair is not None for ex in examples) else None
        enc = self.tokenizer(texts, pairs, truncation=False, verbose=False)
        has_types = "token_type_ids" in enc
        self.windows_cut = 0
        features = []
        for i, ex in enumerate(examples):
            ids = enc["input_ids"][i]
            types = enc["token_type_ids"][i] if has_types else None
            windows = self._select(enc.sequence_ids(i))
            feat: dict[str, Any] = {"example_index": i, "input_ids": [ids[j] for w in windows for j in w]}
            if types is not None:
                feat["token_type_ids"] = [types[j] for w in windows for j in w]
            if len(windows) > 1:
                feat["window_lengths"] = [len(w) for w in windows]
            if ex.label is not None:
                feat["label"] = ex.label if self.options.regression else self._require_vocab().id(ex.label, ex.where)
            features.append(feat)
        if self.windows_cut:
            log.warning("task %s: %d of %d inputs need more than options.max_windows=%d windows; they keep their "
                        "first %d (set max_windows: null for no cap)", self.task.name, self.windows_cut,
                        len(examples), self.options.max_windows, self.options.max_windows)
        return features

    def _select(self, seq_ids: list[int | None]) -> list[list[int]]:
        """Positions of the encoded input to keep: one list per window, special tokens always kept."""
        segments = [[j for j, s in enumerate(seq_ids) if s == k] for k in (0, 1)]
        specials = [j for j, s in enumerate(seq_ids) if s is None]
        n_special = len(specials)
        budget = self.max_length - n_special
        if budget < 1:
            raise ConfigError(f"max_length {self.max_length} leaves no room for tokens")
        a, b = segments
        if len(a) + len(b) <= budget:
            return [list(range(len(seq_ids)))]
        mode = self.options.long_inputs
        if mode == "windows":
            # Slide over the longer text; the shorter one (at most half the budget) is in every window.
            sliding, other = (a, b) if len(a) >= len(b) else (b, a)
            fixed = set(other[: budget // 2])
            size = budget - len(fixed)
            spans = window_spans(len(sliding), size, self._stride(size))
            cap = self.options.max_windows
            if cap is not None and len(spans) > cap:
                self.windows_cut += 1
                spans = spans[:cap]
            # each window's positions in input order: the special tokens, the fixed text and its own chunk
            return [sorted(fixed.union(specials, sliding[s:e])) for s, e in spans]
        keep_a, keep_b = _allot(len(a), len(b), budget)
        kept = set(self._cut(a, keep_a, budget)) | set(self._cut(b, keep_b, budget))
        return [sorted(kept.union(specials))]

    def _cut(self, positions: list[int], keep: int, budget: int) -> list[int]:
        if keep >= len(positions):
            return positions
        mode = self.options.long_inputs
        if mode == "tail":
            return positions[len(positions) - keep :]
        if mode == "head_tail":
            head = self.options.head_tokens if self.options.head_tokens is not None else budget // 4
            head = min(head, keep)
            return positions[:head] + positions[len(positions) - (keep - head) :]
        return positions[:keep]

    def _stride(self, window: int) -> int:
        return self.options.window_stride if self.options.window_stride is not None else window // 4

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[dict[str, Any]] = []
        owner: list[int] = []
        for i, f in enumerate(features):
            lengths = f.get("window_lengths") or [len(f["input_ids"])]
            start = 0
            for n in lengths:
                row = {"input_ids": f["input_ids"][start : start + n]}
                if "token_type_ids" in f:
                    row["token_type_ids"] = f["token_type_ids"][start : start + n]
                rows.append(row)
                owner.append(i)
                start += n
        batch = pad_encoder_inputs(rows, self.tokenizer.pad_token_id or 0)
        if len(rows) != len(features):
            batch["window_example"] = torch.tensor(owner, dtype=torch.long)
        if features and all("label" in f for f in features):
            dtype = torch.float if self.options.regression else torch.long
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
        return batch

    # ---------------------------------------------------------------- model
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        outputs = 1 if self.options.regression else len(self._require_vocab())
        return ClassificationHead(encoder, outputs, self.options.regression, self.options.pool)

    # ---------------------------------------------------------------- output
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        logits = outputs["logits"].detach().float().cpu()
        if self.options.regression:
            return [float(v) for v in logits[:, 0]]
        labels = self._require_vocab().labels
        return [labels[i] for i in logits.argmax(dim=-1).tolist()]

    def metric_names(self) -> list[str]:
        """The metrics `score` reports, in order."""
        opts = self.options
        if opts.metrics is not None:
            return list(opts.metrics)
        if opts.regression:
            names = ["pearson", "spearman"]
        else:
            names = ["accuracy", "f1"] if self.vocab is not None and len(self.vocab) == 2 else ["accuracy"]
        if opts.primary_metric is not None and opts.primary_metric not in names:
            names.append(opts.primary_metric)
        return names

    def score(self, examples: Sequence[ClassificationExample], predictions: Sequence[Any],
              dataset: DatasetConfig) -> dict[str, float]:
        gold, pred = labelled_pairs(examples, predictions, dataset, self.task.name)
        if not gold:
            return {}
        if self.options.regression:
            scores = regression_scores(self.metric_names(), gold, pred)
        else:
            labels = self._require_vocab().labels
            positive = self.options.positive_label or (labels[1] if len(labels) == 2 else None)
            scores = classification_scores(self.metric_names(), gold, pred, positive)
        return {k: 100.0 * v for k, v in scores.items()}  # percentages, as every family reports (and GLUE)

    def write_predictions(self, examples: Sequence[ClassificationExample], predictions: Sequence[Any],
                          path: Path) -> None:
        """A TSV like a GLUE submission (index, prediction) followed by the input texts."""
        pairs = any(ex.text_pair is not None for ex in examples)
        header = ["index", "prediction", "text"] + (["text_pair"] if pairs else [])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(header)]
        for i, (ex, pred) in enumerate(zip(examples, predictions, strict=True)):
            value = f"{pred:.6g}" if isinstance(pred, float) else str(pred)
            row = [ex.id if ex.id is not None else str(i), value, ex.text]
            if pairs:
                row.append(ex.text_pair or "")
            lines.append("\t".join(one_line(c) for c in row))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"regression": self.options.regression, "labels": self.vocab.to_list() if self.vocab else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state.get("regression")) != self.options.regression:
            trained = state.get("regression")
            raise ValueError(f"task {self.task.name}: the checkpoint was trained with regression={trained}")
        labels = state.get("labels")
        self.vocab = LabelVocab(labels) if labels is not None else None


class ClassificationHead(MixedHead):
    """Mixed layers → first token → (pool windows) → dropout → linear; cross-entropy or MSE.

    It reads position 0 only, so the model may encode a batch of many windows in passes of a few rows and
    hand it just each row's first-token vectors (mtl/model.py)."""

    reads_first_token = True

    def __init__(self, encoder: EncoderInfo, outputs: int, regression: bool, pool: str = "mean"):
        super().__init__(encoder)
        self.out = nn.Linear(encoder.hidden_size, outputs)
        self.regression = regression
        self.pool = pool

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first = self.mix(hidden_states)[:, 0]
        if "window_example" in batch:
            first = pool_windows(first, batch["window_example"], self.pool)
        logits = self.out(self.dropout(first))
        out = {"logits": logits}
        if "labels" in batch:
            labels = batch["labels"]
            if self.regression:  # averaged over examples, as every loss here
                total = nn.functional.mse_loss(logits[:, 0].float(), labels.float(), reduction="sum")
            else:
                total = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            out.update(loss_output([total], [labels.size(0)]))
        return out


def pool_windows(vectors: torch.Tensor, owner: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per example from the vectors of its windows; `owner` maps window → example (sorted)."""
    n = int(owner[-1]) + 1
    index = owner.unsqueeze(-1).expand_as(vectors)
    out = vectors.new_zeros((n, vectors.shape[-1]))
    if mode == "max":
        return out.scatter_reduce(0, index, vectors, reduce="amax", include_self=False)
    return out.scatter_reduce(0, index, vectors, reduce="mean", include_self=False)


def window_spans(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of `size` tokens covering n tokens, neighbours sharing `stride` tokens (as HF's stride)."""
    if size < 1:
        raise ConfigError("max_length leaves no room for a window; raise encoder.max_length")
    if stride >= size:
        raise ConfigError(f"options.window_stride ({stride}) must be smaller than the window ({size} tokens)")
    spans = [(0, min(size, n))]
    while spans[-1][1] < n:
        start = spans[-1][1] - stride
        spans.append((start, min(start + size, n)))
    return spans


def _allot(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Tokens kept from each text of a pair: the longer text gives way first (HF's longest_first)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_b == 0:
        return budget, 0
    if len_a <= budget // 2:
        return len_a, budget - len_a
    if len_b <= budget // 2:
        return budget - len_b, len_b
    return budget - budget // 2, budget // 2


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sorted; numerically when every label is an integer, so "10" follows "9"."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)
