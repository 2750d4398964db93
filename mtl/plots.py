"""The two pictures people look at after a run: sampling rates over training (with an adaptive sampler's rates
block by block), and learning curves.

Both are drawn from numbers already at hand (the sampler's own draws, the metric history in
MLflow), with matplotlib's file-only backend so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl.core.metric_key import MetricKey

History = Sequence[tuple[int, float]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def sampling_rates(sampler: Any, steps: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Micro-steps, realised cumulative share per group, and planned probability per group at each step."""
    n = int(steps if steps is not None else sampler.step)
    groups = list(sampler.groups)
    drawn = np.zeros((len(groups), max(n, 1)))
    index = {g: i for i, g in enumerate(groups)}
    for t in range(n):
        drawn[index[sampler.group_at(t)], t] = 1.0
    x = np.arange(1, max(n, 1) + 1)
    realised = {f"{g[0]}/{g[1]}": np.cumsum(drawn[i]) / x for i, g in enumerate(groups)}
    marks = np.unique(np.linspace(0, max(n - 1, 0), num=min(max(n, 1), 50)).astype(int))
    planned = {f"{g[0]}/{g[1]}": [] for g in groups}
    for t in marks:
        probs = sampler.probabilities(min(t / sampler.total_steps, 1.0))
        for g in groups:
            planned[f"{g[0]}/{g[1]}"].append(probs[g])
    return x, realised, {"steps": marks + 1, "values": {k: np.asarray(v) for k, v in planned.items()}}


