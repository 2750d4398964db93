"""Gradient-conflict diagnostics (train.grad_conflict_every: N): do the groups pull the shared encoder the same way?

Every N optimiser steps, each training group ((task, dataset)) gets one small batch of its own training data;
its loss's gradient on the shared encoder's parameters is taken, and the cosine between every two groups'
gradients is logged as `gradcos/<task>/<dataset>/<task>/<dataset>` (and each gradient's norm as
`gradnorm/<task>/<dataset>`). A negative cosine means one group's step undoes part of the other's (the
conflict PCGrad and its kin project away). At the end a heatmap, the mean over the run beside the last
measurement, is logged as `plots/gradient_cosine.png`.

The measurement leaves training exactly as it would have been:
- batches are drawn by a generator of their own, seeded by (train.seed, step): the sampler and stream cursors
  of training are not touched (a streamed group reads from a second cursor), and the same step draws the same
  batch after a resume; groups of the same size draw the same rows, so two copies of one dataset compare 1;
- the passes run without dropout (eval mode: dropout's noise, not conflict, would dominate a small batch's
  cosine), each group's under the same fixed seed (MLM draws its masks in collate); every random state
  (python, numpy, torch, CUDA) is saved before and restored after;
- gradients come from `torch.autograd.grad` on the unwrapped model: no `.grad` is written, no optimiser or
  DDP reducer hook fires (DDP reduces only in `backward()`), and the parameters are not changed.

Under DDP every rank runs the same passes in the same order: each takes its share of the global batch
(`global[rank::world]`, as the sampler does), the loss is the mean over the global batch (mtl/loss.py, one
all_reduce of counts), and the groups' gradient vectors are averaged with one all_reduce, so every rank holds
the gradients of the whole batch and the same cosines. The DeepSpeed profile is refused at the config: ZeRO
partitions gradients (2) or parameters (3) and hooks its own reduction onto every backward pass.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import torch

from mtl import checkpoint as ckpt
from mtl.loss import global_mean_loss

log = logging.getLogger(__name__)

PREFIX = "gradcos/"
SALT = 0x67C0  # keeps the diagnostic's draws apart from every other generator seeded by train.seed
FP16_SCALE = 2.0**12  # fp16 autocast: the loss is scaled (and the gradient unscaled) so small gradients survive


def pair_metric(a: str, b: str) -> str:
    """The MLflow name of the cosine between groups labelled `a` and `b` (in the groups' order)."""
    return f"{PREFIX}{a}/{b}"


def cosines(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, norms) from the Gram matrix of the groups' gradients; NaN for a gradient that is zero or not
    finite (an MLM batch with nothing masked, an overflow)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    bad = ~np.isfinite(norms) | (norms == 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = gram / np.outer(norms, norms)
    out[bad, :] = np.nan
    out[:, bad] = np.nan
    norms[~np.isfinite(norms)] = np.nan
    return out, norms


class GradConflict:
    """The diagnostic for one training stage; `after_step` measures on its schedule, `finish` draws the heatmap."""

    def __init__(self, trainer: Any, every: int):
        self.every = every
        self.exp = trainer.exp
        self.engine = trainer.engine
        self.runtime = trainer.engine.runtime
        self.families = trainer.families
        self.splits = list(trainer.train_splits)
        self.labels = [s.label for s in self.splits]
        self.rank, self.world, self.main = trainer.rank, trainer.world, trainer.main
        self.tracker = trainer.tracker
        self._cursors: dict[tuple[str, str], Any] = {}  # a streamed group's own reading position
        self._params: list[torch.nn.Parameter] | None = None

    # ------------------------------------------------------------------ schedule
    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            self.measure(step)

    # ------------------------------------------------------------------ batches
    def _size(self, longest: int) -> int:
        cfg = self.exp.sampling
        size = cfg.batch_size
        if cfg.max_tokens is not None:
            size = min(size, max(1, cfg.max_tokens // max(1, longest)))
        return size

    def _rows(self, split: Any, step: int) -> list[dict[str, Any]]:
        """This rank's share of the group's diagnostic batch at `step`."""
        if split.stream is not None:
            cursor = self._cursors.get(split.group)
            if cursor is None:
                cursor = self._cursors[split.group] = split.stream.open(self.exp.train.seed + SALT, self.rank,
                                                                        self.world)
            size = self._size(self.exp.encoder.max_length)
            return cursor.take(len(range(self.rank, max(size, self.world), self.world)))
        n = len(split.features)
        rng = np.random.default_rng([self.exp.train.seed, SALT, step])
        chosen = rng.choice(n, size=min(self.exp.sampling.batch_size, n), replace=False)
        if self.exp.sampling.max_tokens is not None:  # the longest prefix that keeps longest × count in the budget
            lengths = np.maximum.accumulate([len(split.features[int(i)]["input_ids"]) for i in chosen])
            fits = lengths * np.arange(1, len(chosen) + 1) <= self.exp.sampling.max_tokens
            chosen = chosen[: max(1, int(fits.sum()))]
        if len(chosen) < self.world:  # every rank gets a row, as the sampler gives them
            chosen = np.resize(chosen, self.world)
        return [split.features[int(i)] for i in chosen[self.rank :: self.world]]

    # ------------------------------------------------------------------ gradients
    def _encoder_params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The shared encoder's trainable parameters, told apart as MultiTaskModel.parameter_groups does."""
        if self._params is None:
            self._params = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
        return self._params

    def _gradient(self, model: torch.nn.Module, split: Any, step: int, seed: int, out: torch.Tensor) -> None:
        """This rank's part of the encoder gradient of the group's mean loss over the global diagnostic batch,
        written flat (fp32) into `out`."""
        rows = self._rows(split, step)
        torch.manual_seed(seed)  # collate first: MLM draws its masks here
        random.seed(seed)
        np.random.seed(seed)
        batch = self.families[split.task].collate(rows)
        batch = {k: v.to(self.runtime.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        params = self._encoder_params(model)
        scale = FP16_SCALE if self.exp.train.precision == "fp16" else 1.0
        with self.runtime.autocast():
            loss, _ = global_mean_loss(model(split.task, batch), self.runtime)  # collective under DDP (counts)
        grads = torch.autograd.grad(loss.float() * scale, params, allow_unused=True)
        for g, part in zip(grads, out.split([p.numel() for p in params])):
            if g is None:  # a parameter this pass does not reach (BERT's pooler)
                part.zero_()
            else:
                part.copy_(g.reshape(-1))
        if scale != 1.0:
            out.div_(scale)

    def measure(self, step: int) -> np.ndarray:
        """Cosines between every two groups' encoder gradients at `step` (every rank must call it); logged on
        the main rank. Training's random state, sampler, streams and gradients are as they were before."""
        model = self.engine.unwrap()
        seed = int(np.random.SeedSequence([self.exp.train.seed, SALT, step]).generate_state(1)[0])
        size = sum(p.numel() for p in self._encoder_params(model))
        saved = ckpt.rng_state()
        was_training = model.training
        model.eval()  # no dropout: the direction of each group's expected gradient, not one noisy draw of it
        try:
            flat = torch.empty((len(self.splits), size), dtype=torch.float32, device=self.runtime.device)
            for i, split in enumerate(self.splits):
                self._gradient(model, split, step, seed, flat[i])
            if self.world > 1:  # every rank then holds the whole batch's gradients, and the same cosines
                self.runtime.all_reduce(flat).div_(self.world)
            gram = (flat @ flat.T).double().cpu().numpy()
            del flat
        finally:
            model.train(was_training)
            ckpt.set_rng_state(saved)
        matrix, norms = cosines(gram)
        if self.main:
            metrics = {pair_metric(a, b): float(matrix[i, j]) for i, a in enumerate(self.labels)
                       for j, b in enumerate(self.labels) if i < j and math.isfinite(matrix[i, j])}
            metrics.update({f"gradnorm/{a}": float(n) for a, n in zip(self.labels, norms) if math.isfinite(n)})
            self.tracker.log_metrics(metrics, step=step)
            for label, n in zip(self.labels, norms):
                if not n > 0:
                    log.warning("step %d: the diagnostic gradient of %s is %s; no cosine for it", step, label,
                                "zero" if n == 0 else "not finite")
        return matrix

    # ------------------------------------------------------------------ the end
    def history(self) -> tuple[np.ndarray, np.ndarray, int, int | None]:
        """(mean over the run, last measurement, number of measurements, last step) from the run's metric
        history (resumes included: a step logged twice counts once, the later value)."""
        found = self.tracker.history((PREFIX,))
        n = len(self.labels)
        mean, last = np.eye(n), np.eye(n)
        counts, last_step = 0, None
        for i, a in enumerate(self.labels):
            for j, b in enumerate(self.labels[i + 1 :], start=i + 1):
                points = dict(found.get(pair_metric(a, b), []))
                if not points:
                    mean[i, j] = mean[j, i] = last[i, j] = last[j, i] = np.nan
                    continue
                final = max(points)
                mean[i, j] = mean[j, i] = float(np.mean(list(points.values())))
                last[i, j] = last[j, i] = points[final]
                counts = max(counts, len(points))
                last_step = final if last_step is None else max(last_step, final)
        return mean, last, counts, last_step

    def finish(self) -> None:
        """The heatmap of the run's cosines, on the main rank (tracking.log_plots)."""
        if not self.main or not self.exp.tracking.log_plots:
            return
        from mtl import plots

        mean, last, count, last_step = self.history()
        if count == 0:
            return
        labels = self.labels
        self.tracker.log_figure(lambda p: plots.plot_gradient_cosine(labels, mean, last, count, last_step, p),
                                "plots/gradient_cosine.png")


class _Off:
    """train.grad_conflict_every not set, or a stage with one group: nothing to compare."""

    def after_step(self, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def monitor(trainer: Any) -> GradConflict | _Off:
    """The diagnostic of a trainer's stage as its config asks (called once the engine has prepared the model)."""
    every = trainer.exp.train.grad_conflict_every
    if every is None:
        return _Off()
    if len(trainer.train_splits) < 2:
        if trainer.main:
            log.info("train.grad_conflict_every: this stage trains one group (%s); no gradient cosine to measure",
                     ", ".join(s.label for s in trainer.train_splits))
        return _Off()
    return GradConflict(trainer, every)
