"""The multi-task batch sampler: which group each step trains on, and which examples.

Every micro-batch comes from one group (task, dataset), so each batch goes through
one head. Everything random is a pure function of the seed and a counter, which
makes resuming exact and keeps distributed ranks in step without communication:

- the group of step t is drawn with ``default_rng([seed, 0, t])``;
- the batch order of group g in its epoch e comes from ``default_rng([seed, 1, id(g), e])``
  where id(g) is a stable hash of the group's name.

So ``state_dict()`` is just counters, and every rank computes the same global batch
and keeps its own slice of it. The adaptive strategy adds its rates and the losses behind them
(sampling/adaptive.py): they change only every ``adapt_every`` draws, from losses every rank shares,
and are saved with the counters, so the draws stay a pure function of the seed and that state.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mtl.core.sampling_config import SamplingConfig
from sampling.adaptive import AdaptiveRates
from sampling.unimax import batches_per_epoch, epochs_if_full
from sampling.weights import GroupKey, group_weights, mean_weights, rates_table, smoothed_weights

log = logging.getLogger(__name__)


def _group_id(group: GroupKey) -> int:
    """A stable 63-bit id from the group's name, so adding a group leaves the others' orders unchanged."""
    digest = hashlib.sha256(f"{group[0]}/{group[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Epoch:
    """One group's global batches for one epoch: a flat index array cut at `bounds`."""

    __slots__ = ("bounds", "flat")

    def __init__(self, batches: list[np.ndarray]):
        self.flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        self.bounds = np.cumsum([0, *(len(b) for b in batches)])

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batch(self, i: int) -> np.ndarray:
        return self.flat[self.bounds[i] : self.bounds[i + 1]]


