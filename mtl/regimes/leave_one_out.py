"""`leave_one_out`: per target task, pre-train on every other task, then fine-tune on the target — what
the other tasks alone contribute to it."""

from __future__ import annotations

from mtl.core.config import Experiment
from mtl.core.typed_yaml import Context
from mtl.regimes.base import Regime, TaskSets, register
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    out = []
    for target in p.exp.regime.targets or p.supervised:
        others = [t for t in p.trainable if t != target]
        out += [p.stage(f"loo/{target}/pretrain", "pretrain", others, False),
                p.stage(f"loo/{target}/finetune", "finetune", [target], True, f"loo/{target}/pretrain")]
    return out


def check(exp: Experiment, ctx: Context, tasks: TaskSets) -> None:
    if len(tasks.trains) < 2:
        raise ctx.error(tasks.where, "leave_one_out needs at least two tasks with training data")
    for i, target in enumerate(exp.regime.targets or []):
        if target not in tasks.supervised:
            raise ctx.error(("regime", "targets", str(i)), f"{target!r} is not a supervised task with training data "
                            f"(targets: {', '.join(sorted(tasks.supervised))})")


REGIME = register(Regime("leave_one_out", plan, order=40, budgets=("pretrain", "finetune"), keys=("targets",),
                         check=check))
