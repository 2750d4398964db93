"""Adaptive rates: groups whose training loss stays high relative to where it started are drawn more.

The update is DoReMi's (Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model
Pretraining", NeurIPS 2023, Algorithm 1): multiplicative weights, log α_i += η λ_i, normalised, then
mixed with the uniform distribution so no group starves. DoReMi's λ_i is the excess loss over a
reference model trained beforehand; here there is no reference model, so λ_i is the group's loss
ratio L_i(now) / L_i(start) (GradNorm's "inverse training rate", Chen et al., ICML 2018): the share
of its first loss a group still has. Dividing by the starting loss makes a tagging loss over 17 tags
and a two-way classification loss comparable. Like ODM (Albalak et al., "Efficient Online Data
Mixing", 2023), whose bandit reward is the training loss itself, the weights move online, during
the one run, from the losses the trainer computes anyway.

So the predicted direction is: a group that learns (its ratio falls) loses rate to one whose loss
stays near its start (ratio ≈ 1), down to the floor. A group that cannot be learned at all (noise)
takes rate it does not deserve; the floor keeps the others alive, and η (adapt_rate) sets the pace.

Determinism: the rates change only at draws k × adapt_every, from the mean loss of each group over
the last block (the losses every rank shares: the trainer logs global means, mtl/loss.py); between
updates the sampler draws from fixed rates, as any static strategy. A group not drawn in a block
keeps its last ratio. Everything is plain floats in `state_dict`, so a resumed run and every rank
update to the same bits.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GroupKey = tuple[str, str]


class AdaptiveRates:
    """The current rates of an adaptive sampler, the loss bookkeeping behind them, and their history."""

    def __init__(self, groups: Sequence[GroupKey], prior: Mapping[GroupKey, float], floor: float | None,
                 every: int, rate: float):
        self.groups = list(groups)
        self.every = int(every)
        self.rate = float(rate)
        p = np.array([float(prior[g]) for g in self.groups])
        self._active = p > 0
        n = int(self._active.sum())
        self.floor = 0.1 / n if floor is None else float(floor)
        if self.floor * n >= 1:
            raise ValueError(f"sampling.floor {self.floor:g} × {n} groups = {self.floor * n:g} leaves no probability "
                             f"to adapt; choose a floor below {1 / n:.4g}")
        self._log_w = np.where(self._active, np.log(np.where(self._active, p, 1.0)), -np.inf)
        self._start: list[float | None] = [None] * len(self.groups)
        self._recent: list[float | None] = [None] * len(self.groups)
        self._sums = [0.0] * len(self.groups)
        self._counts = [0] * len(self.groups)
        self._index = {g: i for i, g in enumerate(self.groups)}
        self.block = 0  # the rates in force were set at draw block × every
        self._set_history([(0, self._rates().tolist())])

    # ----------------------------------------------------------------- rates

    def _rates(self) -> np.ndarray:
        """floor + (1 - n·floor) · softmax(log α) over the non-empty groups; 0 for the others."""
        logs = self._log_w[self._active]
        w = np.exp(logs - logs.max())
        out = np.zeros(len(self.groups))
        out[self._active] = self.floor + (1.0 - self.floor * int(self._active.sum())) * w / w.sum()
        return out

    def current(self) -> np.ndarray:
        return self._now

    def at(self, step: int) -> np.ndarray:
        """The rates draw `step` is (or was) made with; a draw after the current block uses the current rates."""
        if step >= self._starts[-1]:
            return self._now
        return np.asarray(self._history[max(0, bisect.bisect_right(self._starts, step) - 1)][1])

    def _set_history(self, history: list[tuple[int, list[float]]]) -> None:
        self._history = history
        self._starts = [s for s, _ in history]
        self._now = np.asarray(history[-1][1])

    def restart_at(self, step: int) -> None:
        """Adapt from draw `step` on, from the starting rates (a run resumed from a state without them)."""
        self.block = step // self.every
        self._set_history([(step, self._rates().tolist())])

    def history(self) -> list[tuple[int, dict[GroupKey, float]]]:
        """(first draw, rates) for every update so far, the starting rates first."""
        return [(s, dict(zip(self.groups, r))) for s, r in self._history]

    def mean(self, steps: int) -> dict[GroupKey, float]:
        """The rates averaged over draws 0 … steps-1 as they were in force (the current ones for draws not yet
        made): the plan that realised counts should meet."""
        if steps <= 0:
            return dict(zip(self.groups, self.current().tolist()))
        total = np.zeros(len(self.groups))
        for k, (start, rates) in enumerate(self._history):
            end = self._history[k + 1][0] if k + 1 < len(self._history) else steps
            total += max(0, min(end, steps) - start) * np.asarray(rates)
        return dict(zip(self.groups, (total / steps).tolist()))

    # ----------------------------------------------------------------- learning

    def observe(self, group: GroupKey, loss: float) -> None:
        """One micro-batch's training loss; it counts towards the block now being drawn."""
        if group not in self._index:
            raise KeyError(f"unknown group {group!r}; known: {self.groups}")
        if not math.isfinite(loss):
            raise ValueError(f"{group[0]}/{group[1]}: loss {loss} is not finite; only finite losses adapt the rates")
        i = self._index[group]
        self._sums[i] += float(loss)
        self._counts[i] += 1

    def advance(self, step: int) -> bool:
        """Update the rates if draw `step` starts a block they were not yet updated for; whether they were."""
        block = step // self.every
        if block <= self.block:
            return False
        for i, count in enumerate(self._counts):
            if count:
                mean = self._sums[i] / count
                if self._start[i] is None:
                    self._start[i] = mean
                self._recent[i] = mean
        ratios = np.array([r / s if r is not None and s is not None and s > 0 else 1.0
                           for r, s in zip(self._recent, self._start)])
        self._log_w = np.where(self._active, self._log_w + self.rate * ratios, -np.inf)
        self._log_w = self._log_w - self._log_w[self._active].max()  # bounded; the softmax is unchanged
        self._sums = [0.0] * len(self.groups)
        self._counts = [0] * len(self.groups)
        self.block = block
        rates = self._rates()
        self._history.append((block * self.every, rates.tolist()))
        self._starts.append(block * self.every)
        self._now = rates
        return True

    def ratios(self) -> dict[GroupKey, float | None]:
        """Each group's last loss ratio L(recent) / L(start) (None before it was seen in a finished block)."""
        return {g: (r / s if r is not None and s is not None and s > 0 else None)
                for g, r, s in zip(self.groups, self._recent, self._start)}

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Plain floats (JSON keeps them to the bit): the weights, the losses behind them, the history."""
        return {
            "block": self.block,
            "log_weights": [float(x) if a else None for x, a in zip(self._log_w, self._active)],
            "start": list(self._start),
            "recent": list(self._recent),
            "sums": list(self._sums),
            "counts": list(self._counts),
            "history": [[s, list(r)] for s, r in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = len(self.groups)
        if any(len(state[k]) != n for k in ("log_weights", "start", "recent", "sums", "counts")):
            raise ValueError(f"adaptive sampler state is for {len(state['log_weights'])} groups, this one has {n}")
        self.block = int(state["block"])
        self._log_w = np.array([-np.inf if x is None else float(x) for x in state["log_weights"]])
        self._start = [None if x is None else float(x) for x in state["start"]]
        self._recent = [None if x is None else float(x) for x in state["recent"]]
        self._sums = [float(x) for x in state["sums"]]
        self._counts = [int(x) for x in state["counts"]]
        self._set_history([(int(s), [float(x) for x in r]) for s, r in state["history"]])
