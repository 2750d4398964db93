"""The sampler's own settings; the experiment schema embeds this type, so `sampling/` needs nothing above it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class SamplingConfig:
    """How groups (task, language) are weighed and how batches are formed."""

    strategy: Literal["proportional", "uniform", "smoothed", "capped", "annealed"] = "smoothed"
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

    def __post_init__(self) -> None:
        for name, alias, default in (("smoothing", "temperature", 0.7), ("task_smoothing", "task_temperature", None)):
            value, old = getattr(self, name), getattr(self, alias)
            if value is not None and old is not None and float(value) != float(old):
                raise ValueError(f"{name} ({value}) and its old name {alias} ({old}) are both given; keep {name}")
            setattr(self, name, value if value is not None else old if old is not None else default)

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
