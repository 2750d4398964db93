"""Training regimes: which stages an experiment trains, in which order, each from which weights.

`plan(exp)` is pure: it reads the experiment (and each task family's `supervised` flag) and returns
the stages. `run(exp)` trains them one after the other, each a plain `Trainer` on an experiment
derived from the parent (tasks and splits filtered, its own output folder and budget), so a stage
is an ordinary run: its folder holds checkpoints that `mtl evaluate` and `mtl predict` read, and
its MLflow run is nested under the regime's run. A finished stage leaves `stage.json` (its final
metrics, steps and tokens), so a regime started again with `--resume` trains no finished stage
twice and continues the one it died in from its last checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtl.config import ConfigError, Experiment, RegimeConfig, did_you_mean, dump_experiment, selection_rule
from mtl.data import feature_cache_dir
from mtl.tracking import Tracker, _metric_key, default_run_name
from sampling.table import format_table
from tasks import get_family

log = logging.getLogger(__name__)

DONE_FILE = "stage.json"  # in a stage's folder once the stage has ended
STATE_FILE = "regime.json"  # in the run folder: the MLflow runs of the regimes, so a resumed regime reuses them
ZERO_SHOT_MARK = "*"
# The order regimes are listed in when no experiment says otherwise (an MLflow experiment searched by name).
ORDER = ("single", "multi_task", "mt_finetune", "leave_one_out", "supervised_pretrain", "mlm_pretrain",
         "leave_one_language_out", "transfer")


# --------------------------------------------------------------------------- the plan


@dataclass
class Stage:
    """One training run of a regime.

    `train` names the datasets each task trains on; `evaluate` the datasets evaluated at the end with
    their role ("eval": a language the stage trains on, "zero-shot": one it does not); a pre-training
    stage evaluates nothing. `reports` are the (task, dataset) pairs whose final scores are the regime's.
    """

    name: str  # within its regime: "mt", "finetune/sst2", "loo/rte/pretrain", "transfer/en+fr"
    regime: str
    budget: Literal["pretrain", "finetune"]
    train: dict[str, list[str]]
    evaluate: dict[str, dict[str, str]] = field(default_factory=dict)
    init_from: str | None = None  # key of the stage whose final weights this one starts from
    reports: list[tuple[str, str]] = field(default_factory=list)
    steps: int | None = None
    epochs: float | None = None
    qualified: bool = False  # under `compare`: the key and folder carry the regime's name
    languages: list[str] = field(default_factory=list)  # transfer: the source; leave_one_language_out: the target

    @property
    def key(self) -> str:
        """Unique in the plan; the stage's folder under the run's output_dir."""
        return _key(self.regime, self.name, self.qualified)

    def roles(self) -> dict[str, dict[str, list[str]]]:
        """task → dataset → its roles in this stage (train, eval, zero-shot)."""
        out: dict[str, dict[str, list[str]]] = {}
        for task, names in self.train.items():
            for name in names:
                out.setdefault(task, {}).setdefault(name, []).append("train")
        for task, evals in self.evaluate.items():
            for name, role in evals.items():
                out.setdefault(task, {}).setdefault(name, []).append(role)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, **dataclasses.asdict(self)}


def _key(regime: str, name: str, qualified: bool) -> str:
    """A stage's name, under `compare` prefixed with its regime's (once: single/sst2 stays single/sst2)."""
    return f"{regime}/{name}" if qualified and not name.startswith(f"{regime}/") else name


def is_plain(exp: Experiment) -> bool:
    """One multi-task run with no stages: trained exactly as `mtl train` always has."""
    return not exp.compare and exp.regime.name == "multi_task"


def regimes_of(exp: Experiment) -> list[str]:
    return list(exp.compare) or [exp.regime.name]


def plan(exp: Experiment) -> list[Stage]:
    """Every stage of the experiment's regime (or of each regime under `compare`), in training order."""
    out: list[Stage] = []
    for name in regimes_of(exp):
        out += plan_regime(exp, name, qualified=bool(exp.compare))
    return out


