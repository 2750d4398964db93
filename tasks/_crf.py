"""A linear-chain conditional random field for tagging heads.

Sequence-level training (negative log-likelihood through the forward algorithm) and exact
Viterbi decoding. Forbidden transitions (I-PER after O in BIO, say) get a large negative
score, so the decoder only ever returns well-formed tag sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FORBIDDEN = -10000.0  # finite, so gradients through logsumexp stay finite


class CRF(nn.Module):
    """Transition, start and end scores over `num_tags`, with optional hard constraints."""

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.register_buffer("trans_penalty", _penalty(allowed, (num_tags, num_tags)))
        self.register_buffer("start_penalty", _penalty(allowed_start, (num_tags,)))
        self.register_buffer("end_penalty", _penalty(allowed_end, (num_tags,)))

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Effective (transition, start, end) scores with the constraints applied."""
        return (
            self.transitions + self.trans_penalty,
            self.start + self.start_penalty,
            self.end + self.end_penalty,
        )

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood over the batch (emissions [B, L, T], tags and mask [B, L])."""
        return -(self.log_likelihood(emissions, tags, mask)).mean()

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence; the mask must be a prefix (padding at the end)."""
        mask = mask.bool()
        return self._path_score(emissions, tags, mask) - self.log_partition(emissions, mask)

    def _path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        trans, start, end = self.scores()
        tags = tags.masked_fill(~mask, 0)
        lengths = mask.sum(1)
        m = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
        score = (emit * m).sum(1)
        if tags.size(1) > 1:
            score = score + (trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        edges = start[tags[:, 0]] + end[last]
        return score + torch.where(lengths > 0, edges, torch.zeros_like(edges))

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z per sequence by the forward algorithm (0 for an empty sequence)."""
        trans, start, end = self.scores()
        mask = mask.bool()
        alpha = start + emissions[:, 0]
        for t in range(1, emissions.size(1)):
            step = torch.logsumexp(alpha.unsqueeze(2) + trans.unsqueeze(0), dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], step, alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return torch.where(mask.any(1), log_z, torch.zeros_like(log_z))

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best tag sequence of each item (Viterbi), cut to its length."""
        trans, start, end = self.scores()
        mask = mask.bool()
        score = start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.size(1)):
            best, idx = (score.unsqueeze(2) + trans.unsqueeze(0)).max(dim=1)
            step = best + emissions[:, t]
            score = torch.where(mask[:, t : t + 1], step, score)
            backpointers.append(idx)
        score = score + end
        lengths = mask.sum(1).tolist()
        out: list[list[int]] = []
        for b, n in enumerate(lengths):
            if n == 0:
                out.append([])
                continue
            tag = int(score[b].argmax())
            path = [tag]
            for t in range(n - 1, 0, -1):
                tag = int(backpointers[t - 1][b, tag])
                path.append(tag)
            out.append(path[::-1])
        return out


def _penalty(allowed: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    if allowed is None:
        return torch.zeros(shape)
    if tuple(allowed.shape) != shape:
        raise ValueError(f"constraint shape {tuple(allowed.shape)} does not match {shape}")
    return torch.where(allowed.bool(), 0.0, FORBIDDEN)


def tag_constraints(labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allowed (transition, start, end) masks for BIO or BIOES labels such as 'B-PER'.

    BIO: I-X only continues B-X or I-X. BIOES additionally closes every entity with E-X
    (or makes it S-X), so after B or I only I or E of the same type may follow.
    """
    parsed = [("O", "") if lab == "O" else (lab[0], lab[2:]) for lab in labels]
    bioes = any(p in ("E", "S") for p, _ in parsed)
    n = len(labels)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, (p1, t1) in enumerate(parsed):
        open_entity = p1 in ("B", "I")
        for j, (p2, t2) in enumerate(parsed):
            if p2 in ("I", "E"):
                allowed[i, j] = open_entity and t1 == t2
            else:  # O, B or S begin afresh
                allowed[i, j] = not (bioes and open_entity)
    start = torch.tensor([p in ("O", "B", "S") for p, _ in parsed])
    end = torch.tensor([not (bioes and p in ("B", "I")) for p, _ in parsed])
    return allowed, start, end
