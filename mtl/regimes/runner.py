"""Running a regime: each planned stage trained one after the other, each a plain `Trainer` on an
experiment derived from the parent (tasks and splits filtered, its own output folder and budget), so a
stage is an ordinary run: its folder holds checkpoints that `mtl evaluate` and `mtl predict` read, and its
MLflow run is nested under the regime's run. A finished stage leaves `stage.json` (its final metrics,
steps and tokens), so a regime started again with `--resume` trains no finished stage twice and continues
the one it died in from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from mtl import significance
from mtl.core.config import Experiment, dump_experiment
from mtl.core.errors import ConfigError
from mtl.core.experiment_checks import selection_rule
from mtl.core.metric_key import SCORE, MetricKey
from mtl.regimes.base import get_regime
from mtl.regimes.derive import result_digest, shared_stages, stage_experiment
from mtl.regimes.planning import Stage, describe, plan, regimes_of, seeds_of
from mtl.regimes.report import (
    Matrix,
    RegimeOutcome,
    Row,
    StageResult,
    matrix_csv,
    matrix_markdown,
    matrix_text,
    regime_row,
    stages_text,
    table_csv,
    table_markdown,
    table_text,
    transfer_matrix,
)
from mtl.regimes.spread import matrix_over_seeds, table_over_seeds
from mtl.runtime import Runtime
from mtl.tracking import Tracker, default_run_name

log = logging.getLogger(__name__)

DONE_FILE = "stage.json"  # in a stage's folder once the stage has ended
STATE_FILE = "regime.json"  # in the run folder: the MLflow runs of the regimes, so a resumed regime reuses them
RESAMPLES = 1000  # under `seeds:`: bootstrap resamples of each reported evaluation (mtl/significance.py)


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class _Runner:
    """Trains the planned stages in order on every process; rank 0 writes the records and tracks."""

    def __init__(self, exp: Experiment, resume: bool, progress: bool, runtime: Runtime):
        self.exp = exp
        self.resume = resume
        self.progress = progress
        self.runtime = runtime
        self.main = runtime.main
        self.root = exp.output_dir
        self.stages = plan(exp)
        self.shared = shared_stages(exp, self.stages)  # stage → the stage trained for it (trained once)
        self.results: dict[str, StageResult] = {}
        state_file = self.root / STATE_FILE
        self.state: dict[str, Any] = {"regimes": {}}
        if resume and state_file.exists():
            self.state = json.loads(state_file.read_text(encoding="utf-8"))

    def _remember(self, key: str, regime: str | None, run_id: str | None) -> None:
        if regime is None:
            self.state[key] = run_id
        else:
            self.state.setdefault("regimes", {})[regime] = run_id
        if self.main:
            _write_json(self.root / STATE_FILE, self.state)

    def _tracker(self, run_name: str, resume_id: str | None, tags: dict[str, str], stages: list[Stage]) -> Tracker:
        tracker = Tracker(self.exp.tracking, self.exp.name, active=self.main)
        tracker.unsent_file = self.root / "unsent-metrics.jsonl"
        tracker.start(run_name=run_name, resume_run_id=resume_id, tags=tags)
        if tracker.run_id and tracker.run_id != resume_id:  # a new run: the experiment as given
            tracker.log_config(self.exp.to_dict())
            tracker.log_text(dump_experiment(self.exp), "config/experiment.yaml")
            tracker.log_dict([s.to_dict() for s in stages], "regime/stages.json")
        return tracker

    def run(self) -> RegimeOutcome:
        exp, compare, seeds = self.exp, bool(self.exp.compare), list(self.exp.seeds)
        names = regimes_of(exp)
        if self.main:
            over = f" × seeds {', '.join(map(str, seeds))}" if seeds else ""
            print(f"\n{'Compare' if compare else 'Regime'} {', '.join(names)}{over}: {len(self.stages)} "
                  f"stages under {self.root}\n{describe(self.stages)}\n", flush=True)
            for key, owner in self.shared.items():
                print(f"stage {key} trains as {owner} does: trained once, as {owner}", flush=True)
        if self.resume:
            self._check_resume()
        top = None
        if compare or seeds:  # one run above the regimes' (and each seed's) runs
            name = exp.tracking.run_name or default_run_name(exp.name, "compare" if compare else names[0])
            top = self._tracker(name, self.state.get("compare"),
                                {"mtl.role": "compare", "mtl.compare": ",".join(names),
                                 **({"mtl.seeds": ",".join(map(str, seeds))} if seeds else {})}, self.stages)
            self._remember("compare", None, top.run_id)
        status = "FAILED"
        try:
            per_regime: dict[str, list[Row]] = {n: [] for n in names}
            matrices: list[Matrix] = []
            for seed in seeds_of(exp):
                for regime in names:
                    row, matrix = self._regime(regime, seed, top is not None)
                    if row is not None:
                        per_regime[regime].append(row)
                    if matrix is not None:
                        matrices.append(matrix)
            rows = table_over_seeds(per_regime) if seeds else [r[0] for r in per_regime.values() if r]
            matrix = (matrix_over_seeds(matrices, seeds) if seeds else matrices[-1]) if matrices else None
            if matrix is not None:
                text = matrix_text(matrix)
            else:
                text = ("Comparison of regimes" if compare else f"Regime {rows[0].regime}") + \
                    f" ({exp.train.eval_split} scores, each task's primary metric):\n{table_text(rows)}"
            rule = selection_rule(exp)
            if rule:  # an oracle choice must never pass for zero-shot transfer
                text += f"\nbest checkpoints chosen on {rule}"
            if self.main:
                print(f"\n{text}\n", flush=True)
                if top is not None and matrix is not None:
                    self._log_matrix(top, matrix, "")
                elif top is not None:
                    self._log_table(top, rows, "compare", "table")
            status = "FINISHED"
            holder = top.run_id if top is not None else (self.state.get("regimes") or {}).get(names[0])
            return RegimeOutcome(rows, self.results, text, matrix, self.root, run_id=holder)
        finally:
            if top is not None:
                top.end(status)

    def _regime(self, regime: str, seed: int | None, nested: bool) -> tuple[Row | None, Matrix | None]:
        """Train one regime's stages (of one seed); its run holds theirs, its row or matrix and its table."""
        stages = [s for s in self.stages if s.regime == regime and s.seed == seed]
        label = regime if seed is None else f"{regime}/seed-{seed}"
        name = label if nested else (self.exp.tracking.run_name or default_run_name(self.exp.name, regime))
        tags = {"mtl.role": "regime", "mtl.regime": regime,
                **({"mtl.seed": str(seed)} if seed is not None else {}),
                **({"mtl.selection": selection_rule(self.exp)} if self.exp.train.select_best else {}),
                **({"mtl.reused": ",".join(f"{k}={v}" for k, v in self.shared.items() if k in {s.key for s in stages})}
                   if any(s.key in self.shared for s in stages) else {})}
        parent = self._tracker(name, self.state.get("regimes", {}).get(label), tags, stages)
        self._remember("regimes", label, parent.run_id)
        folder = (f"seed-{seed}/" if seed is not None else "") + (f"{regime}/" if self.exp.compare else "")
        status = "FAILED"
        try:
            for stage in stages:
                self._stage(stage)
            if self.main:
                print(f"\nStages of {label}:\n{stages_text(stages, self.results)}\n", flush=True)
            if get_regime(regime).shape == "matrix":
                matrix = transfer_matrix(self.exp, stages, self.results)
                if self.main:
                    self._log_matrix(parent, matrix, folder)
                status = "FINISHED"
                return None, matrix
            row = regime_row(regime, stages, self.results, self.shared)
            if self.main:
                parent.log_metrics({"regime/stages": float(row.stages), "regime/steps": float(row.steps),
                                    "regime/tokens": float(row.tokens),
                                    **{str(MetricKey.parse(k, prefixed=False).with_prefix(SCORE)): v
                                       for k, v in row.scores.items()}})
                parent.log_dict({"zero_shot": sorted(row.zero_shot), "reused": row.reused}, "regime/row.json")
                if row.replicates:  # what `mtl compare` needs to mark differences again
                    parent.log_dict(row.replicates, "regime/bootstrap.json")
                parent.set_tags({"mtl.zero_shot": ",".join(sorted(row.zero_shot))})
                parent.log_text(stages_text(stages, self.results), "regime/stages.txt")
                self._log_table(parent, [row], "regime", f"{folder}table")
            status = "FINISHED"
            return row, None
        finally:
            parent.end(status)

    def _log_table(self, tracker: Tracker, rows: list[Row], artifact_dir: str, stem: str) -> None:
        """The table as CSV and markdown (and its plot) in the run folder and as the run's artifacts."""
        csv_file = _write_text(self.root / f"{stem}.csv", table_csv(rows))
        md_file = _write_text(self.root / f"{stem}.md", table_markdown(rows))
        tracker.log_artifact(csv_file, artifact_dir)
        tracker.log_artifact(md_file, artifact_dir)
        if self.exp.tracking.log_plots:
            from mtl import plots

            png = self.root / f"{stem}.png"
            try:
                plots.plot_regimes(rows, png)
            except Exception as err:  # a missing font or backend must not fail a finished run
                log.warning("could not draw %s (%s: %s)", png, type(err).__name__, err)
            else:
                tracker.log_artifact(png, "plots")

    def _log_matrix(self, tracker: Tracker, m: Matrix, folder: str) -> None:
        stem = self.root / folder / "transfer"
        files = [_write_text(stem.with_suffix(".csv"), matrix_csv(m)),
                 _write_text(stem.with_suffix(".md"), matrix_markdown(m)),
                 _write_text(stem.with_suffix(".json"), json.dumps(dataclasses.asdict(m), indent=1))]
        for f in files:
            tracker.log_artifact(f, "transfer")
        metrics = {f"transfer/{src}/{m.task}/{d}/{m.metric}": v for src, vals in zip(m.sources, m.values)
                   for (d, _), v in zip(m.targets, vals) if v is not None}
        tracker.log_metrics({**metrics, "regime/steps": float(m.steps), "regime/tokens": float(m.tokens)})
        if not self.exp.tracking.log_plots:
            return
        from mtl import plots

        png = stem.with_suffix(".png")
        try:
            plots.plot_transfer(m, png)
        except Exception as err:
            log.warning("could not draw %s (%s: %s)", png, type(err).__name__, err)
        else:
            tracker.log_artifact(png, "plots")

    def _check_resume(self) -> None:
        """Refuse a resume whose experiment changed before anything is tracked: a finished stage computed from
        another experiment, or a stage's checkpoint trained with another (as its Trainer would refuse it later).
        Checked here, a refused resume leaves every MLflow run as it was (a finished regime's run is not
        reopened to be marked FAILED)."""
        from mtl import checkpoint as ckpt

        digests: dict[str, str] = {}
        for stage in self.stages:
            if stage.key in self.shared:  # trained as another stage: checked as that one
                digests[stage.key] = digests[self.shared[stage.key]]
                continue
            sexp = stage_experiment(self.exp, stage)
            digests[stage.key] = result_digest(stage, sexp, digests[stage.init_from] if stage.init_from else "")
            done_file = self.root / stage.key / DONE_FILE
            if done_file.exists():
                _finished(done_file, stage, digests[stage.key])
            else:
                ckpt.resume_point(sexp.output_dir, dump_experiment(sexp), warn=False)

    def _stage(self, stage: Stage) -> None:
        from mtl.trainer import Trainer

        owner = self.shared.get(stage.key)
        if owner is not None:  # the same weights as a stage already trained: its result serves both
            self.results[stage.key] = self.results[owner]
            if self.main:
                print(f"stage {stage.key}: trains as {owner}; not trained again (reused)", flush=True)
            return
        sexp = stage_experiment(self.exp, stage)
        folder = self.root / stage.key
        done_file = folder / DONE_FILE
        digest = result_digest(stage, sexp, self.results[stage.init_from].digest if stage.init_from else "")
        if self.resume and done_file.exists():
            done = _finished(done_file, stage, digest)
            if self.main:
                print(f"stage {stage.key}: finished before ({done.steps} steps); not trained again", flush=True)
            self.results[stage.key] = done
            return
        if self.main and done_file.exists():  # a fresh start: an old result must not outlive a kill
            done_file.unlink()
        init = None
        if stage.init_from is not None:
            source = self.results[stage.init_from]
            init = self.root / source.key / source.checkpoint  # the folder of the stage that trained it
        if self.main:
            what = ", ".join(f"{t} ({', '.join(n)})" for t, n in stage.train.items() if n)
            print(f"\n── stage {stage.key}: trains {what}; starts from {stage.init_from or 'the pretrained encoder'}",
                  flush=True)
        trainer = Trainer(sexp, resume=self.resume, init_from=init, progress=self.progress, runtime=self.runtime)
        outcome = trainer.fit()
        last = outcome.best_checkpoint or outcome.output_dir / f"checkpoint-{outcome.steps}"
        result = StageResult(
            key=stage.key, steps=outcome.steps, tokens=outcome.tokens, metrics=dict(outcome.metrics),
            primary={name: fam.primary_metric for name, fam in trainer.families.items()},
            checkpoint=str(Path(last).relative_to(outcome.output_dir)),
            drawn={f"{t}/{d}": n for (t, d), n in trainer.sampler.realised_counts().items()},
            digest=digest, mlflow_run_id=trainer.tracker.run_id,
            replicates=self._replicates(trainer, outcome.results) if self.exp.seeds and self.main else {},
        )
        if self.main:
            _write_json(done_file, dataclasses.asdict(result))
        self.runtime.barrier()  # every process ends a stage before any starts the next (rank 0 wrote stage.json)
        self.results[stage.key] = result

    def _replicates(self, trainer: Any, results: list[Any]) -> dict[str, list[float]]:
        """The paired bootstrap's replicates of each supervised task's primary metric (final evaluation)."""
        out = {}
        for r in results:
            family = trainer.families[r.split.task]
            metric = family.primary_metric
            if not family.supervised or metric not in r.metrics:
                continue
            name = next(k for k in r.metric_names() if k.endswith(f"/{metric}"))
            print(f"bootstrap: {RESAMPLES} resamples of {len(r.predictions):,} {r.split.label} examples", flush=True)
            out[name] = significance.replicates(family, r.split.examples, r.predictions, r.split.dataset, metric,
                                                RESAMPLES)
        return out


def _finished(done_file: Path, stage: Stage, digest: str) -> StageResult:
    """A finished stage's result, if it was computed from this experiment (`digest`); else a ConfigError."""
    try:
        done = StageResult(**json.loads(done_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{done_file}: unreadable ({err}); remove that stage's folder to train it again") from None
    if done.digest != digest:
        raise ConfigError(f"{done_file}: stage {stage.key} was finished with another experiment (tasks, "
                          "data or settings changed since); train again without --resume, or remove that "
                          "stage's folder to train it again")
    return done


def run(exp: Experiment, resume: bool = False, progress: bool = True, runtime: Runtime | None = None) -> RegimeOutcome:
    """Train every stage of the experiment's regime (or of each regime it compares) and report; `runtime`:
    this process's place in the launch (default: as the environment says)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return _Runner(exp, resume, progress, runtime or Runtime.from_environment()).run()


