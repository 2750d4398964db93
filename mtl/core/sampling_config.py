"""The sampler's own settings. The experiment schema embeds this type, so it lives in the bottom layer beside the
schema, and `sampling/` (which re-exports it) reads its settings without importing anything above mtl/core."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SamplingConfig:
    """How groups (task, language) are weighed and how batches are formed."""

    strategy: Literal["proportional", "uniform", "smoothed", "capped", "annealed", "unimax", "adaptive"] = "smoothed"
    # The exponent S in p ∝ n^S (smoothed; the target S for annealed); default 0.7. It is NOT the
    # temperature T of jiant/seqio (p ∝ n^(1/T)): T = 5 is smoothing 0.2.
    smoothing: float | None = None
    cap: int | None = None  # K in min(n, K) (capped)
    anneal_from: float = 1.0  # starting S for annealed
    hierarchical: bool = False  # pick a task first, then a language within it
    task_smoothing: float | None = None  # S over tasks when hierarchical (defaults to smoothing)
    allow_smoothing_above_one: bool = False  # S > 1 favours large groups beyond their share: ask for it
    temperature: float | None = None  # old name of `smoothing` (the same exponent S); kept as an alias
    task_temperature: float | None = None  # old name of `task_smoothing`
    batch_size: int = 32  # examples per batch (global, all ranks together)
    # token budget per batch (global): longest × count ≤ max_tokens; batch_size still caps the count
    max_tokens: int | None = None
    group_by_length: bool = True
    length_window: int = 50  # batches per length-sorted pool
    # unimax (sampling/unimax.py): N, the most epochs any group is drawn for over the run (default 1, as the paper)
    max_epochs: float | None = None
    # adaptive (sampling/adaptive.py); the starting rates are those of `smoothed` (p ∝ n^S)
    floor: float | None = None  # least probability of each non-empty group (default: a tenth of 1 / groups)
    adapt_every: int | None = None  # draws (micro-batches) between two rate updates (default 100)
    adapt_rate: float | None = None  # η of the multiplicative update on the loss ratios (default 1, as DoReMi)

    def __post_init__(self) -> None:
        for name, alias, default in (("smoothing", "temperature", 0.7), ("task_smoothing", "task_temperature", None)):
            value, old = getattr(self, name), getattr(self, alias)
            if value is not None and old is not None and float(value) != float(old):
                raise ValueError(f"{name} ({value}) and its old name {alias} ({old}) are both given; keep {name}")
            # the alias settled while the instance is built (frozen: never written afterwards)
            object.__setattr__(self, name, value if value is not None else old if old is not None else default)
        self._check_strategy_keys()

    def _check_strategy_keys(self) -> None:
        """A key of one strategy given with another would do nothing, so it is refused; so are values out of range."""
        own = {"max_epochs": "unimax", "floor": "adaptive", "adapt_every": "adaptive", "adapt_rate": "adaptive"}
        for key, strategy in own.items():
            if getattr(self, key) is not None and self.strategy != strategy:
                raise ValueError(f"sampling.{key} is a setting of the {strategy} strategy, and strategy is "
                                 f"{self.strategy}: drop it or set strategy: {strategy}")
        if self.strategy == "unimax" and self.hierarchical:
            raise ValueError("sampling.hierarchical does not apply to unimax, which spreads the budget over the groups "
                             "themselves; drop hierarchical")
        bounds = {"max_epochs": (0.0, False, "a number of epochs > 0"), "floor": (0.0, True, "a probability in [0, 1)"),
                  "adapt_rate": (0.0, True, "a number ≥ 0")}
        for key, (low, closed, what) in bounds.items():
            value = getattr(self, key)
            if value is None:
                continue
            fine = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
                value >= low if closed else value > low)
            if not fine or (key == "floor" and value >= 1):
                raise ValueError(f"sampling.{key} must be {what}, got {value!r}")
        every = self.adapt_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"sampling.adapt_every must be a whole number of draws ≥ 1, got {every!r}")

    def exponent_problems(self) -> list[tuple[str, str]]:
        """(key as written, message) for each exponent out of range; S > 1 only when allowed."""
        out = []
        for name, alias in (("smoothing", "temperature"), ("task_smoothing", "task_temperature"),
                            ("anneal_from", "")):
            value = getattr(self, name)
            key = alias if alias and getattr(self, alias) is not None else name
            if value is None:
                continue
            if not math.isfinite(value) or value < 0:
                out.append((key, f"must be a number ≥ 0 (the exponent S in p ∝ n^S), got {value!r}"))
            elif value > 1 and not self.allow_smoothing_above_one and not (name == "anneal_from" and value == 1):
                hint = f"; a jiant/seqio temperature T = {value:g} is smoothing: {1 / value:.3g}"
                out.append((key, f"{value:g} is the exponent S in p ∝ n^S, so large groups get more than their "
                                 f"share (n^{value:g}){hint}. Set sampling.allow_smoothing_above_one: true if "
                                 "that is meant"))
        return out
