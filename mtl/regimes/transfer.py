"""`transfer`: per source language (or language set) of one task, train on it and evaluate every eval
dataset — a source × target matrix, not a row of a comparison."""

from __future__ import annotations

from mtl.core.config import Experiment
from mtl.core.typed_yaml import Context
from mtl.regimes.base import Regime, TaskSets, register
from mtl.regimes.checks import languages_task
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    task = languages_task(p.exp)
    datasets = p.exp.tasks[task].datasets
    trained_langs = list(dict.fromkeys(ds.language for ds in datasets if ds.train))
    out = []
    for source in p.exp.regime.sources or trained_langs:
        langs = [source] if isinstance(source, str) else list(source)
        train = {task: [ds.name for ds in datasets if ds.train and ds.language in langs]}
        out.append(p.stage(f"transfer/{'+'.join(langs)}", "finetune", [task], True, train=train,
                           reports=[task], languages=langs))
    return out


def check(exp: Experiment, ctx: Context, tasks: TaskSets) -> None:
    r, path, task = exp.regime, ("regime",), languages_task(exp)
    trained = sorted({ds.language for ds in exp.tasks[task].datasets if ds.train})
    if r.sources is not None and not r.sources:
        raise ctx.error(path + ("sources",), "list at least one source language (set)")
    seen: list[list[str]] = []
    for i, source in enumerate(r.sources or []):
        langs = [source] if isinstance(source, str) else source
        if not langs or len(set(langs)) < len(langs):
            raise ctx.error(path + ("sources", str(i)), "a source is one language or a list of distinct languages")
        for lang in langs:
            if lang not in trained:
                raise ctx.error(path + ("sources", str(i)), f"{lang!r} is not a training language of task {task} "
                                f"(training languages: {', '.join(trained)})")
        if sorted(langs) in seen:
            raise ctx.error(path + ("sources", str(i)), f"source {'+'.join(sorted(langs))} listed twice")
        seen.append(sorted(langs))


REGIME = register(Regime("transfer", plan, order=80, budgets=("finetune",), keys=("languages_of", "sources"),
                         shape="matrix", check=check))
