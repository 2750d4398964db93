"""Experiment files: YAML validated at the door into typed objects.

Every error names the file, the line and the key path, so a typo in a 200-line
experiment file is found in seconds rather than after an hour of training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from sampling.config import SamplingConfig


class ConfigError(ValueError):
    """A problem in an experiment file, already phrased for the user."""


def did_you_mean(word: Any, choices: Any) -> str:
    """' (did you mean X?)' for the closest of `choices` to a mistyped `word`, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def error_at(
    source: str | None, path: tuple[str, ...], message: str, overrides: list[str] | None = None
) -> ConfigError:
    """A ConfigError for a key of an experiment file found after validation, with the key's line when the
    file is still there (as `Context.error` gives during validation), or the `--set` argument that gave it."""
    file = Path(source) if source else None
    lines: dict[tuple[str, ...], int] = {}
    if file is not None and file.is_file():
        try:
            lines = load_yaml(file)[1]
        except ConfigError:
            pass
    return Context(str(source or ""), lines, overrides).error(path, message)


class TrainingError(RuntimeError):
    """A run that cannot go on (its loss or gradients are no longer numbers, say), phrased for the user."""


# --------------------------------------------------------------------------- schema

NOT_A_KEY = {"yaml": False}  # field metadata: filled in code, never written in an experiment file


@dataclass
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


@dataclass
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
    # reader options: a mapping as written; the reader's typed options once the experiment is assembled
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


@dataclass
class TaskConfig:
    """One task: a family, its options, and its datasets."""

    family: str
    datasets: list[DatasetConfig]
    # As written: a mapping. Once the experiment is assembled (mtl/experiment.py): the family's typed Options.
    options: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0  # multiplies the sampler's weight for every group of this task
    mix: Literal["scalar", "last"] | None = None  # how this task's heads read the layers (default: encoder.mix)
    name: str = field(default="", metadata=NOT_A_KEY)  # filled from the mapping key


@dataclass
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


@dataclass
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


@dataclass
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


@dataclass
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


# Keys that were once accepted but do nothing: refused with a reason rather than ignored.
REFUSED_KEYS: dict[tuple[str, str], str] = {
    ("TrainConfig", "num_workers"): "batches are collated in the training process from features tokenised once "
    "and cached, so there are no loader workers to set; remove the key",
    ("LaunchConfig", "nnodes"): "multi-node runs start torchrun on every node from that node's command line, "
    "since the node rank differs per node: mtl train EXP --nnodes N --node-rank R --master-addr HOST, or on SLURM "
    "the job script of mtl launch slurm EXP --nodes N (see README); remove the key",
}


@dataclass
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
        for task in d["tasks"].values():
            task.pop("name")
            for ds in task["datasets"]:
                given = ds.pop("_given")
                if self.data_root is not None:  # relative paths travel; data_root says where they live
                    ds.update(given)
        return d


# --------------------------------------------------------------------------- YAML with line numbers


