"""The `ud` family: heads per dataset, features, long sentences, and an overfit run on real EWT data."""

from __future__ import annotations

import contextlib
import functools
import logging

import pytest
import torch
from conftest import tiny_encoder
from helpers import build, overfit, predict

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from mtl.encoder import encoder_layers, load_encoder, make_mix_factory
from mtl.model import MultiTaskModel
from tasks._conllu_io import read_conllu
from tasks._mst import is_tree
from tasks._ud_head import BiaffineParser
from tasks._ud_metrics import universal_feats
from tasks.base import EncoderInfo


def _ds(data_dir, name: str, train: bool = True, dev: bool = True) -> DatasetConfig:
    folder = data_dir / "ud" / name
    return DatasetConfig(language=name[:2], name=name, train=str(folder / "train.conllu") if train else None,
                         dev=str(folder / "dev.conllu") if dev else None)


@functools.cache
def _read(path: str, name: str) -> tuple:
    return tuple(read_conllu(path, name))


def _first(data_dir, name: str, n: int, split: str = "train"):
    return list(_read(str(data_dir / "ud" / name / f"{split}.conllu"), name)[:n])


@contextlib.contextmanager
def _one_thread():
    """Tiny matrices: one thread is as fast, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _model(fam, enc_cfg, tok) -> MultiTaskModel:
    encoder = load_encoder(enc_cfg, tok)
    layers = encoder_layers(encoder)
    info = EncoderInfo(encoder.config.hidden_size, layers, make_mix_factory(enc_cfg, layers), 0.1)
    return MultiTaskModel(encoder, {"t": fam.build_head(info)})


def test_heads_are_switched_off_per_dataset(data_dir, tiny_encoder_cfg, caplog):
    en, mr, de = _ds(data_dir, "en_ewt"), _ds(data_dir, "mr_ufal"), _ds(data_dir, "de_gsd", train=False)
    fam, _, _ = build("ud", tiny_encoder_cfg, {}, [en, mr, de])
    train = _first(data_dir, "en_ewt", 30) + _first(data_dir, "mr_ufal", 30)
    with caplog.at_level(logging.INFO):
        fam.fit(train)
    assert fam.heads_for("en_ewt") == ["upos", "xpos", "feats", "lemma", "deps"]
    assert fam.heads_for("mr_ufal") == ["upos", "feats", "lemma", "deps"]  # Marathi has no XPOS
    assert fam.heads_for("de_gsd") == ["upos", "xpos", "feats", "lemma", "deps"]  # zero-shot: all heads
    assert "dataset mr_ufal: heads upos, feats, lemma, deps (off, column all '_' in training data: xpos)" in caplog.text
    with caplog.at_level(logging.INFO):
        fam.check(_first(data_dir, "de_gsd", 5, "dev"), de, "dev")
    assert "dataset de_gsd (dev, no training data): heads upos, xpos, feats, lemma, deps" in caplog.text
    feats = fam.featurize(train, "train")
    assert "xpos" in feats[0] and "xpos" not in feats[-1]
    batch = fam.collate([feats[0], feats[-1]])
    assert (batch["xpos"][1] == -100).all() and (batch["xpos"][0][: len(feats[0]["word_index"])] >= 0).all()
    # word_index points at each word's first sub-word that is more than a bare "▁"
    f = feats[0]
    forms = train[0].forms
    for j in (0, len(forms) - 1):
        ids = fam.tokenizer(forms[j], add_special_tokens=False)["input_ids"]
        first_piece = next(i for i in ids if fam.tokenizer.convert_ids_to_tokens(i) != "▁")
        assert f["input_ids"][f["word_index"][j]] == first_piece
    # a checkpointed family rebuilds the same vocabularies and switches
    again, _, _ = build("ud", tiny_encoder_cfg, {}, [en, mr, de])
    again.load_state_dict(fam.state_dict())
    assert again.state_dict() == fam.state_dict() and again.heads_for("mr_ufal") == fam.heads_for("mr_ufal")


def test_unseen_dev_labels_are_ignored_in_loss_and_count_as_wrong(data_dir, tiny_encoder_cfg):
    en = _ds(data_dir, "en_ewt")
    fam, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "feats"]}, [en])
    train = _first(data_dir, "en_ewt", 20)
    fam.fit(train)
    dev = _first(data_dir, "en_ewt", 200, "dev")
    known = fam.vocabs["feats"]
    unseen = [(i, j) for i, s in enumerate(dev) for j, v in enumerate(s.column("feats")) if v not in known]
    assert unseen
    i, j = unseen[0]
    feat = fam.featurize([dev[i]], "dev")[0]
    assert feat["feats"][j] == -100
    # Predict gold everywhere the label is known (an unknown one cannot be predicted).
    preds = [{"upos": s.column("upos"), "feats": [v if v in fam.vocabs["feats"] else "_" for v in s.column("feats")]}
             for s in dev]
    scores = fam.score(dev, preds, en)
    n_words = sum(len(s) for s in dev)
    # predicted '_' (no features) is wrong unless the unseen label has no universal feature either
    wrong_ufeats = sum(1 for s in dev for v in s.column("feats") if v not in fam.vocabs["feats"] and universal_feats(v))
    assert wrong_ufeats > 0
    assert scores["UFeats"] == pytest.approx(100 * (n_words - wrong_ufeats) / n_words)
    assert scores["UPOS"] == pytest.approx(100.0)
    assert set(scores) == {"UPOS", "UFeats", "AllTags"}  # only metrics of the heads that ran


def _long_sentence_file(tmp_path, n_words: int):
    rows = [f"{i}\tw{i}\tw{i}\tX\t_\t_\t{0 if i == 1 else 1}\t{'root' if i == 1 else 'dep'}\t_\t_"
            for i in range(1, n_words + 1)]
    short = "1\tshort\tshort\tX\t_\t_\t0\troot\t_\t_\n\n"
    path = tmp_path / "long.conllu"
    path.write_text(short + "\n".join(rows) + "\n\n", encoding="utf-8")
    return path


def test_too_long_sentence_is_a_data_error_with_deps(tmp_path, tiny_encoder_cfg, caplog):
    path = _long_sentence_file(tmp_path, 150)  # 150 words do not fit 128 positions
    ds = DatasetConfig(language="xx", name="long", train=str(path))
    fam, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "deps"]}, [ds])
    sents = fam.read(ds, "train")  # reading tokenises nothing: the length check is part of featurize
    fam.fit(sents)
    with pytest.raises(DataError, match=r"long\.conllu:3: sentence of 150 words needs \d+ sub-word positions") as info:
        fam.featurize(sents, "train")
    assert "encoder.max_length" in str(info.value) and "skip_invalid" in str(info.value)
    skipping, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "deps"], "skip_invalid": True}, [ds])
    sents = skipping.read(ds, "train")
    skipping.fit(sents)
    with caplog.at_level(logging.WARNING):
        feats = skipping.featurize(sents, "train")
    assert {f["example_index"] for f in feats} == {0} and sents[0].forms == ["short"]
    assert "skipped 1 of 2 sentences longer than encoder.max_length 128" in caplog.text


def test_split_leaves_out_sentences_too_long_to_parse(tmp_path, tiny_encoder_cfg):
    from mtl.data import load_splits
    from mtl.experiment import experiment_from_dict

    path = _long_sentence_file(tmp_path, 150)
    exp = experiment_from_dict({
        "name": "long", "encoder": tiny_encoder_cfg,
        "tasks": {"ud": {"family": "ud", "options": {"heads": ["upos", "deps"], "skip_invalid": True},
                         "datasets": [{"language": "xx", "name": "long", "train": str(path), "dev": str(path)}]}},
    })
    fam, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "deps"], "skip_invalid": True})
    calls = []
    featurize = fam.featurize
    fam.featurize = lambda examples, role: calls.append(role) or featurize(examples, role)
    for expected_calls in (["train", "dev"], ["train", "dev"]):  # cold, then warm: the same split either way
        (train, dev) = load_splits(exp, {"ud": fam}, ["train", "dev"], cache_dir=tmp_path / "cache")
        assert [s.forms for s in train.examples] == [["short"]] == [s.forms for s in dev.examples]
        assert [f["example_index"] for f in dev.features] == [0]
        assert calls == expected_calls  # the warm cache tokenises nothing
        # the run record counts the left-out sentence as skipped, from the cache too
        assert fam.read_counts == {("long", r): {"skipped": 1, "repaired": 0} for r in ("train", "dev")}


def test_tagging_only_reads_long_sentences_in_windows(tmp_path, tiny_encoder_cfg):
    path = _long_sentence_file(tmp_path, 150)
    ds = DatasetConfig(language="xx", name="long", train=str(path))
    fam, enc_cfg, tok = build("ud", tiny_encoder_cfg, {"heads": ["upos"]}, [ds])
    sents = fam.read(ds, "train")
    fam.fit(sents)
    feats = fam.featurize(sents, "dev")
    assert len(feats) >= 3 and feats[-1]["first_word"] > 0  # the long sentence spans several windows
    preds = predict(fam, _model(fam, enc_cfg, tok), sents, feats)
    assert [len(p["upos"]) for p in preds] == [1, 150]


def test_every_parameter_gets_a_gradient_even_without_labels_of_a_head(data_dir, tiny_encoder_cfg):
    en = _ds(data_dir, "en_ewt")
    fam, enc_cfg, tok = build("ud", tiny_encoder_cfg, {"heads": ["upos", "lemma", "deps"], "arc_mlp": 32,
                                                        "label_mlp": 16}, [en])
    train = _first(data_dir, "en_ewt", 8)
    fam.fit(train)
    model = _model(fam, enc_cfg, tok)
    model.train()
    feats = fam.featurize(train, "train")
    for f in feats:  # a batch from a dataset whose HEAD and LEMMA columns are off
        del f["heads"], f["deprels"], f["lemma"]
    out = model("t", fam.collate(feats))
    out["loss"].backward()
    head_params = dict(model.heads["t"].named_parameters())
    assert all(p.grad is not None for p in head_params.values()), [n for n, p in head_params.items() if p.grad is None]
    model.eval()
    with torch.no_grad():
        plain = {k: v for k, v in fam.collate(feats).items() if k not in ("upos",)}
        out = model("t", plain)
    assert "loss" not in out and out["heads"].shape == plain["word_mask"].shape


@pytest.fixture(scope="module")
def overfitted(data_dir):
    """~200 EWT training sentences, memorised by a small random BERT (all heads on)."""
    enc = tiny_encoder(hidden=64, layers=2, heads=2)
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ds = _ds(data_dir, "en_ewt")
    opts = {"arc_mlp": 128, "label_mlp": 64, "mlp_dropout": 0.0}
    fam, enc_cfg, _ = build("ud", enc, opts, [ds])
    sents = _first(data_dir, "en_ewt", 200)
    with _one_thread():
        model, preds = overfit(fam, enc_cfg, sents, steps=150, batch_size=16, lr=5e-3)
    return fam, model, sents, preds, ds


def test_overfit_200_ewt_sentences(overfitted):
    fam, _, sents, preds, ds = overfitted
    scores = fam.score(sents, preds, ds)
    assert scores["UPOS"] >= 95.0, scores
    assert scores["LAS"] >= 90.0, scores
    assert list(scores) == ["UPOS", "XPOS", "UFeats", "AllTags", "Lemmas", "UAS", "LAS", "CLAS", "MLAS", "BLEX"]
    assert all(is_tree([-1, *p["head"]]) for p in preds)


def test_predictions_written_as_conllu_read_back(overfitted, tmp_path):
    fam, _, sents, preds, ds = overfitted
    out = tmp_path / "pred.conllu"
    fam.write_predictions(sents, preds, out)
    again = read_conllu(out, "en_ewt")  # validates: 10 columns, one root, no cycles
    assert len(again) == len(sents)
    assert [s.comments for s in again] == [s.comments for s in sents]
    assert [[t["id"] for t in s.tokens] for s in again] == [[t["id"] for t in s.tokens] for s in sents]
    assert [s.heads for s in again] == [p["head"] for p in preds]
    assert [s.column("lemma") for s in again] == [p["lemma"] for p in preds]
    # the written file scores as the predictions did
    as_preds = [{k: s.column(k) for k in ("upos", "xpos", "feats", "lemma", "deprel")} | {"head": s.heads}
                for s in again]
    assert fam.score(sents, as_preds, ds) == fam.score(sents, preds, ds)


def test_argmax_decoder_option(overfitted):
    fam, model, sents, _, ds = overfitted
    head = model.heads["t"]
    head.decoder = "argmax"
    try:
        with _one_thread():
            preds = predict(fam, model, sents)
    finally:
        head.decoder = "mst"
    assert fam.score(sents, preds, ds)["UAS"] >= 90.0


@pytest.mark.parametrize("n_labels", [3, 9])  # fewer and more labels than the label MLP size (two code paths)
def test_biaffine_scores_match_their_formulas(n_labels):
    torch.manual_seed(0)
    parser = BiaffineParser(hidden=6, arc_dim=4, label_dim=5, n_labels=n_labels, dropout=0.0)
    for p in (parser.arc_weight, parser.head_bias, parser.rel_weight):
        torch.nn.init.normal_(p)
    nodes = torch.randn(2, 4, 6)  # ROOT + 3 words
    dep, head = parser.arc_dep(nodes), parser.arc_head(nodes)
    scores = parser.arc_scores(nodes)
    i, j = 2, 1
    expected = dep[1, i] @ parser.arc_weight @ head[1, j] + head[1, j] @ parser.head_bias
    assert scores[1, i, j].item() == pytest.approx(expected.item(), rel=1e-5)
    rel_dep, rel_head = parser.label_views(nodes)
    heads = torch.tensor([[0, 1, 1], [3, 0, 2]])
    labels = parser.label_scores(rel_dep, rel_head, heads)
    assert labels.shape == (2, 3, n_labels)
    x, y = rel_dep[1, 2], rel_head[1, 2]  # word 3 of sentence 2 with head 2
    for lab in range(n_labels):
        bilinear = x @ parser.rel_weight[:, lab, :] @ y
        linear = parser.rel_linear.weight[lab] @ torch.cat([x, y]) + parser.rel_linear.bias[lab]
        assert labels[1, 2, lab].item() == pytest.approx((bilinear + linear).item(), rel=1e-4, abs=1e-5)
