"""Checks across an experiment's sections, made once its datasets are settled: values of the right type that
still make no sense together are refused here, with their line.

Types, choices and unknown keys are checked earlier (mtl/core/typed_yaml.py); the launch section's rules are in
mtl/core/launch_rules.py and the regime's in mtl/regimes/checks.py. `selection_rule` lives beside the select_best
check, since both read the same metric name.
"""

from __future__ import annotations

import math
from typing import Any

from mtl.core.config import Experiment
from mtl.core.launch_rules import check_launch
from mtl.core.metric_key import MEAN, MetricKey
from mtl.core.typed_yaml import Context


def check_experiment(exp: Experiment, ctx: Context) -> None:
    """Checks across sections, made once the datasets are settled: values of the right type that still
    make no sense are refused here, with their line."""
    s, t, e = exp.sampling, exp.train, exp.encoder
    at_least_1 = [
        (("sampling", "batch_size"), s.batch_size),
        (("sampling", "max_tokens"), s.max_tokens),
        (("sampling", "length_window"), s.length_window),
        (("sampling", "cap"), s.cap),
        (("encoder", "max_length"), e.max_length),
        (("train", "grad_accum"), t.grad_accum),
        (("train", "steps"), t.steps),
        (("train", "eval_every"), t.eval_every),
        (("train", "eval_batch_size"), t.eval_batch_size),
        (("train", "checkpoint_every"), t.checkpoint_every),
        (("train", "keep_checkpoints"), t.keep_checkpoints),
        (("train", "log_every"), t.log_every),
        (("train", "tokenize_workers"), t.tokenize_workers),
        (("train", "grad_conflict_every"), t.grad_conflict_every),
        (("launch", "nproc_per_node"), exp.launch.nproc_per_node),
    ]
    for path, value in at_least_1:
        if value is not None and value < 1:
            raise ctx.error(path, f"must be at least 1, got {value}")
    if e.max_length < 8:
        raise ctx.error(("encoder", "max_length"), f"must be at least 8 tokens (room for special tokens), got "
                        f"{e.max_length}")
    if s.strategy == "capped" and not s.cap:
        raise ctx.error(("sampling", "cap"), "the capped strategy needs cap: K")
    for key, message in s.exponent_problems():
        raise ctx.error(("sampling", key), message)
    groups = sum(bool(ds.train) for task in exp.tasks.values() for ds in task.datasets)
    if s.strategy == "adaptive" and s.floor is not None and s.floor * groups >= 1:
        raise ctx.error(("sampling", "floor"), f"{s.floor:g} × {groups} training groups = {s.floor * groups:g} leaves "
                        f"no probability to adapt; give less than {1 / groups:.4g}")
    for path, value in ((("encoder", "layer_dropout"), e.layer_dropout), (("encoder", "dropout"), e.dropout)):
        if value is not None and not 0.0 <= value < 1.0:
            raise ctx.error(path, f"must be in [0, 1), got {value}")
    if t.epochs is not None and not (math.isfinite(t.epochs) and t.epochs > 0):
        raise ctx.error(("train", "epochs"), f"must be a number of passes > 0, got {t.epochs}")
    for name in ("encoder_lr", "head_lr", "mix_lr", "weight_decay", "warmup", "max_grad_norm"):
        value = getattr(t, name)
        if not (math.isfinite(value) and value >= 0):
            raise ctx.error(("train", name), f"must be a number ≥ 0, got {value}")
    for task_name, task in exp.tasks.items():
        tpath = ("tasks", task_name)
        if not (math.isfinite(task.weight) and task.weight >= 0):
            raise ctx.error(tpath + ("weight",), f"must be a number ≥ 0, got {task.weight}")
        for i, ds in enumerate(task.datasets):
            dpath = tpath + ("datasets", str(i))
            if ds.max_examples is not None and ds.max_examples < 1:
                raise ctx.error(dpath + ("max_examples",), f"must be at least 1, got {ds.max_examples}")
            if ds.size is not None and ds.size < 1:
                raise ctx.error(dpath + ("size",), f"must be at least 1 (training windows), got {ds.size}")
            if ds.streaming is False and ds.size is not None:
                raise ctx.error(dpath + ("size",), "applies to a streamed dataset only (streaming: false here)")
            if ds.streaming and ds.max_examples is not None:
                raise ctx.error(dpath + ("max_examples",), "does not apply to a streamed dataset (read in blocks, "
                                "not as a list of examples); use size: or set streaming: false")
            local_fields = (ds.local or {}).get("fields")
            if isinstance(local_fields, dict):
                _check_fields(local_fields, dpath + ("local", "fields"), ctx)
            _check_fields(ds.fields, dpath + ("fields",), ctx)
    if t.select_best is not None:
        key = _select_key(t.select_best)
        task = exp.tasks.get(key.task) if key is not None else None
        names = [ds.name for ds in task.datasets] if task is not None else []
        shape = key is not None and (key.dataset in names if key.dataset is not None else key.metric.startswith(MEAN))
        if key is None or key.role is None or task is None or not shape:
            raise ctx.error(("train", "select_best"), f"{t.select_best!r} is not an evaluation metric: write "
                            f"eval/<task>/<dataset>/<metric> or eval/<task>/mean_<metric> (tasks: "
                            f"{', '.join(exp.tasks)}{'; datasets: ' + ', '.join(names) if names else ''})")
        oracle = key.zero_shot
        if oracle and not t.select_oracle:
            raise ctx.error(("train", "select_best"), f"{t.select_best!r} chooses the checkpoint with the labels of a "
                            "language the task does not train on: an oracle, not zero-shot transfer; select on an "
                            "eval/ metric of a training language (e.g. English dev), or set train.select_oracle: true "
                            "to choose so on purpose (the results are then labelled oracle)")
        if t.select_oracle and not oracle:
            raise ctx.error(("train", "select_oracle"), f"applies to a zeroshot/ select_best metric, not "
                            f"{t.select_best!r}")
    elif t.select_oracle:
        raise ctx.error(("train", "select_oracle"), "applies with train.select_best only")
    if not any(ds.train for task in exp.tasks.values() for ds in task.datasets):
        raise ctx.error(("tasks",), "no dataset has a train split; nothing to train on")
    if t.grad_conflict_every is not None and sum(bool(ds.train) for k in exp.tasks.values() for ds in k.datasets) < 2:
        raise ctx.error(("train", "grad_conflict_every"), "compares the gradients of two or more training groups; "
                        "this experiment trains one")
    if t.grad_conflict_every is not None and not exp.tracking.enabled:
        raise ctx.error(("train", "grad_conflict_every"), "its cosines go to MLflow, and tracking.enabled is false")
    check_launch(exp, ctx)  # the regime keys: mtl/regimes/checks.py, which knows the regimes


