"""The training loop: one loop for single process, torchrun/DDP, multi-node and DeepSpeed ZeRO; what
differs between these launch profiles is behind an engine (mtl/engine.py: accelerate, or DeepSpeed).

Each micro-batch comes from one (task, language) group chosen by the sampler; every rank
draws the same group at the same step, so the same head runs everywhere, and different
examples. Evaluation, checkpoints and tracking happen on a fixed step schedule.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mtl import checkpoint as ckpt
from mtl import grad_conflict, records, stream_state
from mtl.checkpoint_load import WeightsMismatch, load_weights
from mtl.core.config import Experiment, dump_experiment
from mtl.core.errors import ConfigError, TrainingError
from mtl.core.experiment_checks import selection_rule
from mtl.data import build_families, feature_cache_dir, load_splits, resolve_steps
from mtl.encoder import load_tokenizer
from mtl.engine import make_engine
from mtl.evaluate import Result, evaluate
from mtl.loss import global_mean_loss
from mtl.model import build_model
from mtl.run_lock import RunLock
from mtl.runtime import Runtime
from mtl.stage_report import StageReport
from mtl.tracking import Tracker
from sampling import MultiTaskBatchSampler

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What a finished stage hands back to its caller (a regime, the CLI, a test)."""

    results: list[Result]
    metrics: dict[str, float]
    steps: int
    output_dir: Path
    checkpoint: Path | None
    train_stats: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Path | None = None  # train.select_best: the best evaluated checkpoint
    best_step: int | None = None
    best_value: float | None = None
    tokens: int = 0  # training tokens (not padding) over every process and the whole run, resumes included
    run_id: str | None = None  # the MLflow run (None when tracking is off or on another rank)
    best_metric: str | None = None


def warmup_steps(exp: Experiment, total: int) -> int:
    w = exp.train.warmup
    return int(w * total) if w < 1 else int(w)


def make_scheduler(exp: Experiment, optimizer: torch.optim.Optimizer, total: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    warm = warmup_steps(exp, total)
    if exp.train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warm)
    return get_linear_schedule_with_warmup(optimizer, warm, total)


