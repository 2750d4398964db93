"""Masked language modelling on unlabeled text, as one more task in the mixture (BERT's MLM; with
`masking: span`, SpanBERT's span masking). T5's span corruption needs a decoder to write the dropped
spans out; with an encoder only, span masking is its counterpart: every token of a span is predicted
in place.

Text comes from any source a dataset can name: plain text files, table rows, the words of CoNLL-U or
CoNLL column files, or the parts of SQuAD-format JSON (tasks/text_format.py reads them, and streams
large training files). Long texts are cut into windows of the encoder's max length at word boundaries.

Masking follows BERT: `mask_prob` (15%) of the tokens are selected, never a special token or
padding; 80% of them become the mask token, 10% a random token, 10% stay as they are. The unit
of selection is a token, a whole word (`whole_word`), or a span of whole words with geometric
lengths (`span`: p = 0.2, at most 10 words, until the budget is spent; the 80/10/10 choice is
made per span). Words are the dataset's own tokens where it has them (CoNLL-U, column files),
else whitespace-separated strings, with every Chinese or Japanese character a word of its own;
a sub-word piece that spans several such words joins them into one unit.

Training batches are masked anew each time they are drawn, from torch's global generator, which
the trainer seeds and saves with every checkpoint (dynamic masking that resumes exactly); eval
and test texts are masked once, with a fixed seed per example, so held-out accuracy and
perplexity are comparable across steps and runs.

The head is the encoder checkpoint's own masked-LM head when it has a trained one
(`bert-base-multilingual-cased` has `cls.predictions.*`), else a fresh one (dense, GELU,
LayerNorm, decoder); either way the decoder is tied to the shared encoder's input embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError
from tasks import register
from tasks._text_stream import HubStream, TextStream
from tasks.base import (
    EncoderInfo,
    FamilyOptions,
    MixedHead,
    TaskFamily,
    loss_output,
    pad_encoder_inputs,
    pad_int_lists,
    special_template,
)
from tasks.formats import QA, ROWS, TEXT, WORDS, read_records, reader_for
from tasks.text_format import Text as MlmExample  # an mlm example is one text
from tasks.text_format import guess_format, streams_text, text_fields, text_stream, texts_of, token_units, window_bounds

log = logging.getLogger(__name__)

IGNORE = -100
NO_WORD = -1  # word id of special tokens and padding: never selected


@dataclass
class MlmOptions(FamilyOptions):
    """The `options:` block of an mlm task."""

    mask_prob: float = 0.15  # share of tokens selected for prediction
    masking: Literal["token", "whole_word", "span"] = "whole_word"
    replace_mask: float = 0.8  # share of selected tokens replaced by the mask token
    replace_random: float = 0.1  # … by a random token (the rest stay unchanged)
    span_p: float = 0.2  # span masking: geometric parameter of span lengths (in words)
    max_span: int = 10  # span masking: longest span, in words
    # the checkpoint's own masked-LM head when it has a trained one (auto), always (pretrained: an error
    # if it has none), or a fresh head tied to the input embeddings
    head: Literal["auto", "pretrained", "fresh"] = "auto"
    eval_seed: int = 0  # eval and test texts are masked once, with this seed and the example's index

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"options.mask_prob: must be between 0 and 1, got {self.mask_prob}")
        for name in ("replace_mask", "replace_random"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"options.{name}: must be between 0 and 1, got {getattr(self, name)}")
        if self.replace_mask + self.replace_random > 1.0 + 1e-9:
            raise ConfigError(f"options: replace_mask + replace_random is {self.replace_mask + self.replace_random}, "
                              "more than 1 (the rest of the selected tokens stay unchanged)")
        if not 0.0 < self.span_p <= 1.0:
            raise ConfigError(f"options.span_p: must be in (0, 1], got {self.span_p}")
        if self.max_span < 1:
            raise ConfigError(f"options.max_span: must be at least 1, got {self.max_span}")


def span_length_probs(p: float, max_span: int) -> torch.Tensor:
    """SpanBERT's span-length distribution: geometric(p) over 1 … max_span words, renormalised."""
    lengths = torch.arange(1, max_span + 1, dtype=torch.float64)
    probs = p * (1 - p) ** (lengths - 1)
    return probs / probs.sum()


