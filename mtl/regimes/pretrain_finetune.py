"""Pre-train on some tasks at once, then fine-tune each supervised task from that stage: `mt_finetune`
(every task, MT-DNN), `supervised_pretrain` (the supervised tasks only) and `mlm_pretrain` (the
self-supervised tasks only). They differ only in what the first stage trains."""

from __future__ import annotations

from collections.abc import Callable

from mtl.core.config import Experiment
from mtl.core.typed_yaml import Context
from mtl.regimes.base import Regime, TaskSets, register
from mtl.regimes.planning import Planner, Stage


def _then_finetune(stage: str, pretrain_on: Callable[[Planner], list[str]]) -> Callable[[Planner], list[Stage]]:
    def plan(p: Planner) -> list[Stage]:
        return [p.stage(stage, "pretrain", pretrain_on(p), False), *p.finetune_each(stage)]

    return plan


def _needs_selfsup(exp: Experiment, ctx: Context, tasks: TaskSets) -> None:
    if not tasks.trains - tasks.supervised:
        raise ctx.error(tasks.where, "mlm_pretrain pre-trains on the self-supervised tasks (e.g. family mlm); the "
                        "experiment has none with training data")


BOTH = ("pretrain", "finetune")
MT_FINETUNE = register(Regime("mt_finetune", _then_finetune("mt", lambda p: p.trainable), order=30, budgets=BOTH))
SUPERVISED = register(Regime("supervised_pretrain", _then_finetune("supervised", lambda p: p.supervised), order=50,
                             budgets=BOTH))
MLM = register(Regime("mlm_pretrain", _then_finetune("mlm", lambda p: p.selfsup), order=60, budgets=BOTH,
                      check=_needs_selfsup))