class Trainer:
    """Trains one stage of an experiment; `fit()` runs it to the end (or resumes it)."""

    def __init__(
        self,
        exp: Experiment,
        resume: bool = False,
        tracker: Tracker | None = None,
        init_from: Path | None = None,
        progress: bool = True,
        allow_changes: Sequence[str] = (),
        runtime: Runtime | None = None,  # this process's place in the launch (default: from the environment)
    ):
        self.exp = exp
        self.resume = resume
        self.allow_changes = tuple(allow_changes)
        self.init_from = init_from
        self.engine = make_engine(exp, runtime)
        self.runtime = self.engine.runtime  # as the engine bound it: device, autocast, lock-step evaluation
        self.rank, self.world, self.main = self.runtime.rank, self.runtime.world, self.runtime.main
        self.progress = progress and self.main
        self.tracker = tracker or Tracker(exp.tracking, exp.name, active=self.main)
        if self.tracker.unsent_file is None:
            self.tracker.unsent_file = exp.output_dir / "unsent-metrics.jsonl"
        self._own_tracker = tracker is None
        self.output_dir = exp.output_dir
        self._lock: RunLock | None = None

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from accelerate.utils import set_seed

        exp = self.exp
        # one live run per folder; taking the lock is also the first write, so an unwritable folder is found now
        self._lock = RunLock(self.output_dir).acquire() if self.main else None
        set_seed(exp.train.seed)
        if exp.train.deterministic:
            records.use_deterministic_kernels()
        self.tokenizer = load_tokenizer(exp.encoder, exp.source, exp.overrides)
        self.families = build_families(exp, self.tokenizer)
        start_ckpt = (ckpt.resume_point(self.output_dir, dump_experiment(exp), self.allow_changes)
                      if self.resume else None)
        vocab_source = start_ckpt or (ckpt.resolve(self.init_from) if self.init_from else None)
        vocab = vocab_source.vocab() if vocab_source is not None else {}
        for name, fam in self.families.items():
            if name in vocab:
                fam.load_state_dict(vocab[name])
        # A task the checkpoint has no vocabulary for (a fine-tuning stage's task that its pre-training
        # stage left out) fits its own on its training data.
        unfitted = {name for name in self.families if name not in vocab}
        cache = feature_cache_dir(exp)
        roles = ["train", exp.train.eval_split]
        with self.engine.main_process_first():
            splits = load_splits(exp, self.families, roles, fit=unfitted, cache_dir=cache)
        self.train_splits = [s for s in splits if s.role == "train"]
        self.eval_splits = [s for s in splits if s.role == exp.train.eval_split]
        self.total_steps = resolve_steps(exp, self.train_splits)
        self.model = build_model(exp, self.families, self.tokenizer)
        if self.main:
            ckpt.warn_if_no_room(self.output_dir, self.model)
        if start_ckpt is not None:  # weights before the engine: DeepSpeed builds its partitions from them
            self._load_weights(start_ckpt)
        elif self.init_from is not None:
            # the encoder whole; heads of tasks the checkpoint never trained start fresh, its other heads are left
            start = load_weights(self.model, ckpt.resolve(self.init_from), strict_heads=False)
            log.info("initialised from %s (%d new tensors, %d unused)", self.init_from, len(start.new),
                     len(start.unused))
        groups = self.model.parameter_groups(
            exp.train.encoder_lr, exp.train.head_lr, exp.train.weight_decay, exp.train.mix_lr
        )
        optimizer = self.engine.make_optimizer(groups)
        self.scheduler = make_scheduler(exp, optimizer, self.total_steps)
        streamed = [s for s in self.train_splits if s.stream is not None]
        self.sampler = MultiTaskBatchSampler(
            {s.group: s.lengths for s in self.train_splits if s.stream is None},
            exp.sampling,
            total_steps=self.total_steps * exp.train.grad_accum,
            seed=exp.train.seed,
            rank=self.rank,
            world_size=self.world,
            task_weights={name: t.weight for name, t in exp.tasks.items()},
            streamed={s.group: (s.size, exp.encoder.max_length) for s in streamed},
        )
        self.by_group = {s.group: s for s in self.train_splits}
        # each rank reads its own blocks of a streamed text (tasks/_text_stream.py)
        self.cursors = {s.group: s.stream.open(exp.train.seed, self.rank, self.world) for s in streamed}
        self.model = self.engine.prepare(self.model, optimizer, self.scheduler)
        self.optimizer = self.engine.optimizer
        self.step = 0
        self.tokens = 0  # summed over processes at each checkpoint and at the end (_count_tokens)
        self.skipped_steps = 0  # train.on_nonfinite: skip
        self._local_tokens = 0
        self.run_id: str | None = None
        self.best: dict[str, Any] = {"metric": exp.train.select_best, "value": None, "step": None, "path": None}
        if start_ckpt is not None:
            self._restore(start_ckpt)

    def _load_weights(self, found: ckpt.Checkpoint) -> None:
        try:  # resume_point has checked its files; kept for the engine, which loads them with the optimiser's
            self._start_weights = load_weights(self.model, found, verify=False).state
        except WeightsMismatch as err:
            self._unfit(found, err)

    def _unfit(self, found: ckpt.Checkpoint, err: Exception) -> None:
        # e.g. a changed encoder.mix, or a checkpoint of an older mtl
        first = err.detail if isinstance(err, WeightsMismatch) else str(err).strip().splitlines()[0][:300]
        raise ConfigError(
            f"{found.path}: the checkpoint does not fit the model or optimizer parameter groups this "
            f"experiment builds (a changed encoder.mix or head, or a checkpoint of an older mtl: {first}); "
            f"it cannot be resumed: start the run again without --resume"
        ) from None

    def _restore(self, found: ckpt.Checkpoint) -> None:
        """Optimiser, schedule, sampler and RNG of a checkpoint: from its ZeRO shards when they were written
        under this same layout (stage, world size, precision), else from its profile-free optimizer.pt."""
        state = found.state()
        shards = self.engine.can_load_shards(found.path, state.get("engine"))
        optimizer_state = None if shards else self._optimizer_state(found, state)
        try:
            if optimizer_state is None:
                self.engine.load_shards(found.path)
            else:
                self.engine.load_states(self._start_weights, optimizer_state)
        except (RuntimeError, ValueError) as err:
            self._unfit(found, err)
        self._start_weights = {}
        self.scheduler.load_state_dict(found.load("scheduler.pt"))
        self.sampler.load_state_dict(state["sampler"])
        rngs = found.load("rng.pt")
        ckpt.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self._restore_streams(found, state.get("streams"))
        self.step = state["step"]
        self.tokens = int(state.get("tokens", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.run_id = state.get("mlflow_run_id")
        if state.get("best") and state["best"].get("metric") == self.exp.train.select_best:
            self.best = dict(state["best"])
        if self.main:
            source = "its ZeRO shards" if shards else "optimizer.pt"
            log.info("resumed from %s at step %d (optimizer state from %s)", found.path, self.step, source)

    def _restore_streams(self, found: ckpt.Checkpoint, saved: list[dict[str, Any]] | None) -> None:
        """Each rank's position in each streamed text, as the checkpoint saved it."""
        stream_state.restore(self.cursors, saved, self.runtime, found.path)

    @staticmethod
    def _optimizer_state(found: ckpt.Checkpoint, state: dict[str, Any]) -> dict[str, Any]:
        path = found.path / "optimizer.pt"
        if not path.exists() and (found.path / ckpt.ZERO_SHARDS).is_dir():
            layout = state.get("engine") or {}
            raise ConfigError(
                f"{path}: missing; no optimizer.pt, and its ZeRO shards (written by {layout}) do not fit this launch; "
                f"resume it with that same launch profile, ZeRO stage and number of processes"
            )
        return found.load("optimizer.pt")  # missing or unreadable: an error naming it

    # ------------------------------------------------------------------ divergence
    def _nonfinite(self, bad: list[tuple[str, float]], norm: float | None, skip: bool, labels: list[str]) -> None:
        """Stop the run at a step whose loss or gradients are not finite, or count it as skipped."""
        step = self.step + 1
        what = ", ".join(f"training loss of {label} is {value}" for label, value in bad) or (
            f"gradient norm is {norm} (batches of {', '.join(dict.fromkeys(labels))})")
        if skip:
            self.skipped_steps += 1
            log.warning("step %d: %s; step skipped (train.on_nonfinite: skip; %d skipped so far)", step, what,
                        self.skipped_steps)
            if self.main:
                self.tracker.log_metrics({"train/skipped_steps": float(self.skipped_steps)}, step=step)
            return
        raise TrainingError(
            f"step {step}: the {what}; the run stops here and nothing of this step is saved or logged. Lower "
            "train.encoder_lr / train.head_lr (or train.max_grad_norm), or set train.on_nonfinite: skip to skip "
            "such steps")

    # ------------------------------------------------------------------ pieces
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.runtime.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _evaluate(self) -> list[Result]:
        splits, size = self.eval_splits, self.exp.train.eval_batch_size
        return evaluate(self.model, self.families, splits, size, self.runtime, progress=self.progress)

    def _count_tokens(self) -> None:
        """Add the tokens every process trained on since the last count to the run's total (collective)."""
        self.tokens += self.runtime.total(self._local_tokens)
        self._local_tokens = 0

    def _save(self, folder: Path | None = None, keep: int | None = None) -> Path | None:
        self._count_tokens()
        rngs = self.runtime.gather(ckpt.rng_state())  # every rank's, in rank order
        streams = stream_state.gather(self.cursors, self.runtime)
        path = None
        # Every rank takes part: ZeRO gathers the full fp32 weights and AdamW state to the main rank, and
        # each rank writes its shards into the checkpoint's temporary folder before it is renamed into place.
        model_state, optimizer_state = self.engine.model_state(), self.engine.optimizer_state()
        broken = [k for k, v in (model_state or {}).items() if v.is_floating_point() and not torch.isfinite(v).all()]
        broken = self.engine.broadcast(broken)
        if broken:  # never written, never logged: the previous checkpoint stays the latest
            raise TrainingError(f"step {self.step}: {len(broken)} weight tensor(s) are not finite (first: "
                                f"{broken[0]}); the run stops before writing them")
        started = self.engine.broadcast(ckpt.start(folder or self.output_dir, self.step) if self.main else None)
        self.engine.save_shards(started)
        self.engine.barrier()
        if self.main:
            unwrapped = self.engine.unwrap()
            path = ckpt.save(
                folder or self.output_dir,
                self.step,
                model_state=model_state,
                optimizer_state=optimizer_state,
                scheduler_state=self.scheduler.state_dict(),
                trainer_state={
                    "step": self.step,
                    "total_steps": self.total_steps,
                    "tokens": self.tokens,
                    "sampler": self.sampler.state_dict(),
                    "streams": streams,
                    "skipped_steps": self.skipped_steps,
                    "mlflow_run_id": self.tracker.run_id,
                    "world_size": self.world,
                    "engine": self.engine.layout(),
                    "best": self.best,
                },
                vocab={name: fam.state_dict() for name, fam in self.families.items()},
                experiment_yaml=dump_experiment(self.exp),
                tokenizer=self.tokenizer,
                encoder_config=unwrapped.encoder.config,
                rng_states=rngs,
                keep=keep or self.exp.train.keep_checkpoints,
                started=started,
            )
        self.engine.barrier()
        return path

    def _consider_best(self, metrics: dict[str, float]) -> None:
        """Keep this evaluation's checkpoint in <output_dir>/best when its select_best metric is the best yet.

        Every rank sees the same gathered metrics, so all take the same decision (the save is collective).
        """
        name = self.exp.train.select_best
        if name is None:
            return
        if name not in metrics:
            known = ", ".join(sorted(k for k in metrics if k.startswith(("eval/", "zeroshot/"))))
            raise ConfigError(f"train.select_best: no metric {name!r} at evaluation (metrics: {known})")
        value, previous = float(metrics[name]), self.best["value"]
        better = previous is None or (value > previous if self.exp.train.select_mode == "max" else value < previous)
        if not better:
            return
        path = self.output_dir / ckpt.BEST / f"{ckpt.PREFIX}{self.step}"
        self.best.update(value=value, step=self.step, path=str(path))
        self._save(self.output_dir / ckpt.BEST, keep=1)
        if self.main:
            print(f"best so far: step {self.step} ({name} = {value:.2f})", flush=True)
            self.tracker.log_metrics({"best/step": float(self.step), f"best/{name}": value}, step=self.step)

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainOutcome:
        try:
            return self._fit()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _fit(self) -> TrainOutcome:
        exp = self.exp
        self._setup()
        if self.main:
            rule = selection_rule(exp)  # said with the run, so a table of its scores can say how they were chosen
            self.tracker.start(resume_run_id=self.run_id, tags={"mtl.world_size": str(self.world),
                                                                **({"mtl.selection": rule} if rule else {})})
            if self.step == 0:
                self.tracker.log_config(exp.to_dict())
                if self.engine.config is not None:  # the DeepSpeed config in force, generated and merged
                    self.tracker.log_config({"deepspeed": self.engine.config})
                    self.tracker.log_dict(self.engine.config, "config/deepspeed.json")
                self.tracker.log_text(dump_experiment(exp), "config/experiment.yaml")
                self.tracker.log_dict({n: f.state_dict() for n, f in self.families.items()}, "config/vocab.json")
                self.tracker.log_record(self._run_record())
            print(
                f"\nSampling over {len(self.train_splits)} groups, {self.total_steps} steps "
                f"(world size {self.world}):\n{self.sampler.rates_table(realised=False)}\n",
                flush=True,
            )
        status = "FAILED"
        try:
            outcome = self._loop()
            status = "FINISHED"
            return outcome
        finally:
            if self._own_tracker:
                self.tracker.end(status)

    def _loop(self) -> TrainOutcome:
        exp, engine = self.exp, self.engine
        self.model.train()
        accum = exp.train.grad_accum
        sampler_iter = iter(self.sampler)
        conflict = grad_conflict.monitor(self)  # train.grad_conflict_every: measured between steps
        report = StageReport(exp, self.tracker, self.families, self.main)
        losses: dict[str, list[float]] = defaultdict(list)
        tokens = 0
        examples = 0
        t0 = time.perf_counter()
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True
        )
        last_ckpt: Path | None = None
        skip_mode = exp.train.on_nonfinite == "skip"
        while self.step < self.total_steps:
            bad: list[tuple[str, float]] = []  # micro-batches of this step whose loss is not a number
            labels: list[str] = []
            for micro in range(accum):
                group, indices = next(sampler_iter)
                split = self.by_group[group]
                family = self.families[split.task]
                cursor = self.cursors.get(group)
                rows = cursor.take(len(indices)) if cursor else [split.features[i] for i in indices]
                batch = self._to_device(family.collate(rows))
                with engine.micro_step(last=micro == accum - 1):  # no_sync while accumulating, autocast
                    # averaged over the items of the global batch (all ranks), see mtl/loss.py
                    loss, logged = global_mean_loss(self.model(split.task, batch), self.runtime)
                    engine.backward(loss)
                labels.append(split.label)
                if math.isfinite(logged):
                    losses[split.label].append(logged)
                    self.sampler.observe(group, logged)  # the adaptive strategy's rates follow these (global) losses
                else:
                    bad.append((split.label, logged))
                n_tokens = int(batch["attention_mask"].sum())
                tokens += n_tokens
                self._local_tokens += n_tokens
                examples += len(indices)
            bad_loss = self.runtime.any(bool(bad))  # every rank skips or stops alike
            norm = engine.step(skip_nonfinite=skip_mode, skip=skip_mode and bad_loss)  # clip, step, clear
            if bad_loss or (norm is not None and not math.isfinite(norm)):
                if not skip_mode:
                    bar.close()  # the error line below is then the last one
                self._nonfinite(bad, norm, skip_mode, labels)
            self.step += 1
            bar.update(1)
            conflict.after_step(self.step)
            if self.step % exp.train.log_every == 0 or self.step == self.total_steps:
                report.train(self.step, losses, self.optimizer, self.sampler, bar)
                losses.clear()
            at_end = self.step == self.total_steps
            if exp.train.eval_every and self.step % exp.train.eval_every == 0 and not at_end:
                self._consider_best(report.evaluation(self.step, self._evaluate(), final=False))
                report.mixes(self.step, engine, final=False)
            if exp.train.checkpoint_every and self.step % exp.train.checkpoint_every == 0 and not at_end:
                last_ckpt = self._save()
        bar.close()
        elapsed = time.perf_counter() - t0
        stats = {
            "train/seconds": elapsed,
            "train/tokens_per_second": tokens * self.world / max(elapsed, 1e-9),
            "train/examples_per_second": examples * self.world / max(elapsed, 1e-9),
        }
        results = self._evaluate()
        metrics = report.evaluation(self.step, results, final=True)
        last_ckpt = self._save() or last_ckpt  # also completes the token count
        self._consider_best(metrics)
        if self.main:
            text = self.sampler.rates_table()
            drawn = sum(self.sampler.realised_counts().values())
            print(f"\nRealised sampling over {drawn} batches:\n{text}\n", flush=True)
            self.tracker.log_text(text, "sampling/rates.txt")
            self.tracker.log_metrics(stats, step=self.step)
        report.mixes(self.step, engine, final=True)
        conflict.finish()
        if self.main:
            best_path = self.best["path"]  # the model logged is the best checkpoint when one is kept
            report.plots_and_model(self.sampler, Path(best_path) if best_path else last_ckpt,
                                   self.eval_splits or self.train_splits)
        best = self.best
        if self.main and best["step"] is not None:
            print(f"best checkpoint: {best['path']} (step {best['step']}, {best['metric']} = {best['value']:.2f}; "
                  f"chosen on {selection_rule(exp)})", flush=True)
        return TrainOutcome(results, metrics, self.step, self.output_dir, last_ckpt, stats,
                            Path(best["path"]) if best["path"] else None, best["step"], best["value"], self.tokens,
                            self.tracker.run_id, best["metric"])

    def _run_record(self) -> dict[str, Any]:
        counts = {name: fam.read_counts for name, fam in self.families.items()}
        datasets = records.dataset_records([*self.train_splits, *self.eval_splits], counts)
        return records.run_record(self.exp, datasets, self.runtime)


def train(exp: Experiment, resume: bool = False, **kwargs: Any) -> TrainOutcome:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(exp, resume=resume, **kwargs).fit()
