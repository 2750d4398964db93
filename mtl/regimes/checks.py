"""The `regime:` and `compare:` keys checked at the door, against the registered regimes.

Called by `mtl.experiment.validate` (the schema in mtl/core/config.py knows no regime: a name is a string there),
so that which regime reads which key is said once, by the regime's own declaration. A key no chosen regime
reads is refused: it would do nothing.
"""

from __future__ import annotations

import math

from mtl.core.config import Experiment, did_you_mean
from mtl.core.typed_yaml import Context
from mtl.regimes.base import BUDGET_KEYS, DEFAULT, KEYS, Regime, TaskSets, get_regime, regime_names
from tasks import get_family


def check_names(exp: Experiment, ctx: Context) -> None:
    """regime.name and every `compare:` entry name a registered regime (checked as the schema once did)."""
    names = regime_names()
    given = [(("regime", "name"), exp.regime.name)] + [(("compare", str(i)), n) for i, n in enumerate(exp.compare)]
    for path, value in given:
        if value not in names:
            raise ctx.error(path, f"must be one of {' | '.join(repr(n) for n in names)}, got {value!r}"
                            f"{did_you_mean(value, names)}")


def check_regime(exp: Experiment, ctx: Context) -> None:
    """The regime's keys against the experiment's tasks and languages, then what each chosen regime needs."""
    r, path = exp.regime, ("regime",)
    if exp.compare:
        if r.name != DEFAULT:
            raise ctx.error(path + ("name",), f"{r.name!r} with `compare`: compare runs the regimes it lists; "
                            "add it there and remove regime.name")
        if len(exp.compare) < 2:
            raise ctx.error(("compare",), "list at least two regimes to compare (one regime: regime: NAME)")
        dupes = sorted({n for n in exp.compare if exp.compare.count(n) > 1})
        if dupes:
            raise ctx.error(("compare",), f"{dupes[0]!r} listed twice")
        for name in exp.compare:
            if get_regime(name).shape == "matrix":
                raise ctx.error(("compare",), f"{name} gives a source × target matrix, not a row of a comparison; "
                                f"run it on its own (regime: {name})")
    chosen = [get_regime(n) for n in exp.compare or [r.name]]
    names = {c.name for c in chosen}
    plain = len(chosen) == 1 and chosen[0].plain and not exp.seeds
    _check_seeds(exp, ctx)
    for key in KEYS:
        if getattr(r, key) is None:
            continue
        if plain:
            raise ctx.error(path + (key,), f"the {chosen[0].name} regime on its own is one plain training run on "
                            "train.steps / train.epochs; this key does nothing there (pick a regime or `compare`)")
        readers = {n for n in regime_names() if key in get_regime(n).reads}
        if not names & readers:
            raise ctx.error(path + (key,), f"read only by {', '.join(sorted(readers))}; not by "
                            f"{', '.join(sorted(names))}")
    for stage in BUDGET_KEYS:
        steps, epochs = getattr(r, f"{stage}_steps"), getattr(r, f"{stage}_epochs")
        if steps is not None and epochs is not None:
            raise ctx.error(path + (f"{stage}_epochs",), f"give {stage}_steps or {stage}_epochs, not both")
        if steps is not None and steps < 1:
            raise ctx.error(path + (f"{stage}_steps",), f"must be at least 1, got {steps}")
        if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
            raise ctx.error(path + (f"{stage}_epochs",), f"must be a number of passes > 0, got {epochs}")
    for i, target in enumerate(r.targets or []):
        if target not in exp.tasks:
            raise ctx.error(path + ("targets", str(i)), f"unknown task {target!r} (tasks: {', '.join(exp.tasks)})")
    if r.targets is not None and (not r.targets or len(set(r.targets)) < len(r.targets)):
        raise ctx.error(path + ("targets",), "list each target task once, at least one")
    by_language = sorted(c.name for c in chosen if "languages_of" in c.reads)
    if by_language:
        _check_languages_of(exp, ctx, by_language)
    _check_families(exp, ctx, chosen, plain)


def _check_seeds(exp: Experiment, ctx: Context) -> None:
    """`seeds:` replaces train.seed: each seed trains the whole regime (or comparison) once."""
    for i, seed in enumerate(exp.seeds):
        if seed < 0:
            raise ctx.error(("seeds", str(i)), f"must be a seed ≥ 0, got {seed}")
        if exp.seeds.index(seed) != i:
            raise ctx.error(("seeds", str(i)), f"seed {seed} listed twice")
    if exp.seeds and (("train", "seed") in ctx.lines or ("train", "seed") in ctx.overrides):
        raise ctx.error(("train", "seed"), "does nothing with `seeds:` (each seed is a train.seed in turn); "
                        "remove one of them")


def languages_task(exp: Experiment) -> str:
    """The task whose languages a language regime uses: regime.languages_of, or the only task."""
    return exp.regime.languages_of or next(iter(exp.tasks))


def _check_languages_of(exp: Experiment, ctx: Context, readers: list[str]) -> None:
    r, path = exp.regime, ("regime",)
    if r.languages_of is None and len(exp.tasks) != 1:
        raise ctx.error(path, f"{' and '.join(readers)} need regime.languages_of: the task whose languages to use "
                        f"(tasks: {', '.join(exp.tasks)})")
    if r.languages_of is not None and r.languages_of not in exp.tasks:
        raise ctx.error(path + ("languages_of",), f"unknown task {r.languages_of!r} (tasks: {', '.join(exp.tasks)})")


def _check_families(exp: Experiment, ctx: Context, chosen: list[Regime], plain: bool) -> None:
    """What a regime needs of the tasks' families: regimes fine-tune and score the supervised tasks and
    treat self-supervised ones (`TaskFamily.supervised = False`, e.g. MLM) as pre-training objectives."""
    if plain:
        return
    trains = {name for name, task in exp.tasks.items() if any(ds.train for ds in task.datasets)}
    supervised = {name for name in trains if get_family(exp.tasks[name].family).supervised}
    where = ("compare",) if exp.compare else ("regime", "name")
    if not supervised:
        raise ctx.error(where, f"{', '.join(c.name for c in chosen)}: no supervised task with training data to "
                        "fine-tune and score")
    sets = TaskSets(trains, supervised, where)
    for regime in chosen:
        if regime.check is not None:
            regime.check(exp, ctx, sets)
    task = exp.regime.languages_of
    if task is not None and task not in supervised:
        raise ctx.error(("regime", "languages_of"), f"{task!r} is not a supervised task with training data")
