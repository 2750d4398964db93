"""`multi_task` (the default): every task at once, evaluated directly. On its own it is no regime at all
but the plain run `mtl train` always made; under `compare` it is one stage with the pre-training budget."""

from __future__ import annotations

from mtl.regimes.base import Regime, register
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    everything = list(p.exp.tasks)  # as a plain run: a task with eval data only is evaluated too
    return [p.stage("mt", "pretrain", everything, True, train={t: p.train_names(t) for t in p.trainable})]


REGIME = register(Regime("multi_task", plan, order=20, budgets=("pretrain",), plain=True))
