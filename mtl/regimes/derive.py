"""What a stage is computed from: its experiment (the parent cut to its tasks, splits, budget and seed), the
digest that says whether a finished stage may be reused on resume, and the digest of its training alone, by
which stages that train the same weights in one comparison are found and trained once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from mtl.core.config import Experiment, RegimeConfig
from mtl.core.metric_key import MetricKey
from mtl.data import feature_cache_dir
from mtl.regimes.base import Stage


def stage_experiment(exp: Experiment, stage: Stage) -> Experiment:
    """The parent experiment cut to one stage: its tasks and splits, its budget, seed, folder and run name."""
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
        seed=exp.train.seed if stage.seed is None else stage.seed,
    )
    tags = {**exp.tracking.tags, "mtl.role": "stage", "mtl.regime": stage.regime, "mtl.stage": stage.name,
            "mtl.init_from": stage.init_from or "pretrained",
            **({"mtl.seed": str(stage.seed)} if stage.seed is not None else {})}
    # A pre-training stage is not a model anyone serves: no pyfunc model for it.
    tracking = dataclasses.replace(exp.tracking, run_name=stage.name, tags=tags,
                                   log_model=exp.tracking.log_model and bool(stage.evaluate))
    return dataclasses.replace(exp, tasks=tasks, train=train, tracking=tracking, regime=RegimeConfig(), compare=[],
                               seeds=[])


def _select_best(metric: str | None, stage: Stage) -> str | None:
    """train.select_best where the stage evaluates that metric's dataset in the same role; else none."""
    if metric is None:
        return None
    try:
        key = MetricKey.parse(metric)
    except ValueError:
        return None
    if key.role is None:  # not an evaluation's metric
        return None
    evals = stage.evaluate.get(key.task, {})
    if key.dataset is not None and evals.get(key.dataset) == key.role:
        return metric
    if key.dataset is None and key.role == "eval" and "eval" in evals.values():
        return metric
    return None


def _experiment_dict(exp: Experiment) -> dict[str, Any]:
    d = exp.to_dict()
    for key in ("tracking", "launch"):
        d.pop(key)
    d["train"].pop("output_dir")
    d["train"].pop("cache_dir")
    return d


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def result_digest(stage: Stage, exp: Experiment, init_digest: str = "") -> str:
    """What a finished stage computed from (its experiment, and the stage it starts from): a changed
    experiment must not reuse its result."""
    return _hash({"stage": stage.to_dict(), "experiment": _experiment_dict(exp), "init": init_digest})


def training_digest(stage: Stage, exp: Experiment, init_digest: str = "") -> str:
    """What a stage's weights (and its chosen checkpoint) follow from, without what it evaluates: its
    experiment less the eval splits, its training datasets, budget and seed, and the stage it starts from.

    Evaluation changes no weights: it runs without dropout, draws from no generator the training uses (the
    MLM family masks eval windows with its own), and stops nothing early. What does change the result is kept:
    the tasks with a head (a head is initialised from the seeded generator), select_best (the checkpoint
    passed on)."""
    d = _experiment_dict(exp)
    for task in d["tasks"].values():
        for ds in task["datasets"]:
            ds["dev"] = ds["test"] = None
            for split in ("dev", "test"):
                (ds.get("_given") or {}).pop(split, None)
    return _hash({"train": stage.train, "budget": [stage.steps, stage.epochs], "experiment": d,
                  "init": init_digest})


def shared_stages(exp: Experiment, stages: Sequence[Stage]) -> dict[str, str]:
    """Stages of one run that train the same weights: {stage key: the key of the stage trained for it}.

    The first stage of each group in plan order is trained, and evaluates what every stage of its group
    evaluates (merged into its `evaluate`, so its results serve each), while each still reports only its own
    (task, dataset) pairs. A stage starting from a shared stage is compared by that stage's training digest,
    so a whole chain of equal stages is found."""
    digests: dict[str, str] = {}
    owner_of_digest: dict[str, Stage] = {}
    shared: dict[str, str] = {}
    for stage in stages:
        init = digests[stage.init_from] if stage.init_from else ""
        # the experiment as cut before merging: a task or dataset only one of them evaluates keeps them apart
        digest = training_digest(stage, stage_experiment(exp, stage), init)
        digests[stage.key] = digest
        owner = owner_of_digest.setdefault(digest, stage)
        if owner is not stage:
            shared[stage.key] = owner.key
            for task, roles in stage.evaluate.items():
                owner.evaluate.setdefault(task, {}).update(roles)
    return shared