def block_rates(sampler: Any, steps: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """An adaptive sampler's blocks: their first draws, each group's rate in force in each block, and the share
    of each block's draws that went to each group (the realised rate, block by block)."""
    n = int(steps if steps is not None else sampler.step)
    history = [(s, r) for s, r in sampler.rate_history() if s < max(n, 1)]
    starts = np.array([s for s, _ in history])
    ends = np.append(starts[1:], max(n, 1))
    drawn = [sampler.group_at(t) for t in range(n)]
    in_force, realised = {}, {}
    for g in sampler.groups:
        name = f"{g[0]}/{g[1]}"
        in_force[name] = np.array([r[g] for _, r in history])
        realised[name] = np.array([np.mean([d == g for d in drawn[a:b]]) if b > a else np.nan
                                   for a, b in zip(starts, ends)])
    return starts, in_force, {"ends": ends, "values": realised}


def plot_sampling(sampler: Any, path: Path, steps: int | None = None) -> Path:
    """Planned (dashed) and realised (solid, cumulative) sampling rate of each group over training; for an
    adaptive sampler a second panel: the rates in force, block by block, and each block's realised share."""
    plt = _pyplot()
    x, realised, planned = sampling_rates(sampler, steps)
    adaptive = bool(getattr(sampler, "rate_history", lambda: [])())
    fig, axes = plt.subplots(2 if adaptive else 1, 1, figsize=(8, 8 if adaptive else 4.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    for i, (name, values) in enumerate(realised.items()):
        color = f"C{i % 10}"
        ax.plot(x, values, color=color, label=f"{name} realised")
        ax.plot(planned["steps"], planned["values"][name], color=color, linestyle="--", label=f"{name} planned")
    _rate_axes(ax, "share of batches", "Sampling rate per (task, language) group: planned vs realised")
    if adaptive:
        _plot_blocks(axes[1, 0], sampler, steps)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_blocks(ax: Any, sampler: Any, steps: int | None) -> None:
    starts, in_force, realised = block_rates(sampler, steps)
    for i, (name, rates) in enumerate(in_force.items()):
        color = f"C{i % 10}"
        ax.step(np.append(starts, realised["ends"][-1:]) + 1, np.append(rates, rates[-1:]), where="post",
                color=color, label=f"{name} rate in force")
        middles = (starts + realised["ends"]) / 2 + 1
        ax.plot(middles, realised["values"][name], color=color, marker=".", linestyle="none", alpha=0.6,
                label=f"{name} realised in block")
    _rate_axes(ax, "rate", "Adaptive rates: updated every block from the groups' loss ratios")


def _rate_axes(ax: Any, ylabel: str, title: str) -> None:
    """Labels, limits, legend and grid of a panel of rates over micro-batches (0 to 1)."""
    ax.set_xlabel("micro-batch")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)


def plot_learning_curves(
    histories: Mapping[str, History], primary: Mapping[str, str], path: Path
) -> Path:
    """One panel per task: training loss per dataset (left axis) and the main dev metric (right axis).

    `histories`: MLflow metric name → [(step, value)]; `primary`: task → its main metric name.
    """
    plt = _pyplot()
    tasks = list(primary)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 3.2 * len(tasks)), dpi=100, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        losses = {k: v for k, v in histories.items() if k.startswith(f"train/loss/{task}/")}
        for i, (name, points) in enumerate(sorted(losses.items())):
            steps, values = zip(*points) if points else ((), ())
            ax.plot(steps, values, color=f"C{i % 10}", label=name.removeprefix("train/"))
        ax.set_ylabel("training loss")
        ax.set_xlabel("step")
        ax.set_title(f"{task}: loss and dev {primary[task]}")
        ax.grid(alpha=0.3)
        right = ax.twinx()
        metric_keys = sorted(k for k in histories if _is_dev_metric(k, task, primary[task]))
        for i, name in enumerate(metric_keys):
            steps, values = zip(*histories[name]) if histories[name] else ((), ())
            right.plot(steps, values, color=f"C{(i + len(losses)) % 10}", marker="o", linestyle="--", label=name)
        right.set_ylabel(f"dev {primary[task]}")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _is_dev_metric(name: str, task: str, metric: str) -> bool:
    """A dataset's evaluation of `metric` for `task` (in-language or zero-shot; not the task's mean)."""
    try:
        key = MetricKey.parse(name)
    except ValueError:
        return False
    return key.role is not None and key.dataset is not None and key.task == task and key.metric == metric


def plot_regimes(rows: Sequence[Any], path: Path) -> Path:
    """Regimes side by side: one group of bars per scored dataset, one bar per regime (zero-shot hatched);
    the legend gives each regime's steps and training tokens, so unequal compute shows at a glance.

    `rows`: objects with `regime`, `steps`, `tokens`, `scores` ({column: value}) and `zero_shot` (columns);
    over seeds also `runs` (each seed's row, drawn as dots) and `sd` (error bars of ± 1 sd).
    """
    plt = _pyplot()
    columns = sorted({c for r in rows for c in r.scores})
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) * max(len(rows), 1) * 0.5 + 3), 4.5), dpi=100)
    x = np.arange(len(columns))
    for i, r in enumerate(rows):
        values = [r.scores.get(c, np.nan) for c in columns]
        runs = getattr(r, "runs", None) or []
        spread = [r.sd.get(c, np.nan) for c in columns] if runs else None
        where = x + (i - (len(rows) - 1) / 2) * width
        seeds = f", {len(runs)} seeds" if runs else ""
        bars = ax.bar(where, values, width, color=f"C{i % 10}", yerr=spread, capsize=3 if runs else 0,
                      label=f"{r.regime} ({r.steps:,} steps, {r.tokens:,} tokens{seeds})")
        for run in runs:  # each seed's own value, so the spread is seen and not only summarised
            ax.plot(where, [run.scores.get(c, np.nan) for c in columns], "k.", markersize=3)
        for bar, c in zip(bars, columns):
            if c in r.zero_shot:
                bar.set_hatch("//")
    ax.set_xticks(x, [c.replace("/", "\n", 1) for c in columns], fontsize=8)
    ax.set_ylabel("dev score (each task's primary metric)")
    ax.set_title("Scores per regime (hatched: zero-shot)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_transfer(matrix: Any, path: Path) -> Path:
    """A transfer matrix as a heatmap: rows are the source languages trained on, columns the eval datasets;
    in-language cells are outlined, every other cell is zero-shot.

    `matrix`: an object with `task`, `metric`, `sources`, `targets` ([dataset, language]), `values`
    (None where missing) and `in_language`; over seeds `sd` (each cell then reads mean ± sd).
    """
    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix.values], dtype=float)
    n_src, n_tgt = values.shape
    fig, ax = plt.subplots(figsize=(1.1 * n_tgt + 3, 0.6 * n_src + 2), dpi=100)
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=matrix.metric)
    finite = values[np.isfinite(values)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i in range(n_src):
        for j in range(n_tgt):
            if np.isfinite(values[i, j]):
                sd = matrix.sd[i][j] if getattr(matrix, "sd", None) else None
                label = f"{values[i, j]:.1f}" + (f"\n± {sd:.1f}" if sd is not None else "")
                ax.text(j, i, label, ha="center", va="center", fontsize=8,
                        color="black" if values[i, j] > middle else "white")
            if matrix.in_language[i][j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(n_tgt), [f"{d}\n({lang})" for d, lang in matrix.targets], fontsize=8)
    ax.set_yticks(range(n_src), matrix.sources, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    ax.set_title(f"{matrix.task}: transfer by source language ({matrix.metric}; outlined: in-language)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gradient_cosine(labels: Sequence[str], mean: np.ndarray, last: np.ndarray, count: int,
                         last_step: int | None, path: Path) -> Path:
    """Cosine between groups' gradients on the shared encoder (train.grad_conflict_every): the mean over the
    run beside the last measurement; red cells (< 0) are groups whose steps undo part of each other's."""
    plt = _pyplot()
    n = len(labels)
    side = 0.7 * n + 2.5
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), dpi=100)
    panels = ((mean, f"mean over {count} measurement{'s' if count != 1 else ''}"), (last, f"last (step {last_step})"))
    for k, (ax, (values, title)) in enumerate(zip(axes, panels)):
        image = ax.imshow(values, cmap="RdBu", vmin=-1.0, vmax=1.0)
        for i in range(n):
            for j in range(n):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(values[i, j]) > 0.6 else "black")
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels if k == 0 else [], fontsize=8)  # the rows are the same in both panels
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=list(axes), label="cosine of encoder gradients", shrink=0.8)
    fig.suptitle("Gradient cosine between (task, dataset) groups on the shared encoder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
