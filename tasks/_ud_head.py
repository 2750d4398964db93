"""The network of a `ud` task: one scalar mix per head, linear taggers and the biaffine parser
(Dozat & Manning 2017), their losses and the tree decoding.

Apart from tasks/ud.py, which reads, labels and scores the data: this module sees only tensors,
label counts and the task's options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks._mst import argmax_heads, mst_heads
from tasks.base import EncoderInfo, WordPooling, loss_output, pool_words

IGNORE = -100  # the label id of a word without a label: left out of every loss


class HeadOptions(Protocol):
    """What the network reads of a task's options (tasks.ud.UDOptions), named here so that this module
    stays below the family that builds it."""

    @property
    def decoder(self) -> str: ...
    @property
    def word_pooling(self) -> WordPooling: ...
    @property
    def arc_mlp(self) -> int: ...
    @property
    def label_mlp(self) -> int: ...
    @property
    def mlp_dropout(self) -> float: ...


def _mlp(inp: int, out: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, out), nn.LeakyReLU(0.1), nn.Dropout(dropout))


def _ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the labelled positions and their number; zero (still in the graph) when
    there are none."""
    flat = target.reshape(-1)
    count = (flat != IGNORE).sum()
    if not bool(count):
        return logits.sum() * 0.0, count
    return F.cross_entropy(logits.reshape(flat.numel(), -1).float(), flat, ignore_index=IGNORE, reduction="sum"), count


