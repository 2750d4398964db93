"""The experiment schema: what an experiment file may say, as plain frozen dataclasses.

Data only, at the bottom of the layers: no torch, no family, no checker (the error types are mtl/core/errors.py).
Reading a file with its lines and checking it against these types is mtl/core/typed_yaml.py; raw data becomes an
Experiment in mtl/core/experiment_parse.py (after the `--set` overrides of mtl/core/overrides.py), and mtl/experiment.py
assembles it with its families' checks into a new Experiment, the one that runs.

Every type is frozen: a parsed experiment and an assembled one are values that nothing edits once built, so
whoever holds one (a stage, a checkpoint, a family) sees what was checked. A changed copy is made with
`dataclasses.replace`, as mtl/regimes/derive.py cuts a stage's experiment from its parent's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from mtl.core.sampling_config import SamplingConfig


def did_you_mean(word: Any, choices: Any) -> str:
    """' (did you mean X?)' for the closest of `choices` to a mistyped `word`, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- schema

NOT_A_KEY = {"yaml": False}  # field metadata: filled in code, never written in an experiment file


@dataclass(frozen=True)
class EncoderConfig:
    """The shared encoder and how each task reads its layers."""

    name: str = "bert-base-multilingual-cased"  # hub name, local path, or package:<pkg>/<dir>
    tokenizer: str | None = None  # defaults to `name`
    from_config: dict[str, Any] | None = None  # build a randomly initialised encoder (tests, tiny runs)
    revision: str | None = None
    max_length: int = 128
    # how heads read the layers: "scalar" (a learned softmax mix of all layers, UDify), "last" (the top
    # layer only), or "auto": each family's measured default (last for QA, classification and NER,
    # scalar for UD); a task's own `mix` overrides this
    mix: Literal["auto", "scalar", "last"] = "auto"
    layer_dropout: float = 0.1  # scalar mix only: chance of dropping each layer from the mix in a step
    dropout: float | None = None  # on the mixed representation before each head; None: the family's default


@dataclass(frozen=True)
class DatasetConfig:
    """Where one task's examples come from, in one language."""

    language: str
    name: str = ""  # defaults to the language; used in metric names task/name/metric
    hub: str | None = None  # hub dataset name, e.g. "glue" or "universal_dependencies"
    hub_config: str | None = None  # e.g. "sst2" or "en_ewt"
    train: str | None = None  # local file, or hub split name when `hub` is set
    dev: str | None = None
    test: str | None = None
    format: str | None = None  # reader format (tasks/formats.py); default: the family's (or the file suffix)
    fields: dict[str, Any] = field(default_factory=dict)  # field → column (name or index) for the reader
    # reader options: as written, a mapping (checked as one); in an assembled experiment, the reader's typed
    # options (tasks/formats.py), or the mapping untouched for a reader that takes none
    options: dict[str, Any] = field(default_factory=dict)
    max_examples: int | None = None  # keep the first N examples of each split (smoke runs)
    # Plain text for masked LM: stream the training file (read in blocks while training) instead of storing
    # it whole; default: stream files of 64 MiB and more. `size`: its training windows, for the sampler's
    # weights and for epochs (default: estimated from the file's first block).
    streaming: bool | None = None
    size: int | None = None
    # Local files standing in for a hub dataset: used instead of `hub` once `data_root` is set,
    # so one experiment file runs from the hub or, with --set data_root=DIR, from local copies.
    local: dict[str, Any] | None = None
    _given: dict[str, str] = field(default_factory=dict, repr=False)  # paths as written, before resolving

    def split(self, role: str) -> str | None:
        return {"train": self.train, "dev": self.dev, "test": self.test}[role]


@dataclass(frozen=True)
class TaskConfig:
    """One task: a family, its options, and its datasets."""

    family: str
    datasets: list[DatasetConfig]
    # As written, a mapping (checked as one); in an assembled experiment (mtl/experiment.py), the family's Options
    options: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # multiplies the sampler's weight for every group of this task
    mix: Literal["scalar", "last"] | None = None  # how this task's heads read the layers (default: encoder.mix)
    name: str = field(default="", metadata=NOT_A_KEY)  # filled from the mapping key


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and evaluation schedule."""

    seed: int = 42
    steps: int | None = None  # optimiser steps (wins over epochs); default: `epochs` passes over all groups
    epochs: float | None = None  # alternative to steps: passes over all training examples (> 0)
    encoder_lr: float = 2e-5
    head_lr: float = 1e-4
    # scalar-mix weights learn in their own group: at a head's learning rate Adam moves a mix logit by
    # about lr per step, so a few hundred steps would leave the mix where it started (uniform)
    mix_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: float = 0.1  # a fraction (< 1) of steps, or a number of steps (≥ 1)
    schedule: Literal["linear", "constant"] = "linear"
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: int | None = None  # steps; default: only at the end
    eval_batch_size: int = 64
    eval_split: Literal["dev", "test"] = "dev"
    checkpoint_every: int | None = None  # steps; default: only at the end
    keep_checkpoints: int = 2
    # A metric of the evaluation (eval/<task>/<dataset>/<metric>, eval/<task>/mean_<metric>): the best
    # evaluated checkpoint is kept in <output_dir>/best beside the last; evaluate and predict use it.
    select_best: str | None = None
    select_mode: Literal["max", "min"] = "max"  # every metric here is a percentage: higher is better
    # select_best on a zeroshot/ metric chooses the checkpoint with the target language's labels: an oracle,
    # not zero-shot transfer (Keung et al. 2020). Refused unless said here; the run is then labelled oracle.
    select_oracle: bool = False
    output_dir: str = "runs/{name}"
    log_every: int = 10
    cache_dir: str | None = None  # feature store; default <output_dir>/../.cache/features
    # a step whose loss or gradient norm is not finite: stop the run there (nothing of that step is saved or
    # logged), or skip it (no optimiser step; counted and logged as train/skipped_steps)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # processes that tokenise a split being stored (chunks of examples in parallel; same features either way)
    tokenize_workers: int = 1
    # GPU: deterministic cuDNN/cuBLAS kernels (slower); CPU runs are already bit-reproducible
    deterministic: bool = False
    # every N steps: cosine between the groups' gradients on the shared encoder, one extra batch per group
    # (gradcos/<a>/<b> metrics, a heatmap at the end; training itself is unchanged); null: off
    grad_conflict_every: int | None = None

    # keys once accepted that do nothing now: refused with this reason rather than ignored (mtl/core/typed_yaml.py)
    REFUSED_KEYS: ClassVar[dict[str, str]] = {
        "num_workers": "batches are collated in the training process from features tokenised once and cached, "
        "so there are no loader workers to set; remove the key",
    }


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking; a local SQLite store under mlruns/ unless told otherwise."""

    enabled: bool = True
    uri: str | None = None  # default: sqlite:///mlruns/mlflow.db
    experiment: str | None = None  # default: the experiment name
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    log_predictions: bool = True
    log_model: bool = True  # the final model as one MLflow pyfunc model per task
    log_checkpoint: bool = False  # the whole checkpoint folder as an artifact (large)
    log_plots: bool = True  # sampling rates and learning curves as PNG artifacts


