"""Named-entity recognition: first-sub-word tagging in BIO or BIOES, an optional CRF, seqeval span F1.

Any reader of words (tasks/formats.py) serves: CoNLL-style column files (CoNLL-2003 with IOB1 tags
and -DOCSTART- lines, WikiANN with `en:` token prefixes, Weibo with per-character segment digits,
MSRA), CoNLL-U with entity tags in MISC (`NE=B-PER`, `Entity=B-PER`), and hub datasets with integer
`ner_tags`. Every input scheme becomes the task's scheme through entity spans, so
ill-formed sequences are found, counted and logged (or refused with `repair: error`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import DataError
from tasks import register
from tasks._bio import Repair, detect_scheme, from_spans, is_tag, label_set, to_spans
from tasks._conll import write_blocks
from tasks._crf import CRF, tag_constraints
from tasks.base import (
    EncoderInfo,
    LabelVocab,
    MixedHead,
    TaskFamily,
    WordLevelOptions,
    encode_words,
    loss_output,
    note_read,
    pad_encoder_inputs,
    pad_int_lists,
    pool_words,
)
from tasks.formats import WORDS, WordRecord, read_records

log = logging.getLogger(__name__)

IGNORE = -100
SHOW_REPAIRS = 3  # examples quoted in the log per file
MISC_TAGS = ("NE", "Entity", "NER")  # MISC keys read as entity tags (CoNLL-U with NE=B-PER style annotation)


@dataclass
class NerOptions(WordLevelOptions):
    """The `options:` of a ner task."""

    scheme: Literal["BIO", "BIOES"] = "BIO"  # tags the model predicts (and the strict metric's scheme)
    repair: Literal["repair", "error"] = "repair"  # ill-formed input sequences: fix and log, or stop
    crf: bool = False  # a CRF layer with Viterbi decoding instead of independent softmax tags


@dataclass
class NerExample:
    """One sentence: the words the encoder sees, gold tags in the task's scheme, and its source rows."""

    tokens: list[str]
    tags: list[str]
    source: str  # file:line of the first token, or hub:split[index] token 0
    rows: list[list[str]] | None = None  # every input column, for writing predictions beside them
    preamble: list[str] = field(default_factory=list)  # document markers before the sentence
    separator: str = "\t"


@dataclass
class _Raw:
    tokens: list[str]
    tags: list[str]
    where: list[str]  # location of each token, for messages
    rows: list[list[str]] | None = None
    preamble: list[str] = field(default_factory=list)


