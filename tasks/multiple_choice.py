"""Multiple choice: a context and K candidate endings, one of them right (SWAG, COPA, XCOPA, HellaSwag …).

Each example becomes K sequences, the context paired with each ending (SWAG's `stem`, when given, starts
every ending, as in Hugging Face's run_swag). The encoder reads all K; the head scores each sequence from
its first token, and a softmax over the K scores of an example gives the choice (cross-entropy on the
right index). K may differ between examples of one dataset (2 to any number): a batch holds every ending
of its examples as rows, and the scores of absent endings are masked out.

Fields map columns like classification's: `context`, `ending0`, `ending1`, … (consecutive from 0; the
schema allows a field to name one column, so a list of endings is a list of fields), and `label`, the
0-based index of the right ending, or the field or column name of the right ending (COPA on the hub calls
its labels `choice1`, `choice2`); a dataset's `label_map` renames raw labels first (ARC's `A`…`D` → 0…3).
A row with fewer endings leaves the last ones empty (an empty cell, or null in JSON lines); a gap before a
given ending, fewer than two endings, or a label past the row's endings is a DataError naming file:line.

As for classification's windows, one feature keeps its K sequences one after another in `input_ids`
(`choice_lengths` says where each ends), so the sampler sees an example's real token cost and one
example is one feature.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from tasks import register
from tasks._classification_metrics import accuracy
from tasks.base import (
    EncoderInfo,
    FamilyOptions,
    MixedHead,
    TaskFamily,
    labelled_pairs,
    loss_output,
    pad_encoder_inputs,
)
from tasks.formats import ROWS, read_records
from tasks.readers import cell_text, one_line, table_format

log = logging.getLogger(__name__)

ENDING = re.compile(r"^ending(\d+)$")
KNOWN_FIELDS = ("context", "stem", "label", "id")  # and ending0, ending1, …


@dataclass
class MultipleChoiceExample:
    """A context, its candidate endings (two or more) and the index of the right one (None: unlabelled)."""

    context: str
    endings: list[str]
    label: int | None
    where: str  # file:line, for error messages
    stem: str | None = None  # SWAG's sent2: the start every ending continues
    id: str | None = None


@register
class MultipleChoice(TaskFamily):
    """Context + K endings → K first-token scores → softmax over K; accuracy."""

    name = "multiple_choice"
    Options = FamilyOptions  # nothing to choose: the endings come from `fields`, raw labels from `label_map`
    accepts = (ROWS,)
    primary_metric = "accuracy"
    prediction_suffix = ".tsv"

    @classmethod
    def format_name(cls, dataset: DatasetConfig) -> str | None:
        return table_format(dataset)

    # ---------------------------------------------------------------- data
    def read(self, dataset: DatasetConfig, role: str) -> list[MultipleChoiceExample]:
        fields, endings = self._fields(dataset)
        records = read_records(self, dataclasses.replace(dataset, fields=fields), role)
        rows, label_map = records.items, getattr(records.options, "label_map", None)
        examples = [self._example(row, endings, fields, label_map) for row in rows]
        missing = [ex for ex in examples if ex.label is None]
        if missing and not (role == "test" and len(missing) == len(examples)):
            raise DataError(f"{missing[0].where}: empty label in a labelled {role} split")
        return examples

    @staticmethod
    def _fields(dataset: DatasetConfig) -> tuple[dict[str, Any], list[str]]:
        """The dataset's fields, checked: a context, two or more endings numbered from 0, a label."""
        fields = dict(dataset.fields)
        name = dataset.name or dataset.language
        unknown = sorted(k for k in fields if k not in KNOWN_FIELDS and not ENDING.match(k))
        if unknown:
            raise DataError(f"dataset {name}: unknown field(s) {unknown} (allowed: {', '.join(KNOWN_FIELDS)}, "
                            "ending0, ending1, …)")
        endings = sorted((k for k in fields if ENDING.match(k)), key=lambda k: int(ENDING.match(k).group(1)))
        if "context" not in fields or len(endings) < 2:
            raise DataError(f"dataset {name}: fields must name the `context` column and two or more endings, e.g. "
                            "{context: premise, ending0: choice1, ending1: choice2, label: label}")
        if endings != [f"ending{i}" for i in range(len(endings))]:
            raise DataError(f"dataset {name}: ending fields must be numbered ending0, ending1, … without gaps "
                            f"(found {', '.join(endings)})")
        fields.setdefault("label", "label")  # a test split may lack it (prediction input names no label)
        return fields, endings

    def _example(self, row: dict[str, Any], names: list[str], fields: dict[str, Any],
                 label_map: dict[str, str] | None) -> MultipleChoiceExample:
        where = row["_where"]
        context = cell_text(row.get("context"), "context", where)
        stem = row.get("stem")
        stem = cell_text(stem, "stem", where) if stem not in (None, "") else None
        given = [row.get(n) for n in names]
        count = next((i for i in range(len(given), 0, -1) if given[i - 1] not in (None, "")), 0)
        gap = next((i for i in range(count) if given[i] in (None, "")), None)
        if gap is not None:
            raise DataError(f"{where}: {names[gap]} is empty but {names[count - 1]} is not (only the last "
                            "endings of a row may be left empty)")
        endings = [cell_text(given[i], names[i], where) for i in range(count)]
        if count < 2:
            raise DataError(f"{where}: {count} ending(s); a multiple-choice row needs at least two")
        label = self._label(row.get("label"), names, fields, label_map, where)
        if label is not None and label >= count:
            raise DataError(f"{where}: label {row.get('label')!r} points at ending {label}, but the row has {count}")
        ident = row.get("id")
        return MultipleChoiceExample(context, endings, label, where, stem, None if ident is None else str(ident))

    @staticmethod
    def _label(raw: Any, names: list[str], fields: dict[str, Any], label_map: dict[str, str] | None,
               where: str) -> int | None:
        """The 0-based index of the right ending, from an index, or the field or column name of that ending."""
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == "":
            return None
        if label_map is not None:
            if str(raw) not in label_map:
                raise DataError(f"{where}: label {raw!r} is not in options.label_map ({', '.join(label_map)})")
            raw = label_map[str(raw)]
        if isinstance(raw, bool):
            raise DataError(f"{where}: label {raw!r} is not an ending index")
        if isinstance(raw, int) and raw < 0:
            raise DataError(f"{where}: label {raw} is negative (labels are 0-based ending indices)")
        if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
            return int(raw)
        for i, n in enumerate(names):
            if raw in (n, fields[n]):
                return i
        raise DataError(f"{where}: label {raw!r} is neither a 0-based ending index nor the name of an ending "
                        f"({', '.join(f'{n}={fields[n]}' for n in names)}); options.label_map can rename it")

    # ---------------------------------------------------------------- features
    def featurize(self, examples: Sequence[MultipleChoiceExample], role: str) -> list[dict[str, Any]]:
        if not examples:
            return []
        firsts = [ex.context for ex in examples for _ in ex.endings]
        seconds = [f"{ex.stem} {e}" if ex.stem else e for ex in examples for e in ex.endings]
        # longest_first cuts the longer text of a pair first and never fails on one over-long side
        enc = self.tokenizer(firsts, seconds, truncation="longest_first", max_length=self.max_length, verbose=False)
        has_types = "token_type_ids" in enc
        features: list[dict[str, Any]] = []
        row = full = 0
        for i, ex in enumerate(examples):
            rows = range(row, row + len(ex.endings))
            row += len(ex.endings)
            lengths = [len(enc["input_ids"][r]) for r in rows]
            full += sum(n >= self.max_length for n in lengths)
            feat: dict[str, Any] = {"example_index": i, "input_ids": [t for r in rows for t in enc["input_ids"][r]],
                                    "choice_lengths": lengths}
            if has_types:
                feat["token_type_ids"] = [t for r in rows for t in enc["token_type_ids"][r]]
            if ex.label is not None:
                feat["label"] = ex.label
            features.append(feat)
        if full:
            log.warning("task %s: %d of %d context+ending sequences reach max_length=%d and may be cut",
                        self.task.name, full, len(firsts), self.max_length)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Every ending of every example is one row; `choice_example`/`choice_index` place its score."""
        rows: list[dict[str, Any]] = []
        owner: list[int] = []
        index: list[int] = []
        for i, f in enumerate(features):
            start = 0
            for k, n in enumerate(f["choice_lengths"]):
                r = {"input_ids": f["input_ids"][start : start + n]}
                if "token_type_ids" in f:
                    r["token_type_ids"] = f["token_type_ids"][start : start + n]
                rows.append(r)
                owner.append(i)
                index.append(k)
                start += n
        batch = pad_encoder_inputs(rows, self.tokenizer.pad_token_id or 0)
        batch["choice_example"] = torch.tensor(owner, dtype=torch.long)
        batch["choice_index"] = torch.tensor(index, dtype=torch.long)
        if features and all("label" in f for f in features):
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        return batch

    # ---------------------------------------------------------------- model
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        return MultipleChoiceHead(encoder)

    # ---------------------------------------------------------------- output
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[int]:
        return outputs["logits"].detach().float().argmax(dim=-1).cpu().tolist()

    def score(self, examples: Sequence[MultipleChoiceExample], predictions: Sequence[Any],
              dataset: DatasetConfig) -> dict[str, float]:
        gold, pred = labelled_pairs(examples, predictions, dataset, self.task.name)
        return {"accuracy": 100.0 * accuracy(gold, pred)} if gold else {}

    def write_predictions(self, examples: Sequence[MultipleChoiceExample], predictions: Sequence[Any],
                          path: Path) -> None:
        """A TSV: index, the chosen ending's index and text, then the input; it reads back as a dataset with
        fields {context: context, ending0: ending0, …, label: prediction}."""
        width = max((len(ex.endings) for ex in examples), default=2)
        stems = any(ex.stem is not None for ex in examples)
        header = ["index", "prediction", "prediction_text", "context", *(["stem"] if stems else []),
                  *(f"ending{k}" for k in range(width))]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(header)]
        for i, (ex, pred) in enumerate(zip(examples, predictions, strict=True)):
            endings = ex.endings + [""] * (width - len(ex.endings))
            row = [ex.id if ex.id is not None else str(i), str(pred), ex.endings[pred], ex.context,
                   *([ex.stem or ""] if stems else []), *endings]
            lines.append("\t".join(one_line(c) for c in row))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class MultipleChoiceHead(MixedHead):
    """Mixed layers → first token of each (context, ending) row → dropout → one score; softmax over an
    example's endings, cross-entropy averaged over examples.

    It reads position 0 only, so the model may encode the K rows of a large batch a few rows at a time
    (mtl/model.py)."""

    reads_first_token = True

    def __init__(self, encoder: EncoderInfo):
        super().__init__(encoder)
        self.out = nn.Linear(encoder.hidden_size, 1)

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = self.out(self.dropout(self.mix(hidden_states)[:, 0])).squeeze(-1).float()
        owner, index = batch["choice_example"], batch["choice_index"]
        n, k = int(owner.max()) + 1, int(index.max()) + 1
        # absent endings of examples with fewer than k get the lowest score, so softmax gives them nothing
        logits = scores.new_full((n, k), torch.finfo(scores.dtype).min).index_put((owner, index), scores)
        out = {"logits": logits}
        if "labels" in batch:
            labels = batch["labels"]
            total = nn.functional.cross_entropy(logits, labels, reduction="sum")
            out.update(loss_output([total], [labels.size(0)]))
        return out