class BiaffineParser(nn.Module):
    """Dozat & Manning (2017): MLP head/dependent views, biaffine arc scores with a head bias,
    biaffine label scores for a given head of each word."""

    def __init__(self, hidden: int, arc_dim: int, label_dim: int, n_labels: int, dropout: float):
        super().__init__()
        self.arc_dep = _mlp(hidden, arc_dim, dropout)
        self.arc_head = _mlp(hidden, arc_dim, dropout)
        self.rel_dep = _mlp(hidden, label_dim, dropout)
        self.rel_head = _mlp(hidden, label_dim, dropout)
        self.arc_weight = nn.Parameter(torch.zeros(arc_dim, arc_dim))
        self.head_bias = nn.Parameter(torch.zeros(arc_dim))
        # Label biaffine: dep · W_l · head + V_l · [dep; head] + b_l (as one matmul; nn.Bilinear is slow on CPU).
        self.rel_weight = nn.Parameter(torch.zeros(label_dim, n_labels, label_dim))
        self.rel_linear = nn.Linear(2 * label_dim, n_labels)

    def arc_scores(self, nodes: torch.Tensor) -> torch.Tensor:
        """[batch, node, hidden] → scores[batch, dependent, head]."""
        dep, head = self.arc_dep(nodes), self.arc_head(nodes)
        return torch.einsum("bid,de,bje->bij", dep, self.arc_weight, head) + (head @ self.head_bias)[:, None, :]

    def label_views(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rel_dep(nodes[:, 1:]), self.rel_head(nodes)

    def label_scores(self, dep: torch.Tensor, head_all: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Label logits [batch, word, label] of each word with the head given in `heads` (node index)."""
        head = head_all.gather(1, heads.clamp(min=0).unsqueeze(-1).expand(-1, -1, head_all.size(-1)))
        return self._bilinear(dep, head) + self.rel_linear(torch.cat([dep, head], dim=-1))

    def _bilinear(self, dep: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """dep · W_l · head for every label l, through the smaller intermediate tensor."""
        d, n_labels, e = self.rel_weight.shape
        if n_labels <= d:  # [.., labels, e] then a dot product with head
            per_label = (dep @ self.rel_weight.reshape(d, n_labels * e)).unflatten(-1, (n_labels, e))
            return (per_label * head.unsqueeze(-2)).sum(-1)
        outer = (dep.unsqueeze(-1) * head.unsqueeze(-2)).flatten(-2)  # [.., d·e] then one matmul
        return outer @ self.rel_weight.permute(0, 2, 1).reshape(d * e, n_labels)


class UDHead(nn.Module):
    """All UD heads of one task; each reads the encoder through its own scalar mix."""

    def __init__(self, encoder: EncoderInfo, tag_sizes: dict[str, int], n_deprels: int, options: HeadOptions):
        super().__init__()
        self.tags = list(tag_sizes)  # in the order given: the family's tagger order
        self.decoder = options.decoder
        self.pooling = options.word_pooling
        names = self.tags + (["deps"] if n_deprels else [])
        self.mixes = nn.ModuleDict({name: encoder.make_mix() for name in names})
        self.dropout = nn.Dropout(encoder.dropout)
        self.classifiers = nn.ModuleDict({name: nn.Linear(encoder.hidden_size, tag_sizes[name]) for name in self.tags})
        self.parser = (
            BiaffineParser(encoder.hidden_size, options.arc_mlp, options.label_mlp, n_deprels, options.mlp_dropout)
            if n_deprels
            else None
        )

    def forward(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        index, mask = batch["word_index"], batch["word_mask"].bool()
        ends = batch["word_ends"]
        out: dict[str, torch.Tensor] = {}
        losses: list[tuple[torch.Tensor, torch.Tensor | int]] = []  # (sum, count) per term: taggers, arcs, labels
        labelled = any(k in batch for k in (*self.tags, "heads"))
        for name in self.tags:
            words = pool_words(self.dropout(self.mixes[name](hidden_states)), index, ends, self.pooling)
            logits = self.classifiers[name](words)
            out[name] = logits.argmax(-1)
            if labelled:  # an absent label still joins the graph (zero), so DDP sees every parameter used
                losses.append(_ce(logits, batch[name]) if name in batch else (logits.sum() * 0.0, 0))
        if self.parser is not None:
            losses.extend(self._parse(hidden_states, batch, index, ends, mask, out, labelled))
        if labelled:
            out.update(loss_output([s for s, _ in losses], [n for _, n in losses]))
        return out

    def _parse(self, hidden_states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor], index: torch.Tensor,
               ends: torch.Tensor, mask: torch.Tensor, out: dict[str, torch.Tensor],
               labelled: bool) -> list[tuple[torch.Tensor, torch.Tensor | int]]:
        """Arc and label losses (gold heads) as (sum, count); at inference also decoded heads and their
        labels in `out`."""
        x = self.dropout(self.mixes["deps"](hidden_states))
        nodes = torch.cat([x[:, :1], pool_words(x, index, ends, self.pooling)], dim=1)  # node 0: ROOT, at [CLS]
        node_mask = torch.cat([mask.new_ones(mask.size(0), 1), mask], dim=1)
        raw = self.parser.arc_scores(nodes)
        eye = torch.eye(raw.size(1), dtype=torch.bool, device=raw.device)
        scores = raw.masked_fill(~node_mask[:, None, :] | eye, torch.finfo(raw.dtype).min)[:, 1:]
        dep, head_all = self.parser.label_views(nodes)
        losses = []
        if labelled:
            if "heads" in batch:  # labels are learned for the gold head
                losses.append(_ce(scores, batch["heads"]))
                losses.append(_ce(self.parser.label_scores(dep, head_all, batch["heads"]), batch["deprels"]))
            else:  # two terms always, so every batch of the task has the same loss terms
                zero_heads = torch.zeros_like(index)
                losses.append((scores.sum() * 0.0, 0))
                losses.append((self.parser.label_scores(dep, head_all, zero_heads).sum() * 0.0, 0))
        if not self.training:  # at inference, labels are predicted for the decoded head
            heads = self._decode(raw, mask)
            out["heads"] = heads
            out["deprels"] = self.parser.label_scores(dep, head_all, heads).argmax(-1)
        return losses

    def _decode(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        decode = mst_heads if self.decoder == "mst" else argmax_heads
        scores = raw.detach().float().cpu().numpy()
        lengths = mask.sum(1).tolist()
        heads = np.zeros(mask.shape, dtype=np.int64)
        for b, n in enumerate(lengths):
            if n:
                heads[b, :n] = decode(scores[b, : n + 1, : n + 1])[1:]
        return torch.from_numpy(heads).to(raw.device)
