"""How heads read the encoder: per-family defaults, `mix: last`, and a scalar mix that learns."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_encoder
from helpers import build

from mtl.core.config import DatasetConfig, EncoderConfig, TaskConfig
from mtl.encoder import LastLayer, ScalarMix, encoder_info, head_view, load_encoder, mix_report, mix_table
from mtl.model import MultiTaskModel
from tasks import get_family
from tasks._conllu_io import read_conllu


def _task(family: str, mix: str | None = None) -> TaskConfig:
    return TaskConfig(family=family, datasets=[], mix=mix, name=family)


def test_family_defaults_and_overrides():
    auto = EncoderConfig()
    assert head_view(auto, _task("qa"), get_family("qa")) == ("last", 0.0)
    assert head_view(auto, _task("classification"), get_family("classification")) == ("last", 0.1)
    assert head_view(auto, _task("ner"), get_family("ner")) == ("last", 0.1)
    assert head_view(auto, _task("ud"), get_family("ud")) == ("scalar", 0.1)
    # the experiment's choice beats the family's; the task's own beats both
    # word-level families: UD averages a word's pieces, NER reads its first real piece
    assert get_family("ud").Options().word_pooling == "mean"
    assert get_family("ner").Options().word_pooling == "first"
    forced = EncoderConfig(mix="scalar", dropout=0.2)
    assert head_view(forced, _task("qa"), get_family("qa")) == ("scalar", 0.2)
    assert head_view(forced, _task("qa", mix="last"), get_family("qa")) == ("last", 0.2)


def test_last_reads_only_the_last_layer():
    cfg = EncoderConfig(**tiny_encoder())
    encoder = load_encoder(cfg)
    info = encoder_info(cfg, encoder, _task("qa"), get_family("qa"))
    mix = info.make_mix()
    assert isinstance(mix, LastLayer)
    states = [torch.randn(2, 5, 64) for _ in range(info.num_layers)]
    changed = [torch.randn(2, 5, 64) for _ in range(info.num_layers - 1)] + [states[-1]]
    assert torch.equal(mix(states), mix(changed))
    assert not list(mix.parameters())
    scalar = encoder_info(cfg, encoder, _task("qa", mix="scalar"), get_family("qa")).make_mix()
    assert isinstance(scalar, ScalarMix) and not torch.equal(scalar.eval()(states), scalar(changed))


def _train_upos(data_dir, mix_lr: float | None, steps: int = 30) -> MultiTaskModel:
    """A few steps of UPOS tagging on real EWT sentences, with the optimiser groups the trainer uses."""
    torch.manual_seed(0)
    random.seed(0)
    ds = DatasetConfig(language="en", name="en_ewt", train=str(data_dir / "ud" / "en_ewt" / "train.conllu"))
    fam, cfg, _ = build("ud", {**tiny_encoder(), "layer_dropout": 0.0}, {"heads": ["upos"]}, [ds])
    sentences = read_conllu(ds.train, "en_ewt")[:96]
    fam.fit(sentences)
    feats = fam.featurize(sentences, "train")
    encoder = load_encoder(cfg, fam.tokenizer)
    model = MultiTaskModel(encoder, {"t": fam.build_head(encoder_info(cfg, encoder, fam.task, type(fam)))})
    groups = model.parameter_groups(encoder_lr=2e-5, head_lr=1e-4, weight_decay=0.01, mix_lr=mix_lr)
    optimizer = torch.optim.AdamW(groups)
    model.train()
    for step in range(steps):
        batch = fam.collate([feats[(step * 16 + k) % len(feats)] for k in range(16)])
        loss = model("t", batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _spread(model: MultiTaskModel) -> float:
    (weights,) = mix_report(model).values()
    gamma = sum(weights)
    return (max(weights) - min(weights)) / gamma


@pytest.mark.slow
def test_scalar_mix_learns_in_its_own_group(data_dir):
    moved = _train_upos(data_dir, mix_lr=1e-2)
    stuck = _train_upos(data_dir, mix_lr=None)  # at the heads' rate, as before the mix had its own group
    assert _spread(moved) > 0.03
    assert _spread(stuck) < 0.01
    names = {g["name"]: g for g in moved.parameter_groups(2e-5, 1e-4, 0.01, 1e-2)}
    assert names["mix"]["lr"] == 1e-2 and names["mix"]["weight_decay"] == 0.0
    report = mix_report(moved)
    assert list(report) == ["t/upos"] and len(report["t/upos"]) == 3  # embeddings + 2 layers
    table = mix_table(report)
    assert table.splitlines()[0].split()[:4] == ["mix", "emb", "L1", "L2"]