def selection_rule(exp: Experiment) -> str | None:
    """On what the best checkpoint is chosen, in words for tables and logs: the metric, the split, and whether
    its languages are ones the task trains on (honest) or a zero-shot one (an oracle)."""
    metric = exp.train.select_best
    if metric is None:
        return None
    key = _select_key(metric)
    task = exp.tasks.get(key.task) if key is not None else None
    if key is None or task is None:
        return metric
    if key.dataset is not None:
        langs = [ds.language for ds in task.datasets if ds.name == key.dataset]
    else:
        langs = sorted({ds.language for ds in task.datasets if ds.train})
    where = f"{exp.train.eval_split} of {', '.join(langs) or key.dataset or key.metric}"
    if key.zero_shot:
        return f"oracle: {metric} ({where}, a language the task does not train on)"
    return f"{metric} ({where}, trained languages only)"


def _select_key(metric: str) -> MetricKey | None:
    """The metric select_best names; None where it names none (the check says what to write instead)."""
    try:
        return MetricKey.parse(metric)
    except ValueError:
        return None


def _check_fields(fields: dict[str, Any], path: tuple[str, ...], ctx: Context) -> None:
    """A field maps to a column name (text) or a 0-based column index."""
    for key, col in fields.items():
        if isinstance(col, bool) or not isinstance(col, (str, int)) or (isinstance(col, int) and col < 0):
            raise ctx.error(path + (str(key),), f"{col!r} is neither a column name nor a column index ≥ 0")