def plan_regime(exp: Experiment, name: str, qualified: bool = False) -> list[Stage]:
    """The stages of one regime."""
    r = exp.regime
    trainable = [t for t, task in exp.tasks.items() if any(ds.train for ds in task.datasets)]
    supervised = [t for t in trainable if get_family(exp.tasks[t].family).supervised]
    selfsup = [t for t in trainable if t not in supervised]

    def stage(sname: str, budget: Literal["pretrain", "finetune"], tasks: Sequence[str], evaluate: bool,
              init: str | None = None, train: dict[str, list[str]] | None = None,
              reports: Sequence[str] | None = None, languages: Sequence[str] = ()) -> Stage:
        train = train if train is not None else {t: _train_names(exp, t) for t in tasks}
        evals = {t: _eval_roles(exp, t, train.get(t, [])) for t in tasks} if evaluate else {}
        evals = {t: e for t, e in evals.items() if e}
        report_tasks = [t for t in (reports if reports is not None else supervised) if t in evals]
        steps, epochs = _budget(exp, budget)
        return Stage(
            name=sname, regime=name, budget=budget, train=train, evaluate=evals,
            init_from=None if init is None else _key(name, init, qualified),
            reports=[(t, d) for t in report_tasks for d in evals[t]],
            steps=steps, epochs=epochs, qualified=qualified, languages=list(languages),
        )

    def finetune_each(init: str | None) -> list[Stage]:
        return [stage(f"finetune/{t}", "finetune", [t], True, init) for t in supervised]

    if name == "single":
        return [stage(f"single/{t}", "finetune", [t], True) for t in supervised]
    if name == "multi_task":
        everything = list(exp.tasks)  # as a plain run: a task with eval data only is evaluated too
        return [stage("mt", "pretrain", everything, True, train={t: _train_names(exp, t) for t in trainable})]
    if name == "mt_finetune":
        return [stage("mt", "pretrain", trainable, False), *finetune_each("mt")]
    if name == "supervised_pretrain":
        return [stage("supervised", "pretrain", supervised, False), *finetune_each("supervised")]
    if name == "mlm_pretrain":
        return [stage("mlm", "pretrain", selfsup, False), *finetune_each("mlm")]
    if name == "leave_one_out":
        out = []
        for target in r.targets or supervised:
            others = [t for t in trainable if t != target]
            out += [stage(f"loo/{target}/pretrain", "pretrain", others, False),
                    stage(f"loo/{target}/finetune", "finetune", [target], True, f"loo/{target}/pretrain")]
        return out
    task = r.languages_of or next(iter(exp.tasks))
    datasets = exp.tasks[task].datasets
    trained_langs = list(dict.fromkeys(ds.language for ds in datasets if ds.train))
    if name == "leave_one_language_out":
        eval_langs = {ds.language for ds in datasets if ds.split(exp.train.eval_split)}
        out = []
        for lang in r.languages or [lg for lg in trained_langs if lg in eval_langs]:
            train = {task: [ds.name for ds in datasets if ds.train and ds.language != lang]}
            s = stage(f"lolo/{lang}", "finetune", [task], True, train=train, languages=[lang])
            s.reports = [(task, ds.name) for ds in datasets if ds.language == lang and ds.name in s.evaluate[task]]
            out.append(s)
        return out
    if name == "transfer":
        out = []
        for source in r.sources or trained_langs:
            langs = [source] if isinstance(source, str) else list(source)
            train = {task: [ds.name for ds in datasets if ds.train and ds.language in langs]}
            out.append(stage(f"transfer/{'+'.join(langs)}", "finetune", [task], True, train=train,
                             reports=[task], languages=langs))
        return out
    raise ConfigError(f"unknown regime {name!r}{did_you_mean(name, ORDER)} (known: {', '.join(ORDER)})")


def _train_names(exp: Experiment, task: str) -> list[str]:
    return [ds.name for ds in exp.tasks[task].datasets if ds.train]


