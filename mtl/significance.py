"""Is a difference between two regimes more than noise? A paired bootstrap over the evaluation examples,
required to hold in every seed pair.

Two noises hide in one score: which examples the evaluation set happens to hold, and which seed trained
the model. For each seed, both regimes' final predictions on the same examples are resampled with the same
indices (Koehn 2004; Berg-Kirkpatrick et al. 2012), which gives the spread of their difference that the
evaluation sample alone would cause; a difference counts only when that bootstrap excludes zero (two-sided
p < 0.05) in every seed pair and points the same way in each — a seed that reverses it, or leaves it inside
the noise, leaves the cell unmarked. With one seed the test is the bootstrap alone, and says only that.

The resamples are drawn from a fixed generator seeded by the number of examples, so that every run scoring
the same evaluation split resamples the same examples: replicates stored per run pair up afterwards (from
stage.json or from MLflow) without keeping the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA = 0.05
RESAMPLE_SEED = 20_041  # the generator's seed beside the example count: the same resamples for every run
UP, DOWN = "▲", "▼"


def resamples(n_examples: int, count: int) -> np.ndarray:
    """`count` × `n_examples` indices drawn with replacement; the same for every caller with the same sizes."""
    rng = np.random.default_rng([RESAMPLE_SEED, n_examples])
    return rng.integers(0, n_examples, size=(count, n_examples))


def replicates(family: Any, examples: Sequence[Any], predictions: Sequence[Any], dataset: Any, metric: str,
               count: int) -> list[float]:
    """The metric on each of `count` resamples of the examples (NaN where a resample has nothing to score)."""
    if not examples or count < 1:
        return []
    score = family.sample_scorer(examples, predictions, dataset)
    out = []
    for indices in resamples(len(examples), count):
        out.append(float(score(indices.tolist()).get(metric, float("nan"))))
    return out


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired bootstrap: how often the resampled difference a − b lies on the far side of 0."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


def mark(pairs: Sequence[tuple[float, float, Sequence[float], Sequence[float]]], alpha: float = ALPHA) -> str:
    """▲ or ▼ when every (value, baseline value, replicates, baseline replicates) pair differs beyond the
    noise in the same direction; "" otherwise (also when a pair lacks replicates, or they do not pair up)."""
    if not pairs:
        return ""
    ups = set()
    for value, base, reps, base_reps in pairs:
        if not reps or len(reps) != len(base_reps):
            return ""
        p = paired_p(reps, base_reps)
        if not p < alpha or value == base:
            return ""
        ups.add(value > base)
    return (UP if ups.pop() else DOWN) if len(ups) == 1 else ""


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
