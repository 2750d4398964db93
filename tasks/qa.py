"""Extractive question answering: start/end logits over the context, in windows with a doc stride.

SQuAD-format JSON (v1.1, v2.0 with unanswerable questions; DRCD and XQuAD use the same format)
or hub datasets with the `squad` columns (read by tasks/qa_format.py). Long contexts become
overlapping windows; answers are cut from the original context by character offsets, so the
prediction is exactly a piece of it.
Metrics: SQuAD EM/F1, or the character-level Chinese variant when the dataset's language is zh.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import DataError
from tasks import register
from tasks._squad_metrics import best_over, evaluate, from_rows, metrics_for
from tasks.base import (
    EncoderInfo,
    FamilyOptions,
    MixedHead,
    TaskFamily,
    loss_output,
    pad_encoder_inputs,
    pad_int_lists,
)
from tasks.formats import QA, read_records
from tasks.qa_format import Answer, QAExample, SquadOptions

log = logging.getLogger(__name__)

MASKED = -10000.0


@dataclass
class QAOptions(FamilyOptions):
    """The `options:` of a qa task."""

    max_length: int | None = None  # tokens per window; default: the encoder's max_length
    doc_stride: int = 128  # tokens shared by consecutive windows of one context
    max_question_length: int = 64  # longer questions are cut to this many tokens
    n_best: int = 20  # start and end candidates per window
    max_answer_length: int = 30  # tokens
    null_threshold: float = 0.0  # SQuAD v2: answer "" when null score - best span score > this
    no_answer: bool | None = None  # allow "" answers; None: for datasets with unanswerable questions

    def __post_init__(self) -> None:
        for name in ("doc_stride", "max_question_length", "n_best", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"qa option {name} must be at least 1, got {getattr(self, name)}")


@dataclass
class _Batch:
    """Examples tokenised together (they share one stride)."""

    indices: list[int] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)


@register
class QAFamily(TaskFamily):
    """Span extraction: the head scores each context token as answer start and answer end."""

    name = "qa"
    Options = QAOptions
    accepts = (QA,)
    primary_metric = "f1"
    default_dropout = 0.0  # as Hugging Face's question-answering heads: the span scorer reads the layer as it is
    default_format = "squad"

    def __init__(self, task: TaskConfig, tokenizer: Any, max_length: int):
        super().__init__(task, tokenizer, max_length)
        self.window = self.options.max_length or max_length
        self.read_report: dict[str, dict[str, int]] = {}

    # ---------------------------------------------------------------- reading
    def read(self, dataset: DatasetConfig, role: str) -> list[QAExample]:
        """The questions of any QA reader (a file or the hub), every answer checked against its context."""
        records = read_records(self, dataset, role)
        source = records.source
        examples = self._check_answers(source, records.items, records.options, role)
        if not examples:
            raise DataError(f"{source}: no questions")
        allow = self.options.no_answer
        if allow is None:
            allow = any(ex.is_impossible for ex in examples)
        for ex in examples:
            ex.allow_null = allow
        return examples

    def _check_answers(self, source: str, examples: list[QAExample], opts: SquadOptions, role: str) -> list[QAExample]:
        seen: set[str] = set()
        moved = 0
        for ex in examples:
            if ex.id in seen:
                raise DataError(f"{source}: question id {ex.id!r} occurs twice")
            seen.add(ex.id)
            if ex.is_impossible and ex.answers:
                raise DataError(f"{source}: question {ex.id}: marked is_impossible but has answers")
            if not ex.is_impossible and not ex.answers:
                raise DataError(f"{source}: question {ex.id}: no answers (SQuAD v2 marks unanswerable "
                                "questions with is_impossible: true)")
            for ans in ex.answers:
                moved += _check_offset(ex, ans, source, opts.relocate_answers)
        if moved:
            log.warning("%s: re-located %d answer(s) whose answer_start did not match the context", source, moved)
        unanswerable = sum(ex.is_impossible for ex in examples)
        self.read_report[source] = {"questions": len(examples), "unanswerable": unanswerable, "relocated": moved}
        return examples

    # ---------------------------------------------------------------- features
    def featurize(self, examples: Sequence[QAExample], role: str) -> list[dict[str, Any]]:
        """Question + context windows (only the context is cut), labelled with the first answer's tokens."""
        feats: list[dict[str, Any]] = []
        for stride, batch in self._stride_groups(examples).items():
            enc = self.tokenizer(
                batch.questions,
                [examples[i].context for i in batch.indices],
                truncation="only_second",
                max_length=self.window,
                stride=stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            for j in range(len(enc["input_ids"])):
                index = batch.indices[enc["overflow_to_sample_mapping"][j]]
                feats.append(self._feature(enc, j, index, examples[index]))
        feats.sort(key=lambda f: (f["example_index"], f["window"]))
        previous, n = None, 0
        for f in feats:  # a question's windows are numbered 0, 1, …, not by their place in the tokenizer's batch
            n = n + 1 if f["example_index"] == previous else 0
            f["window"], previous = n, f["example_index"]
        return feats

    def _stride_groups(self, examples: Sequence[QAExample]) -> dict[int, _Batch]:
        """Cut long questions, and give a question that leaves too little room a smaller stride."""
        questions, lengths = self._questions(examples)
        specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        groups: dict[int, _Batch] = defaultdict(_Batch)
        narrowed = 0
        for i, (q, n) in enumerate(zip(questions, lengths, strict=True)):
            room = self.window - n - specials
            if room < 2:
                raise ValueError(f"qa max_length {self.window} leaves no room for the context of question "
                                 f"{examples[i].id} (lower max_question_length or raise max_length)")
            stride = self.options.doc_stride if self.options.doc_stride < room else room // 2
            narrowed += stride != self.options.doc_stride
            groups[stride].indices.append(i)
            groups[stride].questions.append(q)
        if narrowed:
            log.info("qa: %d question(s) leave at most doc_stride=%d context tokens per window; "
                     "their windows overlap by half a window instead", narrowed, self.options.doc_stride)
        return groups

    def _questions(self, examples: Sequence[QAExample]) -> tuple[list[str], list[int]]:
        """Questions (cut to max_question_length tokens) and their token counts."""
        limit = self.options.max_question_length
        questions = [ex.question.lstrip() for ex in examples]
        enc = self.tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        lengths = [len(ids) for ids in enc["input_ids"]]
        cut = [i for i, n in enumerate(lengths) if n > limit]
        for i in cut:
            questions[i] = questions[i][: enc["offset_mapping"][i][limit - 1][1]]
        if cut:
            again = self.tokenizer([questions[i] for i in cut], add_special_tokens=False)["input_ids"]
            for i, ids in zip(cut, again, strict=True):
                lengths[i] = len(ids)
            log.info("qa: %d question(s) cut to about %d tokens", len(cut), limit)
        return questions, lengths

    def _feature(self, enc: Any, j: int, index: int, ex: QAExample) -> dict[str, Any]:
        ids = enc["input_ids"][j]
        seq = enc.sequence_ids(j)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][j], seq, strict=True)]
        cls = ids.index(self.tokenizer.cls_token_id) if self.tokenizer.cls_token_id in ids else 0
        feat: dict[str, Any] = {
            "input_ids": ids,
            "example_index": index,
            "window": j,
            "offsets": offsets,
            "span_mask": [int(o is not None or k == cls) for k, o in enumerate(offsets)],
            "cls_index": cls,
        }
        if "token_type_ids" in enc:
            feat["token_type_ids"] = enc["token_type_ids"][j]
        if ex.answers:
            ans = ex.answers[0]
            pos = answer_tokens(offsets, ans.start, ans.start + len(ans.text))
            feat["start_positions"], feat["end_positions"] = pos if pos is not None else (cls, cls)
        elif ex.is_impossible:
            feat["start_positions"] = feat["end_positions"] = cls
        return feat

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_encoder_inputs(features, self.tokenizer.pad_token_id or 0)
        batch["span_mask"] = pad_int_lists([f["span_mask"] for f in features], 0, batch["input_ids"].size(1)).bool()
        batch["cls_index"] = torch.tensor([f["cls_index"] for f in features], dtype=torch.long)
        if all("start_positions" in f for f in features):
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features], dtype=torch.long)
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features], dtype=torch.long)
        return batch

    # ---------------------------------------------------------------- model
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        return SpanHead(encoder)

    # ---------------------------------------------------------------- output
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Per window: the null score and the n best (score, start token, end token) spans."""
        start, end = outputs["start_logits"].float().cpu(), outputs["end_logits"].float().cpu()
        mask = batch["span_mask"].cpu().clone()
        cls = batch["cls_index"].cpu()
        rows = torch.arange(len(cls))
        null = (start[rows, cls] + end[rows, cls]).tolist()
        mask[rows, cls] = False
        k = min(self.options.n_best, start.size(1))
        top_s = start.masked_fill(~mask, float("-inf")).topk(k, dim=1)
        top_e = end.masked_fill(~mask, float("-inf")).topk(k, dim=1)
        pair = top_s.values.unsqueeze(2) + top_e.values.unsqueeze(1)  # [B, k, k]
        length = top_e.indices.unsqueeze(1) - top_s.indices.unsqueeze(2)
        ok = (length >= 0) & (length < self.options.max_answer_length) & torch.isfinite(pair)
        pair = pair.masked_fill(~ok, float("-inf"))
        records = []
        for b in range(len(cls)):
            flat = pair[b].flatten()
            best = flat.topk(min(self.options.n_best, flat.numel()))
            spans = [(float(v), int(top_s.indices[b, i // k]), int(top_e.indices[b, i % k]))
                     for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True) if v != float("-inf")]
            records.append({"null": null[b], "spans": spans})
        return records

    def finalize(self, examples: Sequence[QAExample], features: Sequence[dict[str, Any]],
                 records: Sequence[dict[str, Any]]) -> list[str]:
        """The best span over all windows of each question, as text cut from its context."""
        best: list[tuple[float, str] | None] = [None] * len(examples)
        null: list[float] = [float("inf")] * len(examples)
        for feat, rec in zip(features, records, strict=True):
            i, ex, offsets = feat["example_index"], examples[feat["example_index"]], feat["offsets"]
            null[i] = min(null[i], rec["null"])
            for score, s, e in rec["spans"]:
                if best[i] is None or score > best[i][0]:
                    best[i] = (score, ex.context[offsets[s][0] : offsets[e][1]])
        preds = []
        for i, ex in enumerate(examples):
            choice = best[i]
            if choice is None or (ex.allow_null and null[i] - choice[0] > self.options.null_threshold):
                preds.append("")
            else:
                preds.append(choice[1])
        return preds

    def score(self, examples: Sequence[QAExample], predictions: Sequence[str],
              dataset: DatasetConfig) -> dict[str, float]:
        golds = {ex.id: [a.text for a in ex.answers] for ex in examples}
        preds = dict(zip((ex.id for ex in examples), predictions, strict=True))
        return evaluate(preds, golds, dataset.language)

    def sample_scorer(self, examples: Sequence[QAExample], predictions: Sequence[str],
                      dataset: DatasetConfig) -> Callable[[Sequence[int]], dict[str, float]]:
        """Each question's exact match and F1 once; a resample's metrics are their means over its questions,
        by position, so a question drawn twice counts twice."""
        exact_fn, f1_fn = metrics_for(dataset.language)
        rows = []
        for ex, pred in zip(examples, predictions, strict=True):
            golds = [a.text for a in ex.answers]
            rows.append((best_over(exact_fn, pred, golds), best_over(f1_fn, pred, golds), bool(golds)))

        def score(indices: Sequence[int]) -> dict[str, float]:
            return from_rows([rows[i] for i in indices])

        return score

    def write_predictions(self, examples: Sequence[QAExample], predictions: Sequence[str], path: Path) -> None:
        """{question id: answer text}, the file the official SQuAD evaluation script reads."""
        out = {ex.id: pred for ex, pred in zip(examples, predictions, strict=True)}
        Path(path).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


class SpanHead(MixedHead):
    """Mixed layers → dropout → two scores per token; tokens outside the context (but [CLS]) are masked."""

    def __init__(self, encoder: EncoderInfo):
        super().__init__(encoder)
        self.proj = nn.Linear(encoder.hidden_size, 2)

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.proj(self.mixed(hidden_states))
        mask = batch["span_mask"]
        start = logits[..., 0].masked_fill(~mask, MASKED)
        end = logits[..., 1].masked_fill(~mask, MASKED)
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:  # the mean of start and end cross-entropy, averaged over windows
            loss_start = F.cross_entropy(start.float(), batch["start_positions"], reduction="sum")
            loss_end = F.cross_entropy(end.float(), batch["end_positions"], reduction="sum")
            out.update(loss_output([(loss_start + loss_end) / 2], [start.size(0)]))
        return out


def answer_tokens(offsets: Sequence[tuple[int, int] | None], start: int, end: int) -> tuple[int, int] | None:
    """First and last context token of the characters [start, end) in one window, or None if the
    window does not hold the whole answer."""
    inside = [k for k, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return None
    first = next(k for k in inside if offsets[k][1] > start)
    last = next(k for k in reversed(inside) if offsets[k][0] < end)
    return (first, last) if first <= last else None


def _check_offset(ex: QAExample, ans: Answer, source: str, relocate: bool) -> int:
    """0 if the answer sits at its offset, 1 if it was re-located; a DataError otherwise."""
    if ex.context[ans.start : ans.start + len(ans.text)] == ans.text and ans.start >= 0 and ans.text:
        return 0
    if not ans.text:
        raise DataError(f"{source}: question {ex.id}: empty answer text")
    found = ex.context[max(ans.start, 0) : max(ans.start, 0) + len(ans.text)]
    hits = _occurrences(ex.context, ans.text)
    if not relocate or not hits:
        why = "it does not occur in the context" if not hits else "set relocate_answers: true to re-locate it"
        raise DataError(f"{source}: question {ex.id}: answer {ans.text!r} at answer_start {ans.start} does not "
                        f"match the context there ({found!r}); {why}")
    ans.start = min(hits, key=lambda h: (abs(h - ans.start), h))
    return 1


def _occurrences(text: str, piece: str) -> list[int]:
    hits, at = [], text.find(piece)
    while at >= 0:
        hits.append(at)
        at = text.find(piece, at + 1)
    return hits
