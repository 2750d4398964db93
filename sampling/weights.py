"""How often each (task, dataset) group is drawn: p_i ∝ n_i^S and its variants.

S = 1 follows the data (large groups dominate), S = 0 treats every group alike,
and values in between (0.7, as multilingual BERT used for its languages) lift
small groups without repeating them to death. Capped weighting (T5) is p_i ∝
min(n_i, K); annealed weighting moves S over training; hierarchical weighting
first picks a task, then a dataset inside it. UniMax (sampling/unimax.py) spreads the run's
budget evenly with at most N epochs of any group; adaptive (sampling/adaptive.py) starts from the
smoothed rates and moves them with the groups' training losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from mtl.core.sampling_config import SamplingConfig
from mtl.core.table import format_table
from sampling.adaptive import AdaptiveRates
from sampling.unimax import batches_per_epoch, unimax_rates

GroupKey = tuple[str, str]  # (task name, dataset name)

STRATEGIES = ("proportional", "uniform", "smoothed", "capped", "annealed", "unimax", "adaptive")


def exponent_at(cfg: SamplingConfig, progress: float = 0.0) -> float:
    """The exponent S in p ∝ n^S at `progress` ∈ [0, 1] of training (capped and unimax have none: NaN;
    adaptive starts from S = smoothing)."""
    progress = _check_progress(progress)
    if cfg.strategy == "proportional":
        return 1.0
    if cfg.strategy == "uniform":
        return 0.0
    if cfg.strategy in ("smoothed", "adaptive"):
        return float(cfg.smoothing)  # type: ignore[arg-type]  # set by SamplingConfig.__post_init__
    if cfg.strategy == "annealed":
        target = float(cfg.smoothing)  # type: ignore[arg-type]
        return float(cfg.anneal_from) + (target - float(cfg.anneal_from)) * progress
    if cfg.strategy in ("capped", "unimax"):
        return math.nan
    raise ValueError(f"unknown sampling strategy {cfg.strategy!r} (choose from {', '.join(STRATEGIES)})")


temperature_at = exponent_at  # the old name: it returns the exponent S, not a temperature


def mean_weights(
    sizes: Mapping[GroupKey, int],
    cfg: SamplingConfig,
    task_weights: Mapping[str, float] | None = None,
    steps: int = 1000,
) -> dict[GroupKey, float]:
    """The planned probability of each group averaged over a run of `steps` draws.

    Draw t uses progress t / steps (as MultiTaskBatchSampler does), so this is what the realised
    rates should approach; it differs from the step-0 weights only for the annealed strategy. UniMax
    spreads `steps` batches, counting an epoch of a group as ceil(n / batch_size) batches (the sampler
    counts its real batches, which a token budget makes more); adaptive gives its starting rates,
    since what follows depends on the losses.
    """
    if cfg.strategy == "unimax":
        batches = {g: batches_per_epoch(n, cfg.batch_size) for g, n in sizes.items()}
        return group_weights(batches, cfg, 0.0, task_weights, budget=max(1, int(steps)))
    if cfg.strategy != "annealed":
        return group_weights(sizes, cfg, 0.0, task_weights)
    steps = max(1, int(steps))
    points = [t / steps for t in range(steps)] if steps <= 1000 else [k / 1000 for k in range(1000)]
    total: dict[GroupKey, float] = dict.fromkeys(sizes, 0.0)
    for progress in points:
        for g, p in group_weights(sizes, cfg, progress, task_weights).items():
            total[g] += p / len(points)
    return total


def group_weights(
    sizes: Mapping[GroupKey, int],
    cfg: SamplingConfig,
    progress: float = 0.0,
    task_weights: Mapping[str, float] | None = None,
    budget: float | None = None,
) -> dict[GroupKey, float]:
    """Sampling probability of each group, summing to 1.

    `sizes` holds the number of training examples per group; empty groups get 0.
    `task_weights` (TaskConfig.weight) multiply each task's unnormalised mass; tasks
    missing from it weigh 1. When `cfg.hierarchical`, a task is picked with
    p ∝ (Σ n over its groups)^S_task (S_task = cfg.task_smoothing, else the same
    rule as for groups), then a group inside it with p ∝ n^S. UniMax needs `budget`, the
    run's draws in the units of `sizes` (batches, for the sampler); adaptive gives its
    starting rates: the smoothed ones, each lifted to at least `cfg.floor`.
    """
    _check_inputs(sizes, cfg, task_weights)
    if cfg.strategy == "unimax":
        if budget is None:
            raise ValueError("the unimax strategy needs the run's budget (its draws) to spread; use mean_weights "
                             "with the run's steps, or the sampler")
        max_epochs = 1.0 if cfg.max_epochs is None else float(cfg.max_epochs)
        tw = dict(task_weights or {})
        return unimax_rates(sizes, budget, max_epochs, {g: tw.get(g[0], 1.0) for g in sizes})
    prior = smoothed_weights(sizes, cfg, progress, task_weights)
    if cfg.strategy == "adaptive":
        return adaptive_start(sizes, cfg, prior)
    return prior


def adaptive_start(sizes: Mapping[GroupKey, int], cfg: SamplingConfig,
                   prior: Mapping[GroupKey, float]) -> dict[GroupKey, float]:
    """The adaptive strategy's rates at its first draw: `prior` with every non-empty group at least at the floor."""
    start = AdaptiveRates(list(sizes), prior, cfg.floor, 1, 0.0).current()
    return dict(zip(sizes, start.tolist()))