@dataclass(frozen=True)
class LaunchConfig:
    """How the job is started; the training code is the same for each profile."""

    profile: Literal["single", "torchrun", "deepspeed"] = "single"
    nproc_per_node: int = 1
    cpu: bool = False  # force CPU even where a GPU exists
    # profile deepspeed only: ZeRO stage (default 2, or the stage of deepspeed_config), CPU offload of the
    # optimizer states (and, with stage 3, of the parameters), and a DeepSpeed config (a JSON file or a
    # mapping) merged over the one generated from the experiment; a file is read when the experiment is
    # loaded, so its content travels with the experiment (checkpoints, MLflow)
    zero_stage: Literal[1, 2, 3] | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed_config: str | dict[str, Any] | None = None

    DEEPSPEED_ONLY = ("zero_stage", "offload_optimizer", "offload_params", "deepspeed_config")
    REFUSED_KEYS: ClassVar[dict[str, str]] = {  # as TrainConfig.REFUSED_KEYS
        "nnodes": "multi-node runs start torchrun on every node from that node's command line, since the node "
        "rank differs per node: mtl train EXP --nnodes N --node-rank R --master-addr HOST, or on SLURM the job "
        "script of mtl launch slurm EXP --nodes N (see README); remove the key",
    }


@dataclass(frozen=True)
class RegimeConfig:
    """Which stages an experiment trains (mtl/regimes/ plans them) and each stage's budget.

    `name` is any registered regime (one module of mtl/regimes/ each, with the keys it reads): the schema
    knows none of them, so mtl/regimes/checks.py checks the name and the keys when the experiment is assembled.

    A pre-training stage is every stage that trains several tasks (the multi-task stage of multi_task and of
    the *_finetune / *_pretrain / leave_one_out regimes); a fine-tuning stage trains one task (single, every
    fine-tuning stage, leave_one_language_out and transfer). A budget not given is train.steps / train.epochs.
    """

    name: str = "multi_task"
    pretrain_steps: int | None = None
    pretrain_epochs: float | None = None
    finetune_steps: int | None = None
    finetune_epochs: float | None = None
    targets: list[str] | None = None  # leave_one_out: the target tasks (default: every supervised task)
    languages_of: str | None = None  # leave_one_language_out, transfer: the task (default: the only task)
    languages: list[str] | None = None  # leave_one_language_out: target languages (default: every training one)
    # transfer: source language sets, e.g. [en, [en, fr]] (default: every training language alone)
    sources: list[str | list[str]] | None = None

    def is_default(self) -> bool:
        return self == RegimeConfig()


@dataclass(frozen=True)
class Experiment:
    """A whole experiment file."""

    name: str
    tasks: dict[str, TaskConfig]
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)  # a bare name is read as {name: …}
    compare: list[str] = field(default_factory=list)  # run several regimes and compare them
    # train the regime (or each compared regime) once per seed (train.seed each time): every table cell is then
    # the mean ± sd over seeds, and a difference to the baseline row is marked only when it exceeds the noise
    seeds: list[int] = field(default_factory=list)
    data_root: str | None = None  # relative dataset paths resolve against this (default: the file's folder)
    source: str = field(default="", metadata=NOT_A_KEY)  # the file it came from
    overrides: list[str] = field(default_factory=list, metadata=NOT_A_KEY)  # its --set KEY=VALUE arguments
    _base_dir: str = ""  # where relative paths resolve when data_root is not given

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        d.pop("overrides")
        d.pop("_base_dir")
        for alias in ("temperature", "task_temperature"):
            d["sampling"].pop(alias)  # resolved into smoothing / task_smoothing
        if self.regime.is_default():  # a plain multi-task run dumps and logs as it always has
            d.pop("regime")
        if not self.compare:
            d.pop("compare")
        if not self.seeds:
            d.pop("seeds")
        for task in d["tasks"].values():
            task.pop("name")
            for ds in task["datasets"]:
                given = ds.pop("_given")
                if self.data_root is not None:  # relative paths travel; data_root says where they live
                    ds.update(given)
        return d


def dump_experiment(exp: Experiment) -> str:
    return yaml.safe_dump(exp.to_dict(), sort_keys=False, allow_unicode=True)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out
