"""A direct family-level training loop for head tests (the full trainer is tested on its own), and a
trainer run resumed from a copy of one checkpoint (as a run killed after that checkpoint resumes)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtl.core.config import DatasetConfig, EncoderConfig, TaskConfig
from mtl.encoder import encoder_layers, load_encoder, load_tokenizer, make_mix_factory
from mtl.model import MultiTaskModel
from tasks import get_family
from tasks.base import EncoderInfo, TaskFamily
from tasks.formats import resolve_dataset


def build(family: str, encoder: dict, options: dict | None = None, datasets: list[DatasetConfig] | None = None):
    """A family instance plus a one-task model on the given `encoder:` block."""
    enc_cfg = EncoderConfig(**encoder)
    tok = load_tokenizer(enc_cfg)
    cls = get_family(family)
    task = TaskConfig(family=family, datasets=datasets or [], options=cls.Options(**(options or {})), name="t")
    fam = cls(task, tok, enc_cfg.max_length)
    return fam, enc_cfg, tok


def resolved(family: str | type[TaskFamily] | TaskFamily, **fields: Any) -> DatasetConfig:
    """A dataset built in a test as an assembled experiment holds it: its `options` typed by its reader."""
    return resolve_dataset(get_family(family) if isinstance(family, str) else family, DatasetConfig(**fields))


def overfit(
    fam: TaskFamily,
    enc_cfg: EncoderConfig,
    examples: list[Any],
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[MultiTaskModel, list[Any]]:
    """Train one head (and the encoder) on `examples`; return the model and its predictions on them."""
    torch.manual_seed(seed)
    random.seed(seed)
    fam.fit(examples)
    feats = fam.featurize(examples, "train")
    encoder = load_encoder(enc_cfg, fam.tokenizer)
    hidden = encoder.config.hidden_size
    info = EncoderInfo(hidden, encoder_layers(encoder), make_mix_factory(enc_cfg, encoder_layers(encoder)), 0.0)
    model = MultiTaskModel(encoder, {"t": fam.build_head(info)})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    model.train()
    order = list(range(len(feats)))
    for step in range(steps):
        if step % max(1, len(order) // batch_size) == 0:
            random.shuffle(order)
        start = (step * batch_size) % max(1, len(order) - batch_size + 1)
        batch = fam.collate([feats[i] for i in order[start : start + batch_size]])
        loss = model("t", batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, predict(fam, model, examples, feats)


@torch.no_grad()
def predict(
    fam: TaskFamily, model: MultiTaskModel, examples: list[Any], feats: list[dict] | None = None, batch_size: int = 64
) -> list[Any]:
    feats = feats if feats is not None else fam.featurize(examples, "dev")
    model.eval()
    records: list[Any] = []
    for i in range(0, len(feats), batch_size):
        batch = fam.collate(feats[i : i + batch_size])
        records.extend(fam.decode(model("t", batch), batch))
    return fam.finalize(examples, feats, records)


def resume_from_copy(cfg: dict, run: Path, step: int, into: Path,
                     edit: Callable[[Path], None] | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """Copy `run`/checkpoint-`step` alone into a new folder `into` (optionally `edit` it), resume `cfg` there to
    its end; the outcome and its final weights."""
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import train

    into.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", into / f"checkpoint-{step}")
    if edit is not None:
        edit(into / f"checkpoint-{step}")
    resumed = train(experiment_from_dict({**cfg, "train": {**cfg["train"], "output_dir": str(into)}}), resume=True,
                    progress=False)
    return resumed, torch.load(resumed.checkpoint / "model.pt", weights_only=True)
