"""The two pictures people look at after a run: sampling rates over training, and learning curves.

Both are drawn from numbers already at hand (the sampler's own draws, the metric history in
MLflow), with matplotlib's file-only backend so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def plot_sampling(sampler: Any, path: Path, steps: int | None = None) -> Path:
    """Planned (dashed) and realised (solid, cumulative) sampling rate of each group over training."""
    plt = _pyplot()
    x, realised, planned = sampling_rates(sampler, steps)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, (name, values) in enumerate(realised.items()):
        color = f"C{i % 10}"
        ax.plot(x, values, color=color, label=f"{name} realised")
        ax.plot(planned["steps"], planned["values"][name], color=color, linestyle="--", label=f"{name} planned")
    ax.set_xlabel("micro-batch")
    ax.set_ylabel("share of batches")
    ax.set_ylim(0, 1.05)
    ax.set_title("Sampling rate per (task, language) group: planned vs realised")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
    parts = name.split("/")
    return len(parts) == 4 and parts[0] in ("eval", "zeroshot") and parts[1] == task and parts[3] == metric