def smoothed_weights(
    sizes: Mapping[GroupKey, int],
    cfg: SamplingConfig,
    progress: float = 0.0,
    task_weights: Mapping[str, float] | None = None,
) -> dict[GroupKey, float]:
    """p ∝ n^S (or min(n, K) when capped), flat or hierarchical: every strategy but unimax, before any floor."""
    mass = _mass_function(cfg, progress)
    tw = dict(task_weights or {})
    if not cfg.hierarchical:
        raw = {g: tw.get(g[0], 1.0) * mass(n) for g, n in sizes.items()}
        return _normalise(raw, sizes)
    task_mass = _mass_function(cfg, progress, cfg.task_smoothing)
    by_task: dict[str, dict[GroupKey, int]] = {}
    for g, n in sizes.items():
        by_task.setdefault(g[0], {})[g] = n
    raw = {}
    for task, groups in by_task.items():
        inner = {g: mass(n) for g, n in groups.items()}
        inner_total = sum(inner.values())
        outer = tw.get(task, 1.0) * task_mass(sum(groups.values()))
        for g, m in inner.items():
            raw[g] = outer * m / inner_total if inner_total > 0 else 0.0
    return _normalise(raw, sizes)


def _mass_function(cfg: SamplingConfig, progress: float, exponent: float | None = None) -> Callable[[float], float]:
    """n ↦ unnormalised weight; 0 for an empty group whatever the rule (0^0 would be 1)."""
    if exponent is not None:
        s = float(exponent)
        return lambda n: float(n) ** s if n > 0 else 0.0
    if cfg.strategy == "capped":
        cap = float(cfg.cap)  # type: ignore[arg-type]  # checked in _check_inputs
        return lambda n: float(min(n, cap))
    s = exponent_at(cfg, progress)
    return lambda n: float(n) ** s if n > 0 else 0.0


def _normalise(raw: dict[GroupKey, float], sizes: Mapping[GroupKey, int]) -> dict[GroupKey, float]:
    total = sum(raw.values())
    if not total > 0 or not math.isfinite(total):
        nonempty = sum(1 for n in sizes.values() if n > 0)
        why = "every group is empty" if nonempty == 0 else "every non-empty group has task weight 0"
        raise ValueError(f"cannot sample: {why} (sizes: {_describe(sizes)})")
    return {g: m / total for g, m in raw.items()}


def _check_progress(progress: float) -> float:
    if not isinstance(progress, (int, float)) or math.isnan(progress) or progress < 0:
        raise ValueError(f"progress must be a number ≥ 0 (fraction of training done), got {progress!r}")
    return min(float(progress), 1.0)


def _check_inputs(sizes: Mapping[GroupKey, int], cfg: SamplingConfig, task_weights: Mapping[str, float] | None) -> None:
    if not sizes:
        raise ValueError("cannot sample: no groups given")
    for g, n in sizes.items():
        if not (isinstance(g, tuple) and len(g) == 2 and all(isinstance(p, str) for p in g)):
            raise ValueError(f"group keys must be (task, dataset) pairs of strings, got {g!r}")
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not n >= 0 or not math.isfinite(n):
            raise ValueError(f"group {_name(g)}: size must be a number ≥ 0, got {n!r}")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {cfg.strategy!r} (choose from {', '.join(STRATEGIES)})")
    if cfg.strategy == "capped" and (cfg.cap is None or cfg.cap < 1):
        raise ValueError(f"the capped strategy needs cap K ≥ 1, got {cfg.cap!r}")
    for key, message in cfg.exponent_problems():
        raise ValueError(f"sampling {key}: {message}")
    for task, w in (task_weights or {}).items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or not math.isfinite(w):
            raise ValueError(f"task {task!r}: weight must be a number ≥ 0, got {w!r}")


def _name(g: GroupKey) -> str:
    return f"{g[0]}/{g[1]}"


def _describe(sizes: Mapping[GroupKey, int]) -> str:
    return ", ".join(f"{_name(g)}={n}" for g, n in sizes.items())


def rates_table(
    sizes: Mapping[GroupKey, int],
    probs: Mapping[GroupKey, float],
    realised: Mapping[GroupKey, int] | None = None,
) -> str:
    """A fixed-width table: examples, share of the data, sampling probability, and realised rate.

    `realised` holds the number of batches drawn per group; its column shows each
    group's share of all draws and the count, so drift from the target is visible.
    """
    total_n = sum(sizes.values()) or 1
    total_r = sum(realised.values()) if realised else 0
    header = ["group", "examples", "data %", "sampled %"]
    if realised is not None:
        header += ["realised %", "batches"]
    rows = []
    for g in sizes:
        row = [_name(g), str(sizes[g]), f"{100 * sizes[g] / total_n:.2f}", f"{100 * probs.get(g, 0.0):.2f}"]
        if realised is not None:
            r = realised.get(g, 0)
            row += [f"{100 * r / total_r:.2f}" if total_r else "-", str(r)]
        rows.append(row)
    return format_table(header, rows)
