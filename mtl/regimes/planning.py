"""The stage graph: which stages a regime trains, in which order, each from which weights.

`plan(exp)` is pure: it reads the experiment (and each task family's `supervised` flag) and asks each
chosen regime's declaration for its stages, through a `Planner` that knows how a stage is cut from the
experiment (its training datasets, what it evaluates and in which role, its budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mtl.core.config import Experiment
from mtl.core.table import format_table
from mtl.regimes.base import Stage, _key, get_regime
from tasks import get_family

ZERO_SHOT_MARK = "*"


def is_plain(exp: Experiment) -> bool:
    """One multi-task run with no stages: trained exactly as `mtl train` always has (not under `seeds:`,
    where each seed is a stage of its own)."""
    return not exp.compare and not exp.seeds and get_regime(exp.regime.name).plain


def regimes_of(exp: Experiment) -> list[str]:
    return list(exp.compare) or [exp.regime.name]


class Planner:
    """What a regime's plan function is given: the experiment's tasks sorted by what they can do, and
    `stage()`, which cuts one stage from the experiment so that every regime cuts them alike."""

    def __init__(self, exp: Experiment, regime: str, qualified: bool, seed: int | None = None):
        self.exp, self.regime, self.qualified, self.seed = exp, regime, qualified, seed
        self.trainable = [t for t, task in exp.tasks.items() if any(ds.train for ds in task.datasets)]
        self.supervised = [t for t in self.trainable if get_family(exp.tasks[t].family).supervised]
        self.selfsup = [t for t in self.trainable if t not in self.supervised]

    def stage(self, name: str, budget: Literal["pretrain", "finetune"], tasks: Sequence[str], evaluate: bool,
              init: str | None = None, train: dict[str, list[str]] | None = None,
              reports: Sequence[str] | None = None, languages: Sequence[str] = ()) -> Stage:
        """A stage training `tasks` (or `train`: task → datasets), evaluating them if `evaluate`, scoring
        `reports` (default: the supervised tasks) where it evaluates them, starting from stage `init`."""
        exp = self.exp
        train = train if train is not None else {t: self.train_names(t) for t in tasks}
        evals = {t: _eval_roles(exp, t, train.get(t, [])) for t in tasks} if evaluate else {}
        evals = {t: e for t, e in evals.items() if e}
        report_tasks = [t for t in (reports if reports is not None else self.supervised) if t in evals]
        steps, epochs = _budget(exp, budget)
        return Stage(
            name=name, regime=self.regime, budget=budget, train=train, evaluate=evals,
            init_from=None if init is None else _key(self.regime, init, self.qualified, self.seed),
            reports=[(t, d) for t in report_tasks for d in evals[t]],
            steps=steps, epochs=epochs, qualified=self.qualified, languages=list(languages), seed=self.seed,
        )

    def finetune_each(self, init: str | None) -> list[Stage]:
        """One fine-tuning stage per supervised task, each from stage `init`."""
        return [self.stage(f"finetune/{t}", "finetune", [t], True, init) for t in self.supervised]

    def train_names(self, task: str) -> list[str]:
        return [ds.name for ds in self.exp.tasks[task].datasets if ds.train]


def plan(exp: Experiment) -> list[Stage]:
    """Every stage of the experiment's regime (or of each regime under `compare`), in training order; under
    `seeds:` all of them once per seed, seed by seed (so an early stop still leaves whole comparisons)."""
    out: list[Stage] = []
    for seed in seeds_of(exp):
        for name in regimes_of(exp):
            out += plan_regime(exp, name, qualified=bool(exp.compare), seed=seed)
    return out


def seeds_of(exp: Experiment) -> list[int | None]:
    """The seeds the regimes are trained with: `seeds:`, or [None] (train.seed, stage keys without a seed)."""
    return list(exp.seeds) or [None]


def plan_regime(exp: Experiment, name: str, qualified: bool = False, seed: int | None = None) -> list[Stage]:
    """The stages of one regime (a ConfigError for a name no module registers)."""
    return get_regime(name).plan(Planner(exp, name, qualified, seed))


def _eval_roles(exp: Experiment, task: str, trained: Sequence[str]) -> dict[str, str]:
    """Every dataset of `task` with an eval split, and its role when the stage trains `trained` (the zero-shot
    rule of mtl.data, which the stage's load_splits applies too)."""
    from mtl.data import is_zero_shot

    role = exp.train.eval_split
    return {ds.name: "zero-shot" if is_zero_shot(exp, task, ds, role, trained) else "eval"
            for ds in exp.tasks[task].datasets if ds.split(role)}


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
