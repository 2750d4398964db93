"""Scoring a trained run on datasets its experiment file does not name (`mtl evaluate RUN --dataset …`).

An extra dataset is read as the task's own datasets are: the saved experiment's format, fields and
reader options (the format told from the file where the family tells it so, e.g. a classification
TSV or JSONL by its suffix), the language given, and the task's metric (a `zh*` language gets the
character-level QA metric, as in training). A language that none of the task's training datasets had
is zero-shot, as the trainer reports it (`zeroshot/` apart from `eval/`). Nothing is tracked unless
asked: `log_to_run` adds the metrics to the run's own MLflow run as `extra/<task>/<lang>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.core.config import DatasetConfig, Experiment, TaskConfig, did_you_mean
from mtl.core.errors import ConfigError, DataError
from mtl.core.typed_yaml import Context
from mtl.data import Split, drop_featureless, is_zero_shot, read_split
from mtl.evaluate import Result, evaluate, table
from mtl.inference import Loaded
from mtl.runtime import Runtime
from tasks import get_family
from tasks.formats import reader_for

SPEC_FORM = "TASK:LANG=PATH (or PATH@FORMAT, or hub:NAME[:CONFIG]@SPLIT)"
PREFIX = "extra"  # metric names extra/<task>/<lang>/<metric>
_LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ExtraSpec:
    """One `--dataset` argument, parsed: a task, a language, and a local file or a hub split."""

    text: str  # as given on the command line, for messages
    task: str
    language: str
    path: str | None = None
    format: str | None = None  # reader format override (PATH@FORMAT), as a dataset's `format:`
    hub: str | None = None  # as a dataset's `hub:`, `hub_config:`, and the split to read
    hub_config: str | None = None
    hub_split: str | None = None

    @property
    def source(self) -> str:
        if self.hub is None:
            return self.path or ""
        return f"hub:{self.hub}{':' + self.hub_config if self.hub_config else ''}@{self.hub_split}"


def _malformed(text: str, why: str) -> ConfigError:
    return ConfigError(f"--dataset {text!r}: {why}; expected {SPEC_FORM}, e.g. qa:zh-TW=data/drcd/dev.json")


def parse_spec(text: str) -> ExtraSpec:
    """`TASK:LANG=PATH`, `TASK:LANG=PATH@FORMAT` or `TASK:LANG=hub:NAME[:CONFIG]@SPLIT`.

    A hub NAME may hold a slash (`owner/name`), so the config comes after a colon, never a slash.
    An `@` in a path that exists as it is stays part of the path.
    """
    head, eq, source = text.partition("=")
    task, colon, language = head.partition(":")
    task, language, source = task.strip(), language.strip(), source.strip()
    if not eq or not colon:
        raise _malformed(text, "no TASK:LANG= before the path")
    if not task or "/" in task:
        raise _malformed(text, "no task name")
    if not _LANGUAGE.fullmatch(language):
        raise _malformed(text, f"{language!r} is not a language code (letters, digits, '-', '_', e.g. de or zh-TW)")
    if not source:
        raise _malformed(text, "no path after '='")
    if source.startswith("hub:"):
        name_config, at, split = source[len("hub:") :].rpartition("@")
        name, _, config = name_config.partition(":")
        if not at or not name or not split:
            raise _malformed(text, "a hub dataset needs its name and split")
        return ExtraSpec(text, task, language, hub=name, hub_config=config or None, hub_split=split)
    path, fmt = source, None
    if "@" in source and not Path(source).expanduser().exists():
        path, _, fmt = source.rpartition("@")
        if not path or not fmt:
            raise _malformed(text, "no path or no format around '@'")
    return ExtraSpec(text, task, language, path=path, format=fmt)


OPTION_KEYS = ("format", "fields", "options", "max_examples")  # what --dataset-options may set, as in a dataset
OPTIONS_FORM = "TASK:LANG={options: {...}, fields: {...}, format: F, max_examples: N}"
Given = dict[tuple[str, str], tuple[str, dict[str, Any]]]  # (task, language) -> (the argument, its keys)


def parse_options(texts: Sequence[str]) -> Given:
    """`--dataset-options TASK:LANG=YAML`: dataset keys for the --dataset of that task and language, e.g.
    `sst2:en={options: {label_map: {"0": negative, "1": positive}}}`."""
    import yaml

    found: Given = {}
    for text in texts:
        head, eq, raw = text.partition("=")
        task, colon, language = (x.strip() for x in head.partition(":"))
        if not eq or not colon or not task or not language:
            raise ConfigError(f"--dataset-options {text!r}: expected {OPTIONS_FORM}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--dataset-options {text!r}: not valid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--dataset-options {text!r}: expected a mapping, {OPTIONS_FORM}")
        for key in value:
            if key not in OPTION_KEYS:
                raise ConfigError(f"--dataset-options {text!r}: {key}: unknown key{did_you_mean(key, OPTION_KEYS)} "
                                  f"(allowed: {', '.join(OPTION_KEYS)})")
        if (task, language) in found:
            raise ConfigError(f"--dataset-options {text!r}: {task}:{language} is given twice")
        found[(task, language)] = (text, value)
    return found


def _template(task: TaskConfig, language: str) -> DatasetConfig:
    """The task's dataset an extra one is read like: one in the same language (a trained one first),
    else the task's first trained dataset, else its first."""
    ranked = sorted(task.datasets, key=lambda d: (d.language != language, d.train is None))
    return ranked[0]


