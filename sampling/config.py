"""The sampler's own settings; the experiment schema embeds this type, so `sampling/` needs nothing above it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class SamplingConfig:
    """How groups (task, language) are weighed and how batches are formed."""

    strategy: Literal["proportional", "uniform", "smoothed", "capped", "annealed"] = "smoothed"
    temperature: float = 0.7  # S in p ∝ n^S (smoothed); target S for annealed
    cap: int | None = None  # K in min(n, K) (capped)
    anneal_from: float = 1.0  # starting S for annealed
    hierarchical: bool = False  # pick a task first, then a language within it
    task_temperature: float | None = None  # S over tasks when hierarchical (defaults to temperature)
    batch_size: int = 32  # examples per batch (global, all ranks together)
    # token budget per batch (global): longest × count ≤ max_tokens; batch_size still caps the count
    max_tokens: int | None = None
    group_by_length: bool = True
    length_window: int = 50  # batches per length-sorted pool
