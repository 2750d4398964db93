"""Loading a checkpoint for evaluation or prediction on any device, with no hub access."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtl import checkpoint as ckpt
from mtl.checkpoint_load import load_weights
from mtl.core.config import DatasetConfig, Experiment
from mtl.core.errors import ConfigError
from mtl.data import Split, build_families, drop_featureless, load_splits, read_split
from mtl.evaluate import Result, evaluate, predict_features
from mtl.model import MultiTaskModel, build_model
from mtl.runtime import Runtime
from tasks.base import TaskFamily
from tasks.formats import resolve_dataset


@dataclass
class Loaded:
    exp: Experiment
    tokenizer: Any
    families: dict[str, TaskFamily]
    model: MultiTaskModel
    device: torch.device
    checkpoint: ckpt.Checkpoint


def load(
    path: str | Path,
    device: str | None = None,
    overrides: list[str] | None = None,
    check_files: bool = False,
    which: str = "best",
) -> Loaded:
    """A checkpoint, or a run folder's best checkpoint (train.select_best) or else its last one;
    which="last" always takes the last. Dataset paths resolve against the experiment's data_root."""
    from transformers import AutoConfig, AutoTokenizer

    from mtl.encoder import encoder_from_config
    from mtl.experiment import load_experiment

    found = ckpt.resolve(path, which)
    ckpt.check_loadable(found)  # a damaged file is named here, not met as a torch or json error below
    exp = load_experiment(found.experiment_yaml(), overrides=overrides, check_files=check_files)
    tokenizer = _from_folder(found, "tokenizer", AutoTokenizer.from_pretrained)
    families = build_families(exp, tokenizer)
    vocab = found.vocab()
    for name, fam in families.items():
        fam.load_state_dict(vocab.get(name, {}))
    config = _from_folder(found, "encoder", AutoConfig.from_pretrained)
    encoder = encoder_from_config(config)
    model = build_model(exp, families, tokenizer, encoder=encoder)
    load_weights(model, found, verify=False)  # its files were checked above; a head that does not fit is named
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    return Loaded(exp, tokenizer, families, model, dev, found)


def _from_folder(found: ckpt.Checkpoint, name: str, loader: Any) -> Any:
    """A tokenizer or encoder config saved in the checkpoint; one that does not load is named, with the reason."""
    folder = found.file(name)
    try:
        return loader(folder)
    except Exception as err:  # a cut vocabulary file, a file the tokenizer library cannot parse …
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ckpt.CheckpointError(f"{folder}: cannot be loaded ({type(err).__name__}: {first})") from None


def _rows_per_pass(loaded: Loaded, batch_size: int | None) -> None:
    """A batch size given here also bounds how many window rows the encoder sees at once (mtl/model.py)."""
    if batch_size:
        loaded.model.eval_rows = batch_size


def evaluate_checkpoint(loaded: Loaded, split: str = "dev", batch_size: int | None = None) -> list[Result]:
    _rows_per_pass(loaded, batch_size)
    splits = load_splits(loaded.exp, loaded.families, [split], fit=False, cache_dir=None)
    return evaluate(
        loaded.model, loaded.families, splits, batch_size or loaded.exp.train.eval_batch_size,
        Runtime.local(loaded.device)
    )


def predict_file(
    loaded: Loaded,
    task: str,
    input_path: Path,
    output_path: Path,
    language: str | None = None,
    fields: dict | None = None,
    fmt: str | None = None,
    batch_size: int | None = None,
) -> int:
    """Read `input_path` with the task's reader, predict, and write the family's output format."""
    if task not in loaded.families:
        raise ConfigError(f"task {task!r} is not in this checkpoint (tasks: {', '.join(loaded.families)})")
    family = loaded.families[task]
    _rows_per_pass(loaded, batch_size)
    template = loaded.exp.tasks[task].datasets[0]
    ds = DatasetConfig(
        language=language or template.language,
        name="predict",
        test=str(input_path),
        format=fmt or template.format,
        fields=fields if fields is not None else dict(template.fields),
        # the template's reader options (typed once the experiment loaded) hold for its own format only
        options=template.options if fmt in (None, template.format) else {},
    )
    if fmt not in (None, template.format):  # another format: its own reader's options, from its presets
        ds = resolve_dataset(family, ds)
    split = Split(task, ds, "test", read_split(family, ds, "test"))
    split.features = family.featurize(split.examples, "test")
    drop_featureless(split)  # e.g. UD sentences too long to parse, under skip_invalid
    examples, features = split.examples, split.features
    records = predict_features(
        loaded.model,
        family,
        task,
        split.features,
        batch_size or loaded.exp.train.eval_batch_size,
        Runtime.local(loaded.device),
        desc=f"predict {task}",
    )
    preds = family.finalize(examples, features, records)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    family.write_predictions(examples, preds, output_path)
    return len(preds)