def extra_dataset(exp: Experiment, spec: ExtraSpec, given: tuple[str, dict[str, Any]] | None = None
                  ) -> DatasetConfig:
    """The dataset config of one extra dataset, checked (task, file, format) before anything is read.

    It is named as the task's dataset in its language when there is one (so per-dataset choices such
    as the UD heads fitted for it hold), else by its language. `given`: its --dataset-options (the
    argument as typed, and the keys), which override what the task's own dataset says."""
    text, keys = given or ("", {})
    ctx = Context(f"--dataset-options {text!r}", {})
    if spec.task not in exp.tasks:
        raise ConfigError(f"--dataset {spec.text!r}: unknown task {spec.task!r} (this run's tasks: "
                          f"{', '.join(exp.tasks)})")
    task = exp.tasks[spec.task]
    family = get_family(task.family)
    template = _template(task, spec.language)
    if spec.hub is None:
        path = Path(spec.path or "").expanduser().resolve()
        if not path.is_file():
            raise DataError(f"--dataset {spec.text!r}: {'not a file' if path.exists() else 'file not found'}: {path}")
        split, fmt = str(path), keys.get("format") or spec.format or template.format
    else:
        split, fmt = spec.hub_split, None  # a hub split is read as the family reads the hub
    ds = DatasetConfig(
        language=spec.language,
        name=template.name if template.language == spec.language else spec.language,
        hub=spec.hub,
        hub_config=spec.hub_config,
        test=split,
        format=ctx.convert(fmt, str | None, ("format",)),
        fields={**template.fields, **ctx.convert(keys.get("fields") or {}, dict[str, Any], ("fields",))},
        max_examples=ctx.convert(keys.get("max_examples"), int | None, ("max_examples",)),
    )
    try:
        reader = reader_for(family, ds)
    except DataError as err:
        raise DataError(f"--dataset {spec.text!r}: {err}") from None
    # The template's reader options (typed when the experiment loaded) hold for its own reader only;
    # another reader starts from its format's presets.
    try:
        same = reader_for(family, template) is reader
    except DataError:
        same = False
    if same:
        ds = dataclasses.replace(ds, options=template.options)
    extra = ctx.convert(keys.get("options") or {}, dict[str, Any], ("options",))
    if extra and reader.Options is None:
        raise ctx.error(("options",), f"the {reader.name} reader takes no options")
    if reader.Options is None or (same and not extra):
        return ds
    base = dataclasses.asdict(template.options) if same else {}  # typed, as an assembled experiment's are
    return dataclasses.replace(ds, options=ctx.build(reader.Options, {**reader.presets, **base, **extra}, ("options",)))


def resolve(
    exp: Experiment, specs: Sequence[ExtraSpec], options: Given | None = None
) -> list[tuple[ExtraSpec, DatasetConfig]]:
    """Every spec's dataset, with its --dataset-options; one (task, language) given twice is refused, as its
    metric names would clash."""
    options = options or {}
    for key, (text, _) in options.items():
        if not any((spec.task, spec.language) == key for spec in specs):
            raise ConfigError(f"--dataset-options {text!r}: no --dataset {key[0]}:{key[1]}=… to apply it to")
    seen: dict[tuple[str, str], str] = {}
    out = []
    for spec in specs:
        key = (spec.task, spec.language)
        if key in seen:
            raise ConfigError(f"--dataset {spec.text!r}: {spec.task}:{spec.language} is given twice (also "
                              f"{seen[key]!r}); its metrics {PREFIX}/{spec.task}/{spec.language}/… would clash")
        seen[key] = spec.text
        out.append((spec, extra_dataset(exp, spec, options.get(key))))
    return out


