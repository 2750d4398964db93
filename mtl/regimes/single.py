"""`single`: each supervised task alone, from the pretrained encoder — the baseline row of a comparison."""

from __future__ import annotations

from mtl.regimes.base import Regime, register
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    return [p.stage(f"single/{t}", "finetune", [t], True) for t in p.supervised]


REGIME = register(Regime("single", plan, order=10, budgets=("finetune",)))
