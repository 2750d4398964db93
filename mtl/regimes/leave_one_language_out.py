"""`leave_one_language_out`: per target language of one task, train on the task's other languages and
score the left-out one zero-shot — how far the model transfers to a language it never saw labelled."""

from __future__ import annotations

from mtl.core.config import Experiment
from mtl.core.typed_yaml import Context
from mtl.regimes.base import Regime, TaskSets, register
from mtl.regimes.checks import languages_task
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    exp = p.exp
    task = languages_task(exp)
    datasets = exp.tasks[task].datasets
    trained_langs = list(dict.fromkeys(ds.language for ds in datasets if ds.train))
    eval_langs = {ds.language for ds in datasets if ds.split(exp.train.eval_split)}
    out = []
    for lang in exp.regime.languages or [lg for lg in trained_langs if lg in eval_langs]:
        train = {task: [ds.name for ds in datasets if ds.train and ds.language != lang]}
        s = p.stage(f"lolo/{lang}", "finetune", [task], True, train=train, languages=[lang])
        s.reports = [(task, ds.name) for ds in datasets if ds.language == lang and ds.name in s.evaluate[task]]
        out.append(s)
    return out


def check(exp: Experiment, ctx: Context, tasks: TaskSets) -> None:
    r, path, task = exp.regime, ("regime",), languages_task(exp)
    trained = sorted({ds.language for ds in exp.tasks[task].datasets if ds.train})
    if r.languages is not None and (not r.languages or len(set(r.languages)) < len(r.languages)):
        raise ctx.error(path + ("languages",), "list each target language once, at least one")
    scored = {ds.language for ds in exp.tasks[task].datasets if ds.split(exp.train.eval_split)}
    for i, lang in enumerate(r.languages or []):
        if lang not in trained:
            raise ctx.error(path + ("languages", str(i)), f"{lang!r} is not a training language of task {task} "
                            f"(training languages: {', '.join(trained)})")
        if lang not in scored:
            raise ctx.error(path + ("languages", str(i)), f"task {task} has no {exp.train.eval_split} split in "
                            f"{lang!r} to score it on when it is left out")
    if len(trained) < 2:
        raise ctx.error(path + ("languages_of",), f"leave_one_language_out needs a task with at least two training "
                        f"languages; {task} trains on {', '.join(trained)}")
    if not set(trained) & scored:
        raise ctx.error(path + ("languages_of",), f"leave_one_language_out: no training language of task {task} has a "
                        f"{exp.train.eval_split} split to score it on when it is left out")


REGIME = register(Regime("leave_one_language_out", plan, order=70, budgets=("finetune",),
                         keys=("languages_of", "languages"), check=check))