def _eval_roles(exp: Experiment, task: str, trained: Sequence[str]) -> dict[str, str]:
    """Every dataset of `task` with an eval split, and its role when the stage trains `trained`: zero-shot
    when no trained dataset shares its language (as mtl.data.load_splits decides)."""
    datasets = exp.tasks[task].datasets
    langs = {ds.language for ds in datasets if ds.name in trained}
    return {ds.name: "eval" if ds.name in trained or ds.language in langs else "zero-shot"
            for ds in datasets if ds.split(exp.train.eval_split)}


def _budget(exp: Experiment, kind: str) -> tuple[int | None, float | None]:
    steps, epochs = getattr(exp.regime, f"{kind}_steps"), getattr(exp.regime, f"{kind}_epochs")
    if steps is None and epochs is None:
        return exp.train.steps, exp.train.epochs
    return steps, epochs


def describe(stages: Sequence[Stage]) -> str:
    """The stage graph as a table (`mtl train --dry-run`)."""
    rows = []
    for s in stages:
        budget = f"{s.steps} steps" if s.steps is not None else f"{s.epochs or 1:g} epochs"
        trains = "; ".join(f"{t}: {', '.join(names)}" for t, names in s.train.items() if names)
        evals = "; ".join(f"{t}: " + ", ".join(f"{d}{ZERO_SHOT_MARK if r == 'zero-shot' else ''}" for d, r in e.items())
                          for t, e in s.evaluate.items())
        rows.append((s.key, s.init_from or "pretrained", f"{s.budget} ({budget})", trains, evals or "—"))
    return format_table(("stage", "starts from", "budget", "trains", "evaluates (* zero-shot)"), rows, left=5)


# --------------------------------------------------------------------------- a stage's experiment


def stage_experiment(exp: Experiment, stage: Stage) -> Experiment:
    """The parent experiment cut to one stage: its tasks and splits, its budget, its folder and run name."""
    tasks = {}
    for name, task in exp.tasks.items():
        trained = set(stage.train.get(name, ()))
        evaluated = stage.evaluate.get(name, {})
        if not trained and not evaluated:
            continue
        datasets = []
        for ds in task.datasets:
            splits = {"train": ds.train if ds.name in trained else None,
                      "dev": ds.dev if ds.name in evaluated else None,
                      "test": ds.test if ds.name in evaluated else None}
            if not any(splits.values()):
                continue
            given = {k: v for k, v in ds._given.items() if splits.get(k) is not None}
            datasets.append(dataclasses.replace(ds, **splits, _given=given))
        tasks[name] = dataclasses.replace(task, datasets=datasets)
    folder = str(exp.output_dir / stage.key).replace("{", "{{").replace("}", "}}")
    train = dataclasses.replace(
        exp.train, steps=stage.steps, epochs=stage.epochs, output_dir=folder,
        cache_dir=str(exp.train.cache_dir or feature_cache_dir(exp)),  # one feature cache for every stage
        select_best=_select_best(exp.train.select_best, stage),
    )
    tags = {**exp.tracking.tags, "mtl.role": "stage", "mtl.regime": stage.regime, "mtl.stage": stage.name,
            "mtl.init_from": stage.init_from or "pretrained"}
    # A pre-training stage is not a model anyone serves: no pyfunc model for it.
    tracking = dataclasses.replace(exp.tracking, run_name=stage.name, tags=tags,
                                   log_model=exp.tracking.log_model and bool(stage.evaluate))
    return dataclasses.replace(exp, tasks=tasks, train=train, tracking=tracking, regime=RegimeConfig(), compare=[])


def _select_best(metric: str | None, stage: Stage) -> str | None:
    """train.select_best where the stage evaluates that metric's dataset in the same role; else none."""
    if metric is None:
        return None
    parts = metric.split("/")
    evals = stage.evaluate.get(parts[1], {}) if len(parts) > 1 else {}
    role = {"eval": "eval", "zeroshot": "zero-shot"}.get(parts[0])
    if len(parts) == 4 and evals.get(parts[2]) == role:
        return metric
    if len(parts) == 3 and role == "eval" and "eval" in evals.values():
        return metric
    return None