@register
class NerFamily(TaskFamily):
    """Entity tagging over words; the first sub-word of each word carries its tag."""

    name = "ner"
    Options = NerOptions
    accepts = (WORDS,)
    primary_metric = "f1"
    default_format = "conll"
    table_metrics = ("precision", "recall", "f1", "strict_precision", "strict_recall", "strict_f1")

    def __init__(self, task: TaskConfig, tokenizer: Any, max_length: int):
        super().__init__(task, tokenizer, max_length)
        self.vocab = LabelVocab()
        self.read_report: dict[str, dict[str, Any]] = {}  # per source: scheme found, spans repaired

    # ---------------------------------------------------------------- reading
    def read(self, dataset: DatasetConfig, role: str) -> list[NerExample]:
        """Sentences of any WORDS reader (a file or the hub), their tags in the task's scheme."""
        records = read_records(self, dataset, role)
        items, source = records.items, records.source
        separator = getattr(items[0], "separator", "\t") if items else "\t"
        scheme = getattr(records.options, "input_scheme", "auto")
        examples = self._convert(source, _raws(items, dataset), scheme, separator)
        if not examples:
            raise DataError(f"{source}: no sentences")
        return examples

    def _convert(self, source: str, raws: list[_Raw], scheme: str, separator: str) -> list[NerExample]:
        for raw in raws:
            for tag, where in zip(raw.tags, raw.where, strict=True):
                if not is_tag(tag):
                    raise DataError(f"{where}: tag {tag!r} is not O or B-/I-/E-/S-<type>")
        if scheme == "auto":
            scheme = detect_scheme([r.tags for r in raws])
            if scheme != "IOB2":
                log.info("%s: tags read as %s (set input_scheme to override)", source, scheme)
        if scheme != "BIOES":
            for raw in raws:
                for tag, where in zip(raw.tags, raw.where, strict=True):
                    if tag[:2] in ("E-", "S-"):
                        raise DataError(f"{where}: tag {tag!r} in a file read as {scheme} (set input_scheme)")
        examples, repaired, fixed = [], [], 0
        for raw in raws:
            spans, repairs = to_spans(raw.tags, scheme)
            if repairs and self.options.repair == "error":
                r = repairs[0]
                raise DataError(f"{raw.where[r.index]}: ill-formed {scheme} sequence: {r.reason} "
                                "(the ner option repair: repair reads it leniently)")
            repaired.extend((raw.where[r.index], r) for r in repairs)
            fixed += bool(repairs)
            examples.append(NerExample(raw.tokens, from_spans(spans, len(raw.tokens), self.options.scheme),
                                       raw.where[0] if raw.where else source, raw.rows, raw.preamble, separator))
        self.read_report[source] = {"scheme": scheme, "repaired": len(repaired), "sentences": len(examples)}
        note_read(repaired=fixed)
        _log_repairs(source, scheme, repaired)
        return examples

    # ---------------------------------------------------------------- vocabulary
    def fit(self, train_examples: Sequence[NerExample]) -> None:
        types = {tag[2:] for ex in train_examples for tag in ex.tags if tag != "O"}
        known = {lab[2:] for lab in self.vocab.labels if lab != "O"}
        for label in label_set(sorted(types | known), self.options.scheme):
            self.vocab.add(label)

    def check(self, examples: Sequence[NerExample], dataset: DatasetConfig, role: str) -> None:
        unseen = Counter(tag for ex in examples for tag in ex.tags if tag not in self.vocab)
        if not unseen:
            return
        if role == "train":
            tag = next(iter(unseen))
            where = next(ex.source for ex in examples if tag in ex.tags)
            raise DataError(f"{where}: tag {tag!r} is missing from the label vocabulary (fit on this data first)")
        listed = ", ".join(f"{t} ×{n}" for t, n in unseen.most_common(8))
        log.warning("dataset %r (%s): tags never seen in training: %s; they cannot be predicted and count as misses",
                    dataset.name, role, listed)

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.vocab.to_list(), "scheme": self.options.scheme}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scheme", self.options.scheme) != self.options.scheme:
            raise ValueError(f"checkpoint tags are {state['scheme']}, the task asks for {self.options.scheme}")
        self.vocab = LabelVocab(state["labels"])

    # ---------------------------------------------------------------- features
    def featurize(self, examples: Sequence[NerExample], role: str) -> list[dict[str, Any]]:
        feats = []
        for i, ex in enumerate(examples):
            ids = [self.vocab.index.get(tag, IGNORE) for tag in ex.tags]
            for window in encode_words(self.tokenizer, ex.tokens, self.max_length):
                n, first = len(window["word_starts"]), window["first_word"]
                feats.append({**window, "example_index": i, "labels": ids[first : first + n]})
        return feats

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_encoder_inputs(features, self.tokenizer.pad_token_id or 0)
        starts = [f["word_starts"] for f in features]
        batch["word_starts"] = pad_int_lists(starts, 0)
        batch["word_ends"] = pad_int_lists([f["word_ends"] for f in features], 0)
        batch["word_mask"] = pad_int_lists([[1] * len(s) for s in starts], 0).bool()
        if "labels" in features[0]:
            batch["labels"] = pad_int_lists([f["labels"] for f in features], IGNORE, batch["word_starts"].size(1))
        return batch

    # ---------------------------------------------------------------- model
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        if not len(self.vocab):
            raise ValueError(f"task {self.task.name!r}: no labels; call fit() on the training examples first")
        crf = CRF(len(self.vocab), *tag_constraints(self.vocab.labels)) if self.options.crf else None
        return TaggingHead(encoder, len(self.vocab), crf, self.options.word_pooling)

    # ---------------------------------------------------------------- output
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[list[str]]:
        preds = outputs["predictions"].cpu().tolist()
        lengths = batch["word_mask"].sum(1).tolist()
        return [[self.vocab.labels[t] for t in row[:n]] for row, n in zip(preds, lengths, strict=True)]

    def finalize(self, examples: Sequence[NerExample], features: Sequence[dict[str, Any]],
                 records: Sequence[list[str]]) -> list[list[str]]:
        """Join the windows of each sentence back into one tag per word."""
        preds: list[list[str | None]] = [[None] * len(ex.tokens) for ex in examples]
        for feat, rec in zip(features, records, strict=True):
            first = feat["first_word"]
            preds[feat["example_index"]][first : first + len(rec)] = rec
        for ex, pred in zip(examples, preds, strict=True):
            if any(p is None for p in pred):
                raise ValueError(f"{ex.source}: some words have no prediction (features missing for a window)")
        return preds  # type: ignore[return-value]

    def score(self, examples: Sequence[NerExample], predictions: Sequence[list[str]],
              dataset: DatasetConfig) -> dict[str, float]:
        return span_scores([ex.tags for ex in examples], list(predictions), self.options.scheme)

    def write_predictions(self, examples: Sequence[NerExample], predictions: Sequence[list[str]], path: Path) -> None:
        """The input's columns with the predicted tag appended (CoNLL style); it reads back as a ner file."""
        blocks = []
        for ex, pred in zip(examples, predictions, strict=True):
            rows = ex.rows if ex.rows is not None else [[tok, tag] for tok, tag in zip(ex.tokens, ex.tags, strict=True)]
            blocks.append((ex.preamble, rows, list(pred)))
        sep = examples[0].separator if examples else "\t"
        write_blocks(Path(path), blocks, sep)


