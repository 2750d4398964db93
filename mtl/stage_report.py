"""What a training stage shows and logs as it goes: training losses and rates, evaluation tables and
predictions, the learned layer weights of each scalar mix, and at the end its plots and its model.

Only the main process prints and tracks; the mix weights are read on every rank (ZeRO-3 gathers them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtl.core.config import Experiment
from mtl.data import Split
from mtl.encoder import ScalarMix, mix_report, mix_table
from mtl.evaluate import Result, summary, table, write_predictions
from mtl.tracking import Tracker
from tasks.base import TaskFamily


class StageReport:
    """The console and tracker side of one stage's training loop."""

    def __init__(self, exp: Experiment, tracker: Tracker, families: dict[str, TaskFamily], main: bool):
        self.exp = exp
        self.tracker = tracker
        self.families = families
        self.main = main

    def train(self, step: int, losses: dict[str, list[float]], optimizer: Any, sampler: Any, bar: Any) -> None:
        """Mean training loss per group and overall since the last report, learning rates, sampling rates."""
        if not self.main:
            return
        metrics = {f"train/loss/{k}": sum(v) / len(v) for k, v in losses.items()}
        all_losses = [x for v in losses.values() for x in v]
        if all_losses:
            metrics["train/loss"] = sum(all_losses) / len(all_losses)
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        for group in optimizer.param_groups:
            metrics[f"train/lr/{group.get('name', 'group')}"] = group["lr"]
        metrics.update(sampler.rate_metrics())  # sampling/rate/<group>, where rates move (annealed, adaptive)
        self.tracker.log_metrics(metrics, step=step)

    def evaluation(self, step: int, results: list[Result], final: bool) -> dict[str, float]:
        """The evaluation's flat metrics (on every rank); the main one logs and prints them, and at the end
        writes the predictions."""
        metrics = summary(results, self.families)
        if not self.main or not results:
            return metrics
        self.tracker.log_metrics(metrics, step=step)
        header = "Final evaluation" if final else f"Evaluation at step {step}"
        print(f"\n{header}:\n{table(results)}\n", flush=True)
        if final:
            folder = self.exp.output_dir / "predictions"
            write_predictions(results, self.families, folder)
            self.tracker.log_text(table(results), "metrics/table.txt")
            if self.exp.tracking.log_predictions:
                for f in sorted(folder.iterdir()):
                    self.tracker.log_artifact(f, "predictions")
        return metrics

    def mixes(self, step: int, engine: Any, final: bool) -> None:
        """What each head reads: the learned layer weights, as metrics (and printed at the end)."""
        model = engine.unwrap()
        with engine.gathered(p for m in model.modules() if isinstance(m, ScalarMix) for p in m.parameters()):
            report = mix_report(model)  # every rank takes part in the gathering (ZeRO-3); the main one logs
        if not report or not self.main:
            return
        metrics = {f"mix/{label}/{i}": w for label, ws in report.items() for i, w in enumerate(ws)}
        self.tracker.log_metrics(metrics, step=step)
        if final:
            text = mix_table(report)
            print(f"\nLayer weights of each scalar mix (%, embeddings first; gamma = scale):\n{text}\n", flush=True)
            self.tracker.log_text(text, "metrics/layer_mix.txt")

    def plots_and_model(self, sampler: Any, checkpoint: Path | None, splits: Sequence[Split]) -> None:
        """The sampling and learning-curve plots, and the model of `checkpoint` with input examples from
        `splits` (main rank)."""
        from mtl import plots

        if self.exp.tracking.log_plots:
            primary = {n: f.primary_metric for n, f in self.families.items()}
            self.tracker.log_figure(lambda p: plots.plot_sampling(sampler, p), "plots/sampling_rates.png")
            history = self.tracker.history(("train/loss/", "eval/", "zeroshot/"))
            curves = "plots/learning_curves.png"
            self.tracker.log_figure(lambda p: plots.plot_learning_curves(history, primary, p), curves)
        if checkpoint is not None:
            examples = {s.task: s for s in reversed(splits)}
            self.tracker.log_model(self.exp, checkpoint, examples)