def _digest(stage: Stage, exp: Experiment, init_digest: str = "") -> str:
    """What a finished stage computed from (its experiment, and the stage it starts from): a changed
    experiment must not reuse its result."""
    d = exp.to_dict()
    for key in ("tracking", "launch"):
        d.pop(key)
    d["train"].pop("output_dir")
    d["train"].pop("cache_dir")
    text = json.dumps({"stage": stage.to_dict(), "experiment": d, "init": init_digest}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- results


@dataclass
class StageResult:
    """What a finished stage leaves in its stage.json."""

    key: str
    steps: int
    tokens: int
    metrics: dict[str, float]
    primary: dict[str, str]  # task → its family's primary metric
    checkpoint: str  # relative to the stage's folder: the weights later stages start from
    drawn: dict[str, int]  # task/dataset → batches drawn (the sampler's realised counts)
    digest: str = ""
    mlflow_run_id: str | None = None


@dataclass
class Row:
    """One regime in the comparison: its compute and its scores (task/dataset/metric → value)."""

    regime: str
    stages: int
    steps: int
    tokens: int
    scores: dict[str, float]
    zero_shot: set[str] = field(default_factory=set)


@dataclass
class Matrix:
    """A transfer matrix: sources × eval datasets of one task, one metric."""

    task: str
    metric: str
    sources: list[str]  # "en", "en+fr"
    targets: list[list[str]]  # [dataset, language]
    values: list[list[float | None]]
    in_language: list[list[bool]]
    steps: int
    tokens: int


@dataclass
class RegimeOutcome:
    rows: list[Row]
    stages: dict[str, StageResult]
    text: str  # the comparison table (or the transfer matrix) as printed
    matrix: Matrix | None = None
    output_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run holding the others (the comparison's, or the regime's)


def regime_row(regime: str, stages: Sequence[Stage], results: dict[str, StageResult]) -> Row:
    scores: dict[str, float] = {}
    zero: set[str] = set()
    for s in stages:
        res = results[s.key]
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            value = res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{ds}/{metric}")
            if value is None:
                continue
            key = _metric_key(f"{task}/{ds}/{metric}")
            scores[key] = value
            if role == "zero-shot":
                zero.add(key)
    return Row(regime, len(stages), sum(results[s.key].steps for s in stages),
               sum(results[s.key].tokens for s in stages), scores, zero)


def transfer_matrix(exp: Experiment, stages: Sequence[Stage], results: dict[str, StageResult]) -> Matrix:
    task = next(iter(stages[0].train))
    langs = {ds.name: ds.language for ds in exp.tasks[task].datasets}
    targets = [d for d in stages[0].evaluate.get(task, {})]
    metric = results[stages[0].key].primary.get(task, "")
    values, in_lang = [], []
    for s in stages:
        res = results[s.key]
        row, marks = [], []
        for d in targets:
            role = s.evaluate[task][d]
            row.append(res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{d}/{metric}"))
            marks.append(role == "eval")
        values.append(row)
        in_lang.append(marks)
    return Matrix(task, metric, ["+".join(s.languages) for s in stages], [[d, langs[d]] for d in targets], values,
                  in_lang, sum(results[s.key].steps for s in stages), sum(results[s.key].tokens for s in stages))


# --------------------------------------------------------------------------- tables


def _cell(value: float | None, zero: bool = False) -> str:
    return "—" if value is None else f"{value:.2f}{ZERO_SHOT_MARK if zero else ''}"


def _columns(rows: Sequence[Row]) -> list[str]:
    return sorted({k for r in rows for k in r.scores})


def _mean(row: Row, columns: Sequence[str]) -> float | None:
    if not columns or any(c not in row.scores for c in columns):
        return None
    return sum(row.scores[c] for c in columns) / len(columns)


def _table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    columns = _columns(rows)
    header = ["regime", "stages", "steps", "tokens", *columns, "mean"]
    body = [[r.regime, str(r.stages), f"{r.steps:,}", f"{r.tokens:,}",
             *(_cell(r.scores.get(c), c in r.zero_shot) for c in columns), _cell(_mean(r, columns))] for r in rows]
    return header, body


def _legend(rows: Sequence[Row]) -> str:
    notes = ["steps and tokens: every stage of the regime together (tokens: training tokens, not padding)",
             "mean: over every column, for a regime that has them all"]
    if any(r.zero_shot for r in rows):
        notes.append(f"{ZERO_SHOT_MARK} zero-shot: evaluated in a language its stage did not train on")
    return "\n".join(notes)


def table_text(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    return format_table(header, body, left=1) + "\n" + _legend(rows)


def table_markdown(rows: Sequence[Row]) -> str:
    header, body = _table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n\n" + _legend(rows).replace("\n", "  \n") + "\n"


def table_csv(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["regime", "stages", "steps", "tokens", *columns, "mean", "zero_shot"])
    for r in rows:
        mean = _mean(r, columns)
        w.writerow([r.regime, r.stages, r.steps, r.tokens, *(r.scores.get(c, "") for c in columns),
                    "" if mean is None else mean, " ".join(sorted(r.zero_shot))])
    return out.getvalue()


def _matrix_cells(m: Matrix, mark: str) -> tuple[list[str], list[list[str]]]:
    header = ["source \\ target", *(f"{d} ({lang})" for d, lang in m.targets)]
    body = [[src, *(_cell(v) + (mark if inl and v is not None else "") for v, inl in zip(vals, marks))]
            for src, vals, marks in zip(m.sources, m.values, m.in_language)]
    return header, body


def matrix_text(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    return (f"Transfer matrix: {m.task}, {m.metric} (rows: the languages trained on; columns: eval datasets; "
            f"{len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} tokens)\n"
            + format_table(header, body, left=1) + "\n◆ in-language: the source trains on the target's language; "
            "every other cell is zero-shot")


def matrix_markdown(m: Matrix) -> str:
    header, body = _matrix_cells(m, " ◆")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return (f"Transfer matrix: {m.task}, {m.metric}; {len(m.sources)} stages, {m.steps:,} steps, {m.tokens:,} "
            "tokens.\n\n" + "\n".join(lines) + "\n\n◆ in-language; every other cell is zero-shot.\n")


def matrix_csv(m: Matrix) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["source", *(d for d, _ in m.targets)])
    w.writerow(["language", *(lang for _, lang in m.targets)])
    for src, vals in zip(m.sources, m.values):
        w.writerow([src, *("" if v is None else v for v in vals)])
    return out.getvalue()


def stages_text(stages: Sequence[Stage], results: dict[str, StageResult]) -> str:
    rows = []
    for s in stages:
        res = results[s.key]
        scores = []
        for task, ds in s.reports:
            metric = res.primary.get(task)
            role = s.evaluate[task][ds]
            value = res.metrics.get(f"{'zeroshot' if role == 'zero-shot' else 'eval'}/{task}/{ds}/{metric}")
            scores.append(f"{task}/{ds} {metric}={_cell(value, role == 'zero-shot')}")
        drawn = ", ".join(f"{g}:{n}" for g, n in res.drawn.items())
        rows.append((s.key, s.init_from or "pretrained", f"{res.steps:,}", f"{res.tokens:,}", drawn,
                     "  ".join(scores) or "—"))
    return format_table(("stage", "starts from", "steps", "tokens", "batches drawn", "scores"), rows, left=2)


# --------------------------------------------------------------------------- running


def _main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    """Every process finishes a stage before any starts the next (rank 0 writes its stage.json first)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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

    def __init__(self, exp: Experiment, resume: bool, progress: bool):
        self.exp = exp
        self.resume = resume
        self.progress = progress
        self.main = _main()
        self.root = exp.output_dir
        self.stages = plan(exp)
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
        exp, compare = self.exp, bool(self.exp.compare)
        if self.main:
            print(f"\n{'Compare' if compare else 'Regime'} {', '.join(regimes_of(exp))}: {len(self.stages)} "
                  f"stages under {self.root}\n{describe(self.stages)}\n", flush=True)
        if self.resume:
            self._check_resume()
        top = None
        if compare:
            name = exp.tracking.run_name or default_run_name(exp.name, "compare")
            top = self._tracker(name, self.state.get("compare"),
                                {"mtl.role": "compare", "mtl.compare": ",".join(exp.compare)}, self.stages)
            self._remember("compare", None, top.run_id)
        status = "FAILED"
        try:
            rows, matrix = [], None
            for regime in regimes_of(exp):
                row, matrix = self._regime(regime, compare)
                if row is not None:
                    rows.append(row)
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
                if top is not None:
                    self._log_table(top, rows, "compare", "table")
            status = "FINISHED"
            holder = top.run_id if top is not None else (self.state.get("regimes") or {}).get(regimes_of(exp)[0])
            return RegimeOutcome(rows, self.results, text, matrix, self.root, run_id=holder)
        finally:
            if top is not None:
                top.end(status)

    def _regime(self, regime: str, compare: bool) -> tuple[Row | None, Matrix | None]:
        stages = [s for s in self.stages if s.regime == regime]
        name = self.exp.tracking.run_name or default_run_name(self.exp.name, regime)
        parent = self._tracker(regime if compare else name,
                               self.state.get("regimes", {}).get(regime), {"mtl.role": "regime", "mtl.regime": regime,
                               **({"mtl.selection": selection_rule(self.exp)} if self.exp.train.select_best else {})},
                               stages)
        self._remember("regimes", regime, parent.run_id)
        status = "FAILED"
        try:
            for stage in stages:
                self._stage(stage)
            if self.main:
                print(f"\nStages of {regime}:\n{stages_text(stages, self.results)}\n", flush=True)
            if regime == "transfer":
                matrix = transfer_matrix(self.exp, stages, self.results)
                if self.main:
                    self._log_matrix(parent, matrix)
                status = "FINISHED"
                return None, matrix
            row = regime_row(regime, stages, self.results)
            if self.main:
                parent.log_metrics({"regime/stages": float(row.stages), "regime/steps": float(row.steps),
                                    "regime/tokens": float(row.tokens),
                                    **{f"score/{k}": v for k, v in row.scores.items()}})
                parent.log_dict({"zero_shot": sorted(row.zero_shot)}, "regime/row.json")
                parent.set_tags({"mtl.zero_shot": ",".join(sorted(row.zero_shot))})
                parent.log_text(stages_text(stages, self.results), "regime/stages.txt")
                folder = f"{regime}/" if compare else ""
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

    def _log_matrix(self, tracker: Tracker, m: Matrix) -> None:
        files = [_write_text(self.root / "transfer.csv", matrix_csv(m)),
                 _write_text(self.root / "transfer.md", matrix_markdown(m)),
                 _write_text(self.root / "transfer.json", json.dumps(dataclasses.asdict(m), indent=1))]
        for f in files:
            tracker.log_artifact(f, "transfer")
        metrics = {f"transfer/{src}/{m.task}/{d}/{m.metric}": v for src, vals in zip(m.sources, m.values)
                   for (d, _), v in zip(m.targets, vals) if v is not None}
        tracker.log_metrics({**metrics, "regime/steps": float(m.steps), "regime/tokens": float(m.tokens)})
        if not self.exp.tracking.log_plots:
            return
        from mtl import plots

        png = self.root / "transfer.png"
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
            sexp = stage_experiment(self.exp, stage)
            digests[stage.key] = _digest(stage, sexp, digests[stage.init_from] if stage.init_from else "")
            done_file = self.root / stage.key / DONE_FILE
            if done_file.exists():
                _finished(done_file, stage, digests[stage.key])
            else:
                ckpt.resume_point(sexp.output_dir, dump_experiment(sexp), warn=False)

    def _stage(self, stage: Stage) -> None:
        from mtl.trainer import Trainer

        sexp = stage_experiment(self.exp, stage)
        folder = self.root / stage.key
        done_file = folder / DONE_FILE
        digest = _digest(stage, sexp, self.results[stage.init_from].digest if stage.init_from else "")
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
            init = self.root / stage.init_from / source.checkpoint
        if self.main:
            what = ", ".join(f"{t} ({', '.join(n)})" for t, n in stage.train.items() if n)
            print(f"\n── stage {stage.key}: trains {what}; starts from {stage.init_from or 'the pretrained encoder'}",
                  flush=True)
        trainer = Trainer(sexp, resume=self.resume, init_from=init, progress=self.progress)
        outcome = trainer.fit()
        last = outcome.best_checkpoint or outcome.output_dir / f"checkpoint-{outcome.steps}"
        result = StageResult(
            key=stage.key, steps=outcome.steps, tokens=outcome.tokens, metrics=dict(outcome.metrics),
            primary={name: fam.primary_metric for name, fam in trainer.families.items()},
            checkpoint=str(Path(last).relative_to(outcome.output_dir)),
            drawn={f"{t}/{d}": n for (t, d), n in trainer.sampler.realised_counts().items()},
            digest=digest, mlflow_run_id=trainer.tracker.run_id,
        )
        if self.main:
            _write_json(done_file, dataclasses.asdict(result))
        _barrier()
        self.results[stage.key] = result


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


def run(exp: Experiment, resume: bool = False, progress: bool = True) -> RegimeOutcome:
    """Train every stage of the experiment's regime (or of each regime it compares) and report."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return _Runner(exp, resume, progress).run()


# --------------------------------------------------------------------------- from MLflow alone


def _row_from_run(run: Any) -> Row:
    m, tags = run.data.metrics, run.data.tags
    zero = {z for z in tags.get("mtl.zero_shot", "").split(",") if z}
    return Row(tags.get("mtl.regime", run.info.run_name), int(m.get("regime/stages", 0)),
               int(m.get("regime/steps", 0)), int(m.get("regime/tokens", 0)),
               {k[len("score/"):]: v for k, v in m.items() if k.startswith("score/")}, zero)


def _matrix_from_run(client: Any, run_id: str) -> Matrix:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "transfer/transfer.json", tmp)
        return Matrix(**json.loads(Path(local).read_text(encoding="utf-8")))


def recorded_table(target: str, uri: str, experiment: str | None = None, order: Sequence[str] = ()) -> str:
    """The comparison table of finished regime runs, from the tracking store alone.

    `target` is a run id (a compare run: its regimes; a regime run: its row, or a transfer run: its
    matrix), or, with `experiment` set, ignored: the latest finished run of each regime in that MLflow
    experiment, in `order` (an experiment file's compare list) or the usual order.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    if experiment is None:
        try:
            run = client.get_run(target)
        except MlflowException:
            found = client.get_experiment_by_name(target)
            if found is None:
                raise ConfigError(f"{target}: neither a run id nor an MLflow experiment in {uri}") from None
            return recorded_table(target, uri, experiment=target, order=order)
        role = run.data.tags.get("mtl.role")
        if role == "regime" and run.data.tags.get("mtl.regime") == "transfer":
            return matrix_text(_matrix_from_run(client, target))
        if role == "regime":
            return f"Regime {run.data.tags['mtl.regime']} (run {target}):\n{table_text([_row_from_run(run)])}"
        if role != "compare":
            raise ConfigError(f"run {target} is neither a regime nor a compare run: give two or more run ids to "
                              "compare plain runs")
        children = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{target}' and tags.`mtl.role` = 'regime' "
                          "and attributes.status = 'FINISHED'")
        rows = {c.data.tags["mtl.regime"]: _row_from_run(c) for c in children}
        listed = run.data.tags.get("mtl.compare", "").split(",")
        missing = [r for r in listed if r and r not in rows]
        text = f"Comparison of regimes (run {target}):\n" + table_text(_ordered(rows, listed))
        return text + (f"\nnot finished: {', '.join(missing)}" if missing else "")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} in {uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`mtl.role` = 'regime' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    rows: dict[str, Row] = {}
    for r in runs:
        name = r.data.tags.get("mtl.regime")
        if name and name != "transfer" and name not in rows:
            rows[name] = _row_from_run(r)
    if not rows:
        raise ConfigError(f"MLflow experiment {experiment!r} has no finished regime run")
    return f"Regimes of experiment {experiment} (the latest finished run of each):\n" + \
        table_text(_ordered(rows, order))


def _ordered(rows: dict[str, Row], order: Sequence[str]) -> list[Row]:
    first = [rows[n] for n in order if n in rows]
    return first + [rows[n] for n in ORDER if n in rows and n not in order]