def evaluate_extra(
    loaded: Loaded, datasets: Sequence[tuple[ExtraSpec, DatasetConfig]], batch_size: int | None = None
) -> list[Result]:
    """Read, predict and score each extra dataset with its task's family; the results name their source."""
    splits = []
    for spec, ds in datasets:
        family = loaded.families[spec.task]
        examples = read_split(family, ds, "test")
        try:
            family.check(examples, ds, "test")  # a label the trained vocabulary lacks: the family's own error
        except DataError as err:
            if not hasattr(ds.options, "label_map"):
                raise
            example = f"'{spec.task}:{spec.language}={{options: {{label_map: {{FILE_LABEL: LABEL}}}}}}'"
            raise DataError(f"{err}; map the file's labels to the trained ones with --dataset-options {example}"
                            ) from None
        zero = is_zero_shot(loaded.exp, spec.task, ds, "test")
        split = Split(spec.task, ds, "test", examples, zero_shot=zero)
        split.features = family.featurize(examples, "test")
        if not split.features:
            raise DataError(f"{spec.source}: {spec.task} ({ds.language}) produced no features")
        drop_featureless(split)
        splits.append(split)
    results = evaluate(
        loaded.model, loaded.families, splits, batch_size or loaded.exp.train.eval_batch_size,
        Runtime.local(loaded.device)
    )
    for (spec, _), r in zip(datasets, results, strict=True):
        # Scored under the dataset's own name; shown by where it came from.
        r.split = r.split.with_dataset(dataclasses.replace(r.split.dataset, name=spec.source))
    return results


def metric_names(results: Sequence[Result]) -> dict[str, float]:
    """extra/<task>/<lang>/<metric> for every extra result."""
    return {f"{PREFIX}/{r.split.task}/{r.split.dataset.language}/{k}": v for r in results for k, v in r.metrics.items()}


def report(results: Sequence[Result]) -> str:
    """The usual metrics table of the extra datasets, under a line that says what the roles mean."""
    return ("Extra datasets (role eval: a language the task trained on; zero-shot: one none of its training "
            f"datasets had):\n{table(results)}")


@dataclass(frozen=True)
class RunTarget:
    """The MLflow run a checkpoint was trained in, found and reachable."""

    run_id: str
    uri: str
    step: int  # the checkpoint's step: the extra metrics are logged at it


def run_target(loaded: Loaded, uri: str | None = None) -> RunTarget:
    """The checkpoint's MLflow run (trainer_state.json) in its store: `uri`, else the experiment's
    tracking.uri, MLFLOW_TRACKING_URI or mlruns/. Checked before anything is scored; a run or store
    that cannot be found is an error, never a skip."""
    from mtl.tracking import default_uri

    where = loaded.checkpoint.path / "trainer_state.json"
    run_id = loaded.checkpoint.state().get("mlflow_run_id")
    if not run_id:
        raise ConfigError(f"{where}: no MLflow run id (the run was trained without tracking); --log has no run "
                          f"to log into")
    uri = uri or loaded.exp.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ConfigError(f"tracking store {uri} does not exist; give the run's store with --tracking-uri")
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception as err:  # not found, or a server that does not answer
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"MLflow run {run_id} (from {where}) not found at {uri} ({first}); give the run's store "
                          f"with --tracking-uri") from None
    return RunTarget(run_id, uri, loaded.checkpoint.step)


def log_to_run(target: RunTarget, results: Sequence[Result]) -> int:
    """Add the extra metrics and one tag per dataset (its role and source) to the run; returns how many
    metric values were logged."""
    import mlflow

    from mtl.tracking import send_metrics

    client = mlflow.MlflowClient(tracking_uri=target.uri)
    stamp = int(time.time() * 1000)
    records: list[dict[str, Any]] = [
        {"run_id": target.run_id, "key": k, "value": float(v), "timestamp": stamp, "step": target.step}
        for k, v in metric_names(results).items()
    ]
    send_metrics(client, records)
    for r in results:
        role = "zero-shot" if r.split.zero_shot else "in-language"
        client.set_tag(target.run_id, f"mtl.extra.{r.split.task}.{r.split.dataset.language}",
                       f"{role}: {r.split.dataset.name}"[:5000])
    return len(records)