class TaggingHead(MixedHead):
    """Mixed layers → dropout → one vector per word (its first piece, by default) → linear (→ CRF when asked)."""

    def __init__(self, encoder: EncoderInfo, num_labels: int, crf: CRF | None = None, pooling: str = "first"):
        super().__init__(encoder)
        self.proj = nn.Linear(encoder.hidden_size, num_labels)
        self.crf = crf
        self.pooling = pooling

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        words = pool_words(self.mixed(hidden_states), batch["word_starts"], batch["word_ends"], self.pooling)
        logits = self.proj(words)
        mask = batch["word_mask"]
        out = {"logits": logits}
        labels = batch.get("labels")
        if labels is not None:
            out.update(self._loss(logits, labels, mask))
        if not self.training or labels is None:
            if self.crf is not None:
                out["predictions"] = pad_int_lists(self.crf.decode(logits, mask), 0, logits.size(1)).to(logits.device)
            else:
                out["predictions"] = logits.argmax(-1)
        return out

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy averaged over labelled words; with a CRF, the sequence NLL averaged over sentences
        (windows) that have words, since the CRF scores a whole sequence at once."""
        if self.crf is not None:
            # Tags unseen in training (eval sets only) cannot be scored by the CRF; read them as O.
            nll = -self.crf.log_likelihood(logits, labels.masked_fill(labels < 0, 0), mask)
            return loss_output([nll.sum()], [mask.bool().any(1).sum()])
        count = (labels != IGNORE).sum()
        if not bool(count):
            return loss_output([logits.sum() * 0.0], [count])
        flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
        return loss_output([flat], [count])


def span_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str) -> dict[str, float]:
    """seqeval span precision/recall/F1 (×100): conlleval-compatible overall and per type, plus strict mode.

    Strict mode counts a predicted entity only if its tags are well-formed in the scheme
    (an entity opened with I- is not an entity); the default mode reads leniently as conlleval.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    gold, pred = [list(s) for s in gold], [list(s) for s in pred]
    lenient = classification_report(gold, pred, output_dict=True, zero_division=0)
    strict = classification_report(gold, pred, output_dict=True, zero_division=0, mode="strict",
                                   scheme=IOBES if scheme == "BIOES" else IOB2)
    out = {
        "precision": 100 * float(lenient["micro avg"]["precision"]),
        "recall": 100 * float(lenient["micro avg"]["recall"]),
        "f1": 100 * float(lenient["micro avg"]["f1-score"]),
        "strict_precision": 100 * float(strict["micro avg"]["precision"]),
        "strict_recall": 100 * float(strict["micro avg"]["recall"]),
        "strict_f1": 100 * float(strict["micro avg"]["f1-score"]),
    }
    for name, row in lenient.items():
        if name not in ("micro avg", "macro avg", "weighted avg"):
            out[f"f1_{name}"] = 100 * float(row["f1-score"])
    return out


# --------------------------------------------------------------------------- readers


def _raws(records: Sequence[WordRecord], dataset: DatasetConfig) -> list[_Raw]:
    """Words and tags from any WORDS reader: the column `fields.tags` names, else `tag` (column files),
    else the first MISC key of MISC_TAGS found (CoNLL-U); a word without a value is O."""
    if not records:
        return []
    name = dataset.fields.get("tags")
    if name is None:
        name = next((n for n in ("tag", *MISC_TAGS) if any(r.has(n) for r in records)), None)
    if name is None:
        raise DataError(f"{records[0].locations()[0]}: no tag column; set fields: {{tags: KEY}} to the column "
                        f"or MISC key holding the entity tags (looked for: tag, {', '.join(MISC_TAGS)})")
    raws = []
    for rec in records:
        tags = ["O" if t == "_" else t for t in rec.column(name)]
        raws.append(_Raw(list(rec.words), tags, rec.locations(), getattr(rec, "rows", None),
                         list(getattr(rec, "preamble", []))))
    return raws


def _log_repairs(source: str, scheme: str, repaired: list[tuple[str, Repair]]) -> None:
    if not repaired:
        return
    shown = "; ".join(f"{where}: {r.reason}" for where, r in repaired[:SHOW_REPAIRS])
    log.warning("%s: repaired %d ill-formed %s entit%s, e.g. %s", source, len(repaired), scheme,
                "y" if len(repaired) == 1 else "ies", shown)