class MultiTaskBatchSampler:
    """Yields ``(group, indices)`` micro-batches: one group per step, this rank's share of a global batch.

    `lengths[g][i]` is the token length of example i of group g; the indices yielded are
    positions in that sequence. A streamed group (`streamed[g]`: its estimated size and its windows'
    token length) has no positions: the indices yielded for it are 0 … n-1, "the next n windows of this
    rank's own stream" (tasks/_text_stream.py), and its size weighs it like any other. Batches are
    formed per group and epoch:

    - fixed size: ``cfg.batch_size`` examples (the epoch's last batch may be smaller);
    - token budget (``cfg.max_tokens`` set): a batch grows while
      (longest example) × (number of examples) ≤ max_tokens and it holds at most
      ``cfg.batch_size`` examples (so raise batch_size when you rely on the budget);
      an example longer than the budget forms a batch of its own;
    - ``cfg.group_by_length``: the epoch's shuffled examples are cut into pools of
      ``length_window × batch_size``, each pool is sorted by length and cut into batches,
      and the batch order is shuffled, so a batch holds similar lengths (little padding).

    batch_size and max_tokens are global. Rank r keeps ``global[r::world_size]``. A global
    batch with fewer than world_size examples (a group's last batch, a tiny group, a single
    over-long example) is topped up by repeating its own examples, so no rank is ever
    empty; batch boundaries do not depend on world_size, so a run may resume on a
    different number of processes. Group probabilities come from `group_weights`; with
    the annealed strategy the progress of step t is t / total_steps (clamped at 1). UniMax spreads
    total_steps draws over the groups' real epochs (batches per epoch, as cut here). Adaptive rates
    move every ``adapt_every`` draws with the losses given to `observe` (see sampling/adaptive.py).

    Iteration never ends by itself: the trainer stops after `total_steps` (``len(sampler)``).
    """

    def __init__(
        self,
        lengths: Mapping[GroupKey, Sequence[int]],
        cfg: SamplingConfig,
        total_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        task_weights: Mapping[str, float] | None = None,
        streamed: Mapping[GroupKey, tuple[int, int]] | None = None,
    ):
        streamed = dict(streamed or {})
        _check_args({**lengths, **{g: [n] for g, (_, n) in streamed.items()}}, cfg, total_steps, seed, rank,
                    world_size)
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.task_weights = dict(task_weights or {})
        self.groups: list[GroupKey] = sorted({*lengths, *streamed})
        self._lengths = {g: _as_lengths(g, lengths[g]) for g in self.groups if g not in streamed}
        self._streamed = {g: self._stream_share(length) for g, (_, length) in streamed.items()}
        self.sizes: dict[GroupKey, int] = {g: len(v) for g, v in self._lengths.items()}
        self.sizes.update({g: int(size) for g, (size, _) in streamed.items()})
        self._ids = {g: _group_id(g) for g in self.groups}
        self.step = 0
        self._epoch = dict.fromkeys(self.groups, 0)
        self._pos = dict.fromkeys(self.groups, 0)
        self._drawn = dict.fromkeys(self.groups, 0)
        self._cache: dict[GroupKey, tuple[int, _Epoch]] = {}
        self._windows = {g: self._stream_batch(length) for g, (_, length) in streamed.items()}
        self._epoch_sizes: dict[GroupKey, float] = {}  # unimax: batches per epoch of each group
        self._unimax = self._plan_unimax() if cfg.strategy == "unimax" else None
        self._adaptive: AdaptiveRates | None = None
        first = self._cdf(0.0)  # also checks the weights once, before training starts
        if cfg.strategy == "adaptive":
            prior = smoothed_weights(self.sizes, cfg, 0.0, self.task_weights)
            every = 100 if cfg.adapt_every is None else cfg.adapt_every
            rate = 1.0 if cfg.adapt_rate is None else cfg.adapt_rate
            self._adaptive = AdaptiveRates(self.groups, prior, cfg.floor, every, rate)
        self._fixed_cdf = None if cfg.strategy in ("annealed", "adaptive") else first
        self._last = int(np.flatnonzero(np.diff(first, prepend=0.0) > 0)[-1])  # guards float round-off

    # ----------------------------------------------------------------- iteration

    def __len__(self) -> int:
        return self.total_steps

    def __iter__(self) -> Iterator[tuple[GroupKey, list[int]]]:
        return self

    def __next__(self) -> tuple[GroupKey, list[int]]:
        if self._adaptive is not None:
            self._adaptive.advance(self.step)  # a new block: rates from the losses of the last one
        group = self.group_at(self.step)
        if group in self._streamed:  # this rank's next windows of its own stream (see _stream_share)
            self._drawn[group] += 1
            self.step += 1
            return group, list(range(self._streamed[group]))
        epoch = self._epoch_batches(group)
        batch = epoch.batch(self._pos[group])
        self._pos[group] += 1
        if self._pos[group] == len(epoch):
            self._epoch[group] += 1
            self._pos[group] = 0
        self._drawn[group] += 1
        self.step += 1
        return group, batch[self.rank :: self.world_size].tolist()

    def _stream_batch(self, length: int) -> int:
        """Windows in a global batch of a streamed group: `batch_size`, or as many `length`-token windows as
        `max_tokens` holds (at least one)."""
        size = self.cfg.batch_size
        if self.cfg.max_tokens is not None:
            size = min(size, max(1, self.cfg.max_tokens // max(1, length)))
        return size

    def _stream_share(self, length: int) -> int:
        """How many windows this rank takes per batch of a streamed group: its share of a global batch, at least one."""
        return len(range(self.rank, max(self._stream_batch(length), self.world_size), self.world_size))

    # ----------------------------------------------------------------- learning from the losses

    def observe(self, group: GroupKey, loss: float) -> None:
        """The training loss of the micro-batch just drawn from `group`; only the adaptive strategy learns from it.

        It must be a value every rank shares (the trainer's global mean, mtl/loss.py), or ranks would drift apart.
        """
        if self._adaptive is not None:
            self._adaptive.observe(group, loss)

    def rate_metrics(self) -> dict[str, float]:
        """`sampling/rate/<task>/<dataset>`: the rates in force, for strategies whose rates move (annealed,
        adaptive); the others' rates are in the table printed at the start."""
        if self.cfg.strategy not in ("annealed", "adaptive"):
            return {}
        return {f"sampling/rate/{t}/{d}": float(p) for (t, d), p in self.probabilities().items()}

    def rate_history(self) -> list[tuple[int, dict[GroupKey, float]]]:
        """(first draw, rates) of each block of an adaptive sampler, the starting rates first; [] for the others."""
        return self._adaptive.history() if self._adaptive is not None else []

    def _plan_unimax(self) -> dict[GroupKey, float]:
        """UniMax rates over the groups' real epochs (batches per epoch) for a budget of total_steps draws."""
        n_epochs = 1.0 if self.cfg.max_epochs is None else float(self.cfg.max_epochs)
        batches = {g: float(self._batches_per_epoch(g)) for g in self.groups}
        self._epoch_sizes = batches
        full = epochs_if_full(batches, self.total_steps, n_epochs)
        if full is not None:
            log.warning("unimax: %d draws are more than %g epoch(s) of every group (%d batches in all), so every "
                        "group is drawn about %.2f times over (proportionally); raise sampling.max_epochs or train "
                        "for fewer steps", self.total_steps, n_epochs, int(sum(batches.values())), full)
        return group_weights(batches, self.cfg, 0.0, self.task_weights, budget=self.total_steps)

    def _batches_per_epoch(self, group: GroupKey) -> int:
        if group in self._windows:
            return batches_per_epoch(self.sizes[group], self._windows[group])
        if self.cfg.max_tokens is None:
            return batches_per_epoch(self.sizes[group], self.cfg.batch_size)
        return len(self._epoch_batches(group))  # a token budget: count the epoch's real batches (cached)

    @property
    def progress(self) -> float:
        """Fraction of training done, as the annealed strategy sees it."""
        return min(self.step / self.total_steps, 1.0)

    def group_at(self, step: int) -> GroupKey:
        """The group trained on at `step`: the same on every rank, whatever came before (adaptive: given the
        losses observed so far; a step past the current block is drawn with the current rates)."""
        if self._fixed_cdf is not None:
            cdf = self._fixed_cdf
        elif self._adaptive is not None:
            cdf = np.cumsum(self._adaptive.at(step))
        else:
            cdf = self._cdf(min(step / self.total_steps, 1.0))
        u = np.random.default_rng([self.seed, 0, step]).random() * cdf[-1]
        i = int(np.searchsorted(cdf, u, side="right"))
        return self.groups[min(i, self._last)]

    def probabilities(self, progress: float | None = None) -> dict[GroupKey, float]:
        """Target probability of each group (at the current progress unless given; adaptive: the rates of the
        block that `progress` falls in, the current ones for a block not yet reached)."""
        p = self.progress if progress is None else progress
        if self._unimax is not None:
            return dict(self._unimax)
        if self._adaptive is not None:
            step = self.step if progress is None else round(p * self.total_steps)
            return dict(zip(self.groups, self._adaptive.at(step).tolist()))
        return group_weights(self.sizes, self.cfg, p, self.task_weights)

    def _cdf(self, progress: float) -> np.ndarray:
        probs = self.probabilities(progress)
        return np.cumsum([probs[g] for g in self.groups])

    # ----------------------------------------------------------------- epochs

    def epoch_batches(self, group: GroupKey, epoch: int) -> list[list[int]]:
        """All global batches of `group` in `epoch`, in the order they are drawn."""
        e = self._build_epoch(group, epoch)
        return [e.batch(i).tolist() for i in range(len(e))]

    def _epoch_batches(self, group: GroupKey) -> _Epoch:
        epoch = self._epoch[group]
        cached = self._cache.get(group)
        if cached is None or cached[0] != epoch:
            cached = (epoch, self._build_epoch(group, epoch))
            self._cache[group] = cached
        return cached[1]

    def _build_epoch(self, group: GroupKey, epoch: int) -> _Epoch:
        if group not in self._lengths:
            raise KeyError(f"unknown group {group!r}; known: {self.groups}")
        lengths = self._lengths[group]
        rng = np.random.default_rng([self.seed, 1, self._ids[group], epoch])
        order = rng.permutation(len(lengths))
        if self.cfg.group_by_length:
            pool = self.cfg.length_window * self.cfg.batch_size
            batches = []
            for start in range(0, len(order), pool):
                chunk = order[start : start + pool]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches += self._cut(chunk, lengths)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches = self._cut(order, lengths)
        return _Epoch([self._top_up(b) for b in batches])

    def _cut(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Cut `order` into consecutive batches by size, or by token budget when max_tokens is set."""
        size, budget = self.cfg.batch_size, self.cfg.max_tokens
        if budget is None:
            return [order[i : i + size] for i in range(0, len(order), size)]
        cuts, count, longest = [0], 0, 0
        for i, n in enumerate(lengths[order].tolist()):
            wider = max(longest, n)
            if count and (count == size or wider * (count + 1) > budget):
                cuts.append(i)
                count, wider = 0, n
            count, longest = count + 1, wider
        cuts.append(len(order))
        return [order[a:b] for a, b in itertools.pairwise(cuts)]

    def _top_up(self, batch: np.ndarray) -> np.ndarray:
        """Repeat a batch's own examples until every rank gets at least one."""
        if len(batch) >= self.world_size:
            return batch
        return np.resize(batch, self.world_size)

    # ----------------------------------------------------------------- reporting and state

    def realised_counts(self) -> dict[GroupKey, int]:
        """Batches drawn so far per group."""
        return dict(self._drawn)

    def rates_table(self, realised: bool = True) -> str:
        """Planned rates per group and, unless `realised` is false, those drawn so far.

        Beside realised counts the plan is averaged over the run (as the draws are), so an annealed
        plan compares with what was drawn; without them it is the target at the current progress.
        """
        if not realised:
            return rates_table(self.sizes, self.probabilities()) + self._strategy_note()
        if self._unimax is not None:
            planned = dict(self._unimax)
        elif self._adaptive is not None:  # the rates as they were in force over the draws made
            planned = self._adaptive.mean(self.step)
        else:
            planned = mean_weights(self.sizes, self.cfg, self.task_weights, steps=self.total_steps)
        return rates_table(self.sizes, planned, self.realised_counts()) + self._strategy_note()

    def _strategy_note(self) -> str:
        """A line under the table for the strategies whose numbers need a word."""
        if self._unimax is not None:
            n_epochs = 1.0 if self.cfg.max_epochs is None else float(self.cfg.max_epochs)
            full = [f"{t}/{d}" for (t, d), b in self._epoch_sizes.items()
                    if b and self._unimax[t, d] * self.total_steps >= n_epochs * b * (1 - 1e-9)]
            return (f"\nunimax: {self.total_steps} draws spread evenly, at most {n_epochs:g} epoch(s) of a group; "
                    f"at that limit: {', '.join(full) or 'none'}")
        if self._adaptive is not None:
            a = self._adaptive
            return (f"\nadaptive: rates move every {a.every} draws with each group's loss ratio (now / start), "
                    f"η = {a.rate:g}, floor {a.floor:.4g}; {len(a.history()) - 1} update(s) so far")
        return ""

    def state_dict(self) -> dict[str, Any]:
        """Counters only (JSON-friendly): everything else follows from the seed (and, adaptive, the rates saved)."""
        extra = {"adaptive": self._adaptive.state_dict()} if self._adaptive is not None else {}
        return {
            **extra,
            "step": self.step,
            "seed": self.seed,
            "groups": [
                {
                    "task": t,
                    "dataset": d,
                    "epoch": self._epoch[t, d],
                    "position": self._pos[t, d],
                    "drawn": self._drawn[t, d],
                }
                for t, d in self.groups
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters; the following draws equal those of an uninterrupted run."""
        if state.get("seed") != self.seed:
            raise ValueError(f"sampler state was saved with seed {state.get('seed')!r}, this sampler has {self.seed}")
        saved = {(r["task"], r["dataset"]): r for r in state["groups"]}
        if set(saved) != set(self.groups):
            raise ValueError(
                f"sampler state has groups {sorted(saved)}, this sampler has {self.groups}; "
                "resume with the same training datasets"
            )
        self.step = int(state["step"])
        for g in self.groups:
            self._epoch[g] = int(saved[g]["epoch"])
            self._pos[g] = int(saved[g]["position"])
            self._drawn[g] = int(saved[g]["drawn"])
        self._cache.clear()
        if self._adaptive is not None:
            if "adaptive" in state:
                self._adaptive.load_state_dict(state["adaptive"])
            else:  # saved under a static strategy (a change allowed at --resume): adapt from here on
                self._adaptive.restart_at(self.step)
                log.warning("the sampler state has no adaptive rates; they start from the smoothed ones at draw %d",
                            self.step)


def _as_lengths(group: GroupKey, values: Sequence[int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"group {group[0]}/{group[1]}: lengths must be a flat sequence of integers")
    if arr.size and arr.min() < 0:
        raise ValueError(f"group {group[0]}/{group[1]}: lengths must be ≥ 0, found {int(arr.min())}")
    return arr.astype(np.int64)


def _check_args(
    lengths: Mapping[GroupKey, Sequence[int]],
    cfg: SamplingConfig,
    total_steps: int,
    seed: int,
    rank: int,
    world_size: int,
) -> None:
    if not lengths:
        raise ValueError("the sampler needs at least one group")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if cfg.batch_size < world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) is global and must be at least world_size ({world_size})")
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {cfg.max_tokens}")
    if cfg.length_window < 1:
        raise ValueError(f"length_window must be at least 1, got {cfg.length_window}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
