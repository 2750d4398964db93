"""`sequential`: the tasks trained one after another, each stage starting from the previous stage's weights
(STILTs, Phang et al. 2018, as jiant runs it: intermediate tasks first, the target last).

The order is the order of the tasks in the experiment file (every task with training data; a
self-supervised one, e.g. MLM, is one more link of the chain and scores nothing). Each stage trains one task
with the fine-tuning budget (regime.finetune_steps / finetune_epochs), like every one-task stage.

Scores come from each task's own stage, right after it trained, not from the final stage: a stage's model
holds the heads of its own task only (as a fine-tuning stage leaves the pre-training heads behind), so the
final stage cannot score the earlier tasks at all; and a task's own stage is where it is at its best, before
later tasks overwrite the encoder. The last task's score is the STILTs number (every earlier task an
intermediate); the earlier ones show the chain so far.
"""

from __future__ import annotations

from mtl.core.config import Experiment
from mtl.core.typed_yaml import Context
from mtl.regimes.base import Regime, TaskSets, register
from mtl.regimes.planning import Planner, Stage


def plan(p: Planner) -> list[Stage]:
    out: list[Stage] = []
    for task in p.trainable:
        previous = out[-1].name if out else None
        out.append(p.stage(f"sequential/{task}", "finetune", [task], task in p.supervised, previous))
    return out


def check(exp: Experiment, ctx: Context, tasks: TaskSets) -> None:
    if len(tasks.trains) < 2:
        raise ctx.error(tasks.where, "sequential trains the tasks one after another; it needs at least two tasks "
                        "with training data")


REGIME = register(Regime("sequential", plan, order=90, budgets=("finetune",), check=check))