# --------------------------------------------------------------------------- the family


@register
class MaskedLM(TaskFamily):
    """Masked language modelling on unlabeled text (token, whole-word or span masking)."""

    name = "mlm"
    Options = MlmOptions
    accepts = (TEXT, ROWS, WORDS, QA)
    primary_metric = "accuracy"  # masked-token accuracy; perplexity is reported beside it
    default_mix = "last"  # the checkpoint's own MLM head was trained on the last layer
    default_dropout = 0.0  # the last layer as the pretrained head saw it (the encoder applies its own dropout)
    table_metrics = ("accuracy", "perplexity")
    prediction_suffix = ".jsonl"
    supervised = False

    def __init__(self, task: TaskConfig, tokenizer: Any, max_length: int):
        super().__init__(task, tokenizer, max_length)
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"task {task.name}: the tokenizer {tokenizer.name_or_path!r} has no mask token; "
                              "masked language modelling needs one")
        self.head_kind: str | None = None  # "pretrained" or "fresh" once the head is built (or loaded)
        specials = set(tokenizer.all_special_ids)
        self.special_ids = specials
        self.random_pool = torch.tensor([i for i in range(len(tokenizer)) if i not in specials], dtype=torch.long)
        self.span_probs = span_length_probs(self.options.span_p, self.options.max_span)

    # ---------------------------------------------------------------- reading
    @classmethod
    def format_name(cls, dataset: DatasetConfig) -> str | None:
        """The declared format, else the hub's tables, else the suffix: .txt text, .conllu CoNLL-U, tables."""
        return guess_format(dataset)

    def read(self, dataset: DatasetConfig, role: str) -> list[MlmExample]:
        """The texts of any reader's records (a file or the hub): table fields, SQuAD parts, sentences, lines."""
        fields = text_fields(dataset, reader_for(type(self), dataset))
        records = read_records(self, dataclasses.replace(dataset, fields=fields), role)
        return texts_of(records, fields, dataset.split(role))

    # ---------------------------------------------------------------- features
    def featurize(self, examples: Sequence[MlmExample], role: str) -> list[dict[str, Any]]:
        """Windows of whole words; every token carries its word unit (-1: special). Eval and test windows are
        masked here, once, with a seed per example."""
        return self.featurize_chunk(examples, role, 0)

    def featurize_chunk(self, examples: Sequence[MlmExample], role: str, start: int) -> list[dict[str, Any]]:
        """As `featurize`, for examples numbered from `start`: the mask seed is the example's index in its split."""
        prefix, suffix = special_template(self.tokenizer)
        budget = self.max_length - len(prefix) - len(suffix)
        if budget < 1:
            raise ConfigError(f"max_length {self.max_length} leaves no room for tokens")
        features = []
        for i, (ids, units) in enumerate(self._tokenise(examples)):
            units = [NO_WORD if t in self.special_ids else u for t, u in zip(ids, units, strict=True)]
            for k, (s, e) in enumerate(window_bounds(units, budget)):
                feat = {"example_index": start + i, "window": k, **self._window(ids, units, s, e, prefix, suffix)}
                if role != "train":
                    feat = self._mask_once(feat, start + i, k)
                features.append(feat)
        return features

    @staticmethod
    def _window(ids: Sequence[int], units: Sequence[int], s: int, e: int, prefix: list[int],
                suffix: list[int]) -> dict[str, Any]:
        """Tokens s … e-1 with the special tokens around them; word units renumbered from 0 in the window."""
        local: dict[int, int] = {}
        words = [local.setdefault(u, len(local)) if u >= 0 else NO_WORD for u in units[s:e]]
        return {"input_ids": [*prefix, *ids[s:e], *suffix],
                "word_ids": [NO_WORD] * len(prefix) + words + [NO_WORD] * len(suffix)}

    # ---------------------------------------------------------------- streamed text
    def streams(self, dataset: DatasetConfig, role: str) -> bool:
        """Large plain text or JSON lines, or a hub dataset with `streaming: true` (tasks/text_format.py)."""
        return streams_text(dataset, role, self.format_name(dataset))

    def stream(self, dataset: DatasetConfig) -> TextStream | HubStream:
        """Its texts packed into training windows as the stream reaches them."""
        return text_stream(dataset, self.format_name(dataset), self.packed_windows, f"{self.task.name}/{dataset.name}")

    def packed_windows(self, lines: list[str]) -> list[dict[str, Any]]:
        """Training windows of consecutive lines packed together: up to max_length tokens each, cut at word
        boundaries, so short lines fill windows instead of padding them."""
        prefix, suffix = special_template(self.tokenizer)
        ids: list[int] = []
        units: list[int] = []
        offset = 0
        for line_ids, line_units in self._tokenise([MlmExample(t, "") for t in lines]):
            kept = [NO_WORD if t in self.special_ids else u for t, u in zip(line_ids, line_units, strict=True)]
            ids.extend(line_ids)
            units.extend(u + offset if u >= 0 else NO_WORD for u in kept)
            offset += max(kept, default=-1) + 1
        if not ids:
            return []
        budget = self.max_length - len(prefix) - len(suffix)
        return [self._window(ids, units, s, e, prefix, suffix) for s, e in window_bounds(units, budget)]

    def _tokenise(self, examples: Sequence[MlmExample]) -> list[tuple[list[int], list[int]]]:
        """Token ids and word units of each example, tokenised in batches."""
        out: list[tuple[list[int], list[int]] | None] = [None] * len(examples)
        worded = [i for i, ex in enumerate(examples) if ex.words is not None]
        plain = [i for i, ex in enumerate(examples) if ex.words is None]
        if worded:
            enc = self.tokenizer([examples[i].words for i in worded], is_split_into_words=True,
                                 add_special_tokens=False)
            for j, i in enumerate(worded):
                word_ids = enc.word_ids(j)
                out[i] = (list(enc["input_ids"][j]), [NO_WORD if w is None else w for w in word_ids])
        if plain:
            enc = self.tokenizer([examples[i].text for i in plain], add_special_tokens=False,
                                 return_offsets_mapping=True)
            for j, i in enumerate(plain):
                out[i] = (list(enc["input_ids"][j]), token_units(examples[i].text, enc["offset_mapping"][j]))
        return out  # type: ignore[return-value]

    def _mask_once(self, feat: dict[str, Any], example: int, window: int) -> dict[str, Any]:
        seed = int(np.random.SeedSequence([self.options.eval_seed, example, window]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        ids = torch.tensor([feat["input_ids"]], dtype=torch.long)
        words = torch.tensor([feat["word_ids"]], dtype=torch.long)
        masked, labels = self.mask(ids, words, gen)
        return {"example_index": feat["example_index"], "window": window, "input_ids": masked[0].tolist(),
                "labels": labels[0].tolist()}

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Eval features come masked; training features are masked here, anew each time they are drawn."""
        batch = pad_encoder_inputs(features, self.tokenizer.pad_token_id or 0)
        width = batch["input_ids"].size(1)
        if "labels" in features[0]:
            batch["labels"] = pad_int_lists([f["labels"] for f in features], IGNORE, width)
            return batch
        words = pad_int_lists([f["word_ids"] for f in features], NO_WORD, width)
        batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], words)
        return batch

    # ---------------------------------------------------------------- masking
    def mask(self, ids: torch.Tensor, words: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels: the original id where selected, -100 elsewhere) for a [batch, length]
        batch whose `words` give each token's word unit (-1: never selected). Draws from `generator`, or from
        torch's global generator when None."""
        opts = self.options
        candidates = words >= 0
        span_of: torch.Tensor | None = None
        if opts.masking == "token":
            selected = (torch.rand(ids.shape, generator=generator) < opts.mask_prob) & candidates
        elif opts.masking == "whole_word":
            n_words = int(words.max()) + 1 if words.numel() else 0
            per_word = torch.rand((ids.size(0), max(n_words, 1)), generator=generator) < opts.mask_prob
            selected = per_word.gather(1, words.clamp(min=0)) & candidates
        else:
            selected, span_of = self._spans(words, generator)
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
        if span_of is not None:  # SpanBERT: one replacement choice per span
            n_spans = int(span_of.max()) + 1 if span_of.numel() else 0
            draw = torch.rand((ids.size(0), max(n_spans, 1)), generator=generator).gather(1, span_of.clamp(min=0))
        else:
            draw = torch.rand(ids.shape, generator=generator)
        to_mask = selected & (draw < opts.replace_mask)
        to_random = selected & (draw >= opts.replace_mask) & (draw < opts.replace_mask + opts.replace_random)
        randoms = self.random_pool[torch.randint(len(self.random_pool), ids.shape, generator=generator)]
        out = torch.where(to_mask, torch.full_like(ids, self.tokenizer.mask_token_id), ids)
        out = torch.where(to_random, randoms, out)
        return out, labels

    def _spans(self, words: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """SpanBERT's span selection per row: draw a length (in words) and a starting word, take whole words
        from there until the span ends, it meets a taken word, or the budget (mask_prob of the row's tokens)
        is spent; a word is taken while at most half of it goes over the budget."""
        opts = self.options
        selected = torch.zeros(words.shape, dtype=torch.bool)
        span_of = torch.full(words.shape, -1, dtype=torch.long)
        for b, row in enumerate(words.tolist()):
            n_words = max(row) + 1 if row else 0
            if n_words == 0:
                continue
            tokens: list[list[int]] = [[] for _ in range(n_words)]
            for i, w in enumerate(row):
                if w >= 0:
                    tokens[w].append(i)
            budget = opts.mask_prob * sum(len(t) for t in tokens)
            draws = 2 * n_words + 8
            lengths = (torch.multinomial(self.span_probs, draws, replacement=True, generator=generator) + 1).tolist()
            starts = torch.randint(n_words, (draws,), generator=generator).tolist()
            taken = [False] * n_words
            masked, span, full = 0, 0, False
            for length, start in zip(lengths, starts, strict=True):
                if masked >= budget or full:
                    break
                if taken[start]:
                    continue
                took = False
                for w in range(start, min(start + length, n_words)):
                    if taken[w]:
                        break
                    if masked + len(tokens[w]) / 2 > budget:
                        full = True
                        break
                    taken[w], took = True, True
                    masked += len(tokens[w])
                    selected[b, tokens[w]] = True
                    span_of[b, tokens[w]] = span
                span += took
        return selected, span_of

    # ---------------------------------------------------------------- model
    def build_head(self, encoder: EncoderInfo) -> nn.Module:
        if encoder.input_embeddings is None:
            raise ValueError(f"task {self.task.name}: the mlm head ties its decoder to the encoder's input "
                             "embeddings, and EncoderInfo.input_embeddings is not set")
        kind = self.head_kind or (None if self.options.head == "auto" else self.options.head)
        lm: nn.Module | None = None
        if kind == "fresh":
            lm = fresh_lm_head(encoder)
        elif encoder.checkpoint is not None:  # the encoder was just loaded from a pretrained checkpoint
            lm, why = pretrained_lm_head(encoder, weights=True)
            if lm is None and kind == "pretrained":
                raise ConfigError(f"task {self.task.name}: options.head is pretrained, but {why} "
                                  "(use head: fresh or auto)")
            if lm is None:
                log.info("task %s: a fresh masked-LM head (%s)", self.task.name, why)
                lm = fresh_lm_head(encoder)
            else:
                log.info("task %s: the masked-LM head of %s", self.task.name, encoder.checkpoint)
        elif kind == "pretrained":  # weights come from an mtl checkpoint: the checkpoint head's structure only
            lm, why = pretrained_lm_head(encoder, weights=False)
            if lm is None:
                raise ConfigError(f"task {self.task.name}: cannot rebuild the pretrained masked-LM head: {why}")
        else:
            lm = fresh_lm_head(encoder)
        self.head_kind = "fresh" if isinstance(lm, FreshLMHead) else "pretrained"
        return MlmHead(encoder, lm)

    def state_dict(self) -> dict[str, Any]:
        # which head `auto` chose, so a checkpoint rebuilds the same head without the hub
        return {"head": self.head_kind} if self.options.head == "auto" and self.head_kind else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head_kind = state.get("head", self.head_kind)

    # ---------------------------------------------------------------- output
    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        labels = batch["labels"]
        counts = (labels != IGNORE).sum(1).tolist()
        gold = labels[labels != IGNORE].cpu().tolist()
        preds = outputs["predictions"].cpu().tolist()
        losses = outputs["token_loss"].float().cpu().tolist()
        records, at = [], 0
        for n in counts:
            records.append({"gold": gold[at : at + n], "predicted": preds[at : at + n], "loss": losses[at : at + n]})
            at += n
        return records

    def finalize(self, examples: Sequence[MlmExample], features: Sequence[dict[str, Any]],
                 records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per text: its masked windows as text, the masked pieces and their predictions, and the counts."""
        preds: list[dict[str, Any]] = [{"masked": [], "gold": [], "predicted": [], "count": 0, "correct": 0,
                                        "loss_sum": 0.0} for _ in examples]
        convert = self.tokenizer.convert_ids_to_tokens
        prefix, suffix = special_template(self.tokenizer)
        for feat, rec in zip(features, records, strict=True):
            p = preds[feat["example_index"]]
            ids = feat["input_ids"][len(prefix) : len(feat["input_ids"]) - len(suffix)]
            p["masked"].append(self.tokenizer.decode(ids, skip_special_tokens=False))
            p["gold"].extend(convert(rec["gold"]))
            p["predicted"].extend(convert(rec["predicted"]))
            p["count"] += len(rec["gold"])
            p["correct"] += sum(g == q for g, q in zip(rec["gold"], rec["predicted"], strict=True))
            p["loss_sum"] += float(sum(rec["loss"]))
        return preds

    def score(self, examples: Sequence[MlmExample], predictions: Sequence[dict[str, Any]],
              dataset: DatasetConfig) -> dict[str, float]:
        """Masked-token accuracy (%), perplexity (exp of the mean cross-entropy) and that mean (`loss`)."""
        total = sum(p["count"] for p in predictions)
        if total == 0:
            log.warning("dataset %s of task %s: no token was masked; nothing to score", dataset.name, self.task.name)
            return {}
        loss = sum(p["loss_sum"] for p in predictions) / total
        return {
            "accuracy": 100.0 * sum(p["correct"] for p in predictions) / total,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "loss": loss,
        }

    def write_predictions(self, examples: Sequence[MlmExample], predictions: Sequence[dict[str, Any]],
                          path: Path) -> None:
        """JSON lines: the text (so the file reads back as mlm input), its masked windows, the masked pieces
        and the predicted ones."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for ex, p in zip(examples, predictions, strict=True):
                row = {"text": ex.text, "masked": p["masked"], "gold": p["gold"], "predicted": p["predicted"]}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- heads


class FreshLMHead(nn.Module):
    """BERT's prediction head, newly initialised: dense → GELU → LayerNorm → decoder tied to the input embeddings."""

    def __init__(self, hidden_size: int, embeddings: nn.Module, eps: float = 1e-12, init_std: float = 0.02):
        super().__init__()
        weight = embeddings.weight
        self.dense = nn.Linear(hidden_size, weight.size(1))
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(weight.size(1), eps=eps)
        self.decoder = nn.Linear(weight.size(1), weight.size(0))
        self.decoder.weight = weight  # tied: the shared encoder's input embeddings
        nn.init.normal_(self.dense.weight, std=init_std)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(x))))


def fresh_lm_head(encoder: EncoderInfo) -> FreshLMHead:
    config = encoder.config
    eps, std = float(getattr(config, "layer_norm_eps", 1e-12)), float(getattr(config, "initializer_range", 0.02))
    return FreshLMHead(encoder.hidden_size, encoder.input_embeddings, eps, std)


def pretrained_lm_head(encoder: EncoderInfo, weights: bool) -> tuple[nn.Module | None, str]:
    """The masked-LM head module of the encoder's architecture (with the checkpoint's trained weights when
    `weights`), its decoder tied to the shared input embeddings; or None and the reason there is none.

    Taken from `AutoModelForMaskedLM`: the one module beside the base model that holds the output embeddings
    (BERT's `cls`, XLM-R's `lm_head`, ALBERT's `predictions`); a checkpoint that lacks any of its weights (an
    encoder saved without its pre-training head) has no trained head.
    """
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a checkpoint without a head would print a long load report
    try:
        if weights:
            model, info = AutoModelForMaskedLM.from_pretrained(encoder.checkpoint, revision=encoder.revision,
                                                               output_loading_info=True)
            missing = set(info["missing_keys"])
        else:
            model, missing = AutoModelForMaskedLM.from_config(encoder.config), set()
    except (ValueError, KeyError, OSError) as err:
        return None, f"{encoder.checkpoint or type(encoder.config).__name__} has no masked-LM model ({err})"
    finally:
        hf_logging.set_verbosity(level)
    name = type(model).__name__
    decoder = model.get_output_embeddings()
    heads = [(n, m) for n, m in model.named_children()
             if n != model.base_model_prefix and any(True for _ in m.parameters())]
    if len(heads) != 1 or decoder is None or not any(m is decoder for m in heads[0][1].modules()):
        return None, f"{name}'s masked-LM head is not one module holding its decoder"
    prefix, head = heads[0]
    untrained = sorted(k for k in missing if k.startswith(prefix + "."))
    if untrained:
        listed = ", ".join(untrained[:3])
        return None, f"the checkpoint {encoder.checkpoint} has no trained masked-LM head (missing: {listed})"
    shared = encoder.input_embeddings.weight
    if getattr(model.config, "tie_word_embeddings", True):
        if decoder.weight.shape != shared.shape:
            sizes = f"{tuple(decoder.weight.shape)}, the input embeddings {tuple(shared.shape)}"
            return None, f"{name}'s decoder is {sizes}"
        decoder.weight = shared
    return head, ""


class MlmHead(MixedHead):
    """The task's view of the encoder → the LM head, at the selected positions only; mean cross-entropy there."""

    def __init__(self, encoder: EncoderInfo, lm: nn.Module):
        super().__init__(encoder)
        self.lm = lm

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("the mlm head needs `labels` (the family's collate masks every batch)")
        x = self.mixed(hidden_states)
        selected = labels != IGNORE
        gold = labels[selected]
        logits = self.lm(x[selected])
        token_loss = F.cross_entropy(logits.float(), gold, reduction="none")
        # no selected token in the batch (rare: very short texts): a zero sum that still reaches the graph, the
        # LM head included (under DeepSpeed ZeRO every rank must give gradients to the same parameters); the
        # count lets the trainer average over the masked tokens of the global batch (mtl/loss.py)
        total = token_loss.sum() if gold.numel() else logits.sum() * 0.0
        out = {**loss_output([total], [gold.numel()]), "masked": selected.sum(1)}
        if not self.training:
            out["predictions"] = logits.argmax(-1)
            out["token_loss"] = token_loss.detach()
        return out
