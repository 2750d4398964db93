"""UniMax: spread a run's budget as evenly as possible over the groups, no group beyond N epochs.

Chung et al., "UniMax: Fairer and More Effective Language Sampling for Large-Scale Multilingual
Pretraining" (ICLR 2023), Algorithm 1: sort the groups by size, smallest first; each in turn gets
min(remaining budget / remaining groups, N × its size), and what it cannot use is carried over to
the larger ones. Small groups are thus seen N times over and no more (temperature sampling would
repeat them dozens of times), and the large ones share the rest evenly, which is uniform sampling
wherever the data allows it. The rates are the allocation divided by its sum.

The paper counts characters; here the unit is whatever `sizes` and `budget` share: the sampler
counts batches (its draws), so a group's size is the number of batches in one of its epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

GroupKey = tuple[str, str]


def unimax_allocation(
    sizes: Mapping[GroupKey, float],
    budget: float,
    max_epochs: float = 1.0,
    weights: Mapping[GroupKey, float] | None = None,
) -> dict[GroupKey, float]:
    """Each group's share of `budget` (in the units of `sizes`), at most `max_epochs` × its size.

    `weights` (the task weights; 1 when missing) make the even split a weighted one: a group's
    share of what remains is weight / (sum of the remaining weights), and groups are taken in
    order of (N × size) / weight, so those that fill up first go first; all weights 1 is the paper.
    The allocation sums to less than `budget` only when every group is full (N × size each).
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"unimax needs a budget > 0 (the run's draws), got {budget!r}")
    if not (math.isfinite(max_epochs) and max_epochs > 0):
        raise ValueError(f"unimax max_epochs must be > 0, got {max_epochs!r}")
    w = {g: float((weights or {}).get(g, 1.0)) for g in sizes}
    caps = {g: max_epochs * float(n) for g, n in sizes.items()}
    share = {g: 0.0 for g in sizes}
    live = [g for g in sizes if w[g] > 0 and caps[g] > 0]
    # ascending by how soon a group fills (size itself when weights are equal); the name breaks ties
    live.sort(key=lambda g: (caps[g] / w[g], g))
    remaining, weight_left = float(budget), sum(w[g] for g in live)
    for g in live:
        even = remaining * w[g] / weight_left
        share[g] = min(even, caps[g])
        remaining -= share[g]
        weight_left -= w[g]
    return share


def unimax_rates(
    sizes: Mapping[GroupKey, float],
    budget: float,
    max_epochs: float = 1.0,
    weights: Mapping[GroupKey, float] | None = None,
) -> dict[GroupKey, float]:
    """The sampling probability of each group: its UniMax allocation over the allocation's sum."""
    share = unimax_allocation(sizes, budget, max_epochs, weights)
    total = sum(share.values())
    if not total > 0:
        raise ValueError("cannot sample with unimax: every group is empty or has task weight 0")
    return {g: s / total for g, s in share.items()}


def epochs_if_full(sizes: Mapping[GroupKey, float], budget: float, max_epochs: float) -> float | None:
    """When the budget exceeds N epochs of every group: the epochs each group is then drawn for (else None)."""
    total = sum(float(n) for n in sizes.values())
    return budget / total if total > 0 and budget > max_epochs * total else None


def batches_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in an epoch of fixed-size batches (what the sampler cuts when no token budget is set)."""
    return -(-int(examples) // int(batch_size))