def _compose_lines(
    node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int], source: str = "<yaml>"
) -> None:
    """Record the line of every key path; a key written twice in one mapping is an error, since
    YAML would keep the last one silently (a task block pasted twice, a lost `- language:` line)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                where = ".".join((*path, key))
                raise ConfigError(
                    f"{source}:{line}: {where}: key {key!r} given twice in one mapping (lines {seen[key]} and "
                    f"{line}); YAML would keep only the last one"
                )
            seen[key] = line
            out[path + (key,)] = line
            _compose_lines(value_node, path + (key,), out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (str(i),)] = item.start_mark.line + 1
            _compose_lines(item, path + (str(i),), out, source)


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a byte-order mark is accepted and dropped); bad bytes are named by line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def load_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    text = _decode(path, raw)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _compose_lines(node, (), lines, str(path))
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (e.g. NUL)
        line = text[: err.position].count("\n") + 1
        raise ConfigError(f"{path}:{line}: not valid YAML: character {err.character!r} is not allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be an experiment file") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


# --------------------------------------------------------------------------- validation


class Context:
    """Where an experiment came from, so that every error names its file, line and key path."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int], overrides: list[str] | None = None):
        self.source = source
        self.lines = lines
        # key path -> the `--set KEY=VALUE` argument that gave it: an error there names what was typed
        self.overrides = {tuple(a.split("=", 1)[0].strip().split(".")): a for a in overrides or [] if "=" in a}

    def build(self, cls: type, data: Any, path: tuple[str, ...]) -> Any:
        """Check a mapping found at `path` against a dataclass (unknown keys, types, choices)."""
        return _build(cls, data, path, self)

    def convert(self, value: Any, tp: Any, path: tuple[str, ...]) -> Any:
        """Check one value found at `path` against a type hint."""
        return _convert(value, tp, path, self)

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        key = ".".join(path) or "<top level>"
        given = [p for p in self.overrides if path[: len(p)] == p]
        if given:  # the value came from the command line: point there, not at a line of the file
            return ConfigError(f"--set {self.overrides[max(given, key=len)]}: {key}: {message}")
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {key}: {message}" if where else f"{key}: {message}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: tuple[str, ...], ctx: Context) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, ctx)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ctx.error(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ctx.error(path, f"must be one of {_type_name(tp)}, got {value!r}{did_you_mean(value, get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ctx.error(path, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, path + (str(i),), ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): _convert(v, val_tp, path + (str(k),), ctx) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, ctx)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "2e-5" as a string; accept any number written as text.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ctx.error(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ctx.error(path, f"expected a string, got {value!r}")
        return str(value)
    raise ctx.error(path, f"unsupported type {tp}")


def _build(cls: type, data: Any, path: tuple[str, ...], ctx: Context) -> Any:
    if not isinstance(data, dict):
        raise ctx.error(path, f"expected a mapping of {cls.__name__} settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True) and not f.name.startswith("_")}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        refused = REFUSED_KEYS.get((cls.__name__, key))
        if refused is not None:
            raise ctx.error(path + (key,), refused)
        if key not in known:
            options = ", ".join(sorted(known))
            raise ctx.error(path + (key,), f"unknown key{did_you_mean(key, known)} (allowed: {options})")
        kwargs[key] = _convert(value, hints[key], path + (key,), ctx)
    for name, f in known.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ctx.error(path, f"missing required key '{name}'")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as err:  # checks in a dataclass's __post_init__
        raise ctx.error(path, str(err)) from None


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    """Check `data` against a dataclass (unknown keys, types, choices) outside a YAML file."""
    return _build(cls, data, (), Context(where, {}))


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply a command-line override such as ``train.encoder_lr=3e-5`` to raw YAML data."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.encoder_lr=3e-5")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        why = getattr(err, "problem", None) or err
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({why})") from None
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: no list item {part!r}") from None
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: no list item {last!r}") from None
    else:
        node[last] = value


def _regime_shorthand(data: dict[str, Any]) -> None:
    """`regime: single` (or `--set regime=single`) stands for `regime: {name: single}`."""
    if isinstance(data.get("regime"), str):
        data["regime"] = {"name": data["regime"]}


def resolve_path(rel: str, exp: Experiment) -> Path:
    """Resolve a dataset path against the experiment's data_root."""
    p = Path(rel).expanduser()
    return p if p.is_absolute() else (Path(exp.data_root or exp._base_dir or ".") / p).resolve()


def parse_experiment(
    data: Any, ctx: Context, overrides: list[str] | None, base_dir: Path | None, check_files: bool
) -> Experiment:
    """Check raw experiment data from `ctx.source` against the schema (no family is consulted); relative
    paths will resolve against `base_dir` (default: the source's folder). mtl/experiment.py assembles the
    result with its families' checks."""
    if not isinstance(data, dict):
        raise ctx.error((), "an experiment file must be a mapping with at least `name` and `tasks`")
    data = copy.deepcopy(data)
    _regime_shorthand(data)
    for assignment in overrides or []:
        set_override(data, assignment)
        _regime_shorthand(data)
    tasks_raw = data.get("tasks")
    if isinstance(tasks_raw, dict):
        for task_name in tasks_raw:
            if "/" in str(task_name):
                raise ctx.error(("tasks", str(task_name)), "task names may not contain '/'")
    exp = _build(Experiment, data, (), ctx)
    exp.source = ctx.source
    exp.overrides = list(overrides or [])
    base = base_dir or Path(ctx.source).parent
    if not exp.tasks:
        raise ctx.error(("tasks",), "at least one task is needed")
    for task_name, task in exp.tasks.items():
        task.name = task_name
    data_root_given = exp.data_root is not None
    root = Path(exp.data_root).expanduser() if data_root_given else base
    if not root.is_absolute():
        # A relative data_root is read from the file's folder, else from the working directory
        # (the usual case for `--set data_root=../shared/data` typed on the command line).
        from_file = (base / root).resolve()
        root = from_file if from_file.is_dir() else (Path.cwd() / root).resolve()
    if check_files and not root.is_dir():
        raise ctx.error(("data_root",), f"folder not found: {root}")
    exp.data_root = str(root) if data_root_given else None
    exp._base_dir = str(root)
    return exp


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
        parts = t.select_best.split("/")
        known = parts[1] in exp.tasks if len(parts) > 1 else False
        names = [ds.name for ds in exp.tasks[parts[1]].datasets] if known else []
        shape = (len(parts) == 4 and parts[2] in names) or (len(parts) == 3 and parts[2].startswith("mean_"))
        if parts[0] not in ("eval", "zeroshot") or not known or not shape:
            raise ctx.error(("train", "select_best"), f"{t.select_best!r} is not an evaluation metric: write "
                            f"eval/<task>/<dataset>/<metric> or eval/<task>/mean_<metric> (tasks: "
                            f"{', '.join(exp.tasks)}{'; datasets: ' + ', '.join(names) if names else ''})")
        oracle = parts[0] == "zeroshot"
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
    _check_launch(exp, ctx)  # the regime keys: mtl/regimes/checks.py, which knows the regimes


def selection_rule(exp: Experiment) -> str | None:
    """On what the best checkpoint is chosen, in words for tables and logs: the metric, the split, and whether
    its languages are ones the task trains on (honest) or a zero-shot one (an oracle)."""
    metric = exp.train.select_best
    if metric is None:
        return None
    parts = metric.split("/")
    task = exp.tasks.get(parts[1]) if len(parts) > 1 else None
    if task is None:
        return metric
    if len(parts) == 4:
        langs = [ds.language for ds in task.datasets if ds.name == parts[2]]
    else:
        langs = sorted({ds.language for ds in task.datasets if ds.train})
    where = f"{exp.train.eval_split} of {', '.join(langs) or parts[2]}"
    if parts[0] == "zeroshot":
        return f"oracle: {metric} ({where}, a language the task does not train on)"
    return f"{metric} ({where}, trained languages only)"


def _check_launch(exp: Experiment, ctx: Context) -> None:
    """The DeepSpeed keys: only under profile deepspeed, offload of parameters only with ZeRO-3, and a
    deepspeed_config file read here (a JSON object), so the experiment carries its content."""
    la = exp.launch
    if la.profile != "deepspeed":
        for key in LaunchConfig.DEEPSPEED_ONLY:
            if getattr(la, key) not in (None, False):
                raise ctx.error(("launch", key), f"used only by launch.profile: deepspeed (the profile is "
                                f"{la.profile!r}); set the profile or remove the key")
        return
    if isinstance(la.zero_stage, bool):
        raise ctx.error(("launch", "zero_stage"), f"must be one of 1 | 2 | 3, got {la.zero_stage!r}")
    if exp.train.grad_conflict_every is not None:
        raise ctx.error(("train", "grad_conflict_every"), "not built under the deepspeed profile (ZeRO partitions "
                        "gradients or parameters and reduces them in its own backward); use single or torchrun")
    if exp.train.on_nonfinite == "skip" and la.profile == "deepspeed":
        raise ctx.error(("train", "on_nonfinite"), "skip is not built under the deepspeed profile (DeepSpeed steps "
                        "before the gradient norm is known); use stop, or fp16's own loss scaling")
    if la.offload_params and la.zero_stage != 3:
        raise ctx.error(("launch", "offload_params"), "parameters are partitioned, and so can be offloaded, only "
                        f"by ZeRO stage 3: set launch.zero_stage: 3 (it is {la.zero_stage or 'not set'})")
    if la.offload_optimizer and exp.train.grad_accum > 1 and len(exp.tasks) > 1:
        raise ctx.error(("launch", "offload_optimizer"), "with train.grad_accum > 1 and several tasks, DeepSpeed's "
                        "optimizer offload carries gradients of a head that is idle in part of a step over from "
                        "earlier steps (measured with DeepSpeed 0.19); use train.grad_accum: 1 or no offload")
    if isinstance(la.deepspeed_config, str):
        la.deepspeed_config = _read_json_object(la.deepspeed_config, exp, ctx)


def _read_json_object(rel: str, exp: Experiment, ctx: Context) -> dict[str, Any]:
    """A JSON file named in the experiment: relative to the experiment file's folder, else the working directory."""
    import json

    path = Path(rel).expanduser()
    if not path.is_absolute():
        beside = Path(exp.source).parent / path if exp.source and not exp.source.startswith("<") else None
        path = beside if beside is not None and beside.is_file() else (Path.cwd() / path)
    where = ("launch", "deepspeed_config")
    if not path.is_file():
        raise ctx.error(where, f"file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ctx.error(where, f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (OSError, UnicodeError) as err:
        raise ctx.error(where, f"{path}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ctx.error(where, f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    return data


def _check_fields(fields: dict[str, Any], path: tuple[str, ...], ctx: Context) -> None:
    """A field maps to a column name (text) or a 0-based column index."""
    for key, col in fields.items():
        if isinstance(col, bool) or not isinstance(col, (str, int)) or (isinstance(col, int) and col < 0):
            raise ctx.error(path + (str(key),), f"{col!r} is neither a column name nor a column index ≥ 0")


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
