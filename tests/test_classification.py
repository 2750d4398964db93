"""Classification family: readers, metrics, long inputs, head training, example data."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_encoder
from helpers import build, overfit, predict, resolved

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError, DataError
from mtl.data import limit, read_split
from mtl.encoder import LastLayer
from mtl.experiment import experiment_from_dict
from tasks import get_family
from tasks._classification_metrics import (
    accuracy,
    binary_f1,
    classification_scores,
    macro_f1,
    mcc,
    pearson,
    regression_scores,
    spearman,
)
from tasks.base import EncoderInfo
from tasks.classification import Classification, window_spans
from tasks.readers import read_hub, read_table

EXAMPLES = REPO / "examples" / "data"


@pytest.fixture(scope="module")
def tok():
    from mtl.core.config import EncoderConfig
    from mtl.encoder import load_tokenizer

    return load_tokenizer(EncoderConfig(**tiny_encoder()))


def family(tok, max_length: int = 128, **options) -> Classification:
    task = TaskConfig(family="classification", datasets=[], options=Classification.Options(**options), name="t")
    return Classification(task, tok, max_length)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- readers


def test_tsv_with_header_keeps_quotes_and_line_numbers(tmp_path):
    f = write(tmp_path / "a.tsv", 'sentence\tlabel\nhe said " hi \t1\n\nit \'s "odd\t0\n')
    rows = read_table(f, {"text": "sentence", "label": "label"})
    assert [r["text"] for r in rows] == ['he said " hi ', 'it \'s "odd']
    assert [r["label"] for r in rows] == ["1", "0"]
    assert [r["_line"] for r in rows] == [2, 4]  # the blank line 3 is not a row
    assert rows[1]["_where"] == f"{f}:4"


def test_tsv_index_fields_need_no_header(tmp_path):
    # CoLA: source, label, original label (empty), sentence — no header row.
    f = write(tmp_path / "cola.tsv", "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n")
    rows = read_table(f, {"text": 3, "label": 1})
    assert [(r["text"], r["label"], r["_line"]) for r in rows] == [("The cat sat.", "1", 1), ("Cat the sat.", "0", 2)]
    g = write(tmp_path / "h.tsv", "src\tlab\tx\ttext\ngj04\t1\t\tThe cat sat.\n")
    rows = read_table(g, {"text": 3, "label": 1}, header=True)
    assert [(r["text"], r["_line"]) for r in rows] == [("The cat sat.", 2)]


def test_csv_quotes_and_multiline_cells(tmp_path):
    f = write(tmp_path / "a.csv", 'text,label\n"one, two",pos\n"say ""hi""\nthen go",neg\nplain,pos\n')
    rows = read_table(f, {"text": "text", "label": "label"})
    assert [r["text"] for r in rows] == ["one, two", 'say "hi"\nthen go', "plain"]
    assert [r["_line"] for r in rows] == [2, 3, 5]


def test_jsonl_by_key(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"s": "a", "y": 1}\n\n{"s": "b", "y": 0, "extra": true}\n')
    rows = read_table(f, {"text": "s", "label": "y"})
    assert [(r["text"], r["label"], r["_line"]) for r in rows] == [("a", 1, 1), ("b", 0, 3)]
    bad = write(tmp_path / "b.json", '{"s": "a", "y": 1}\n{"s": "b", "y": \n')
    with pytest.raises(DataError, match=rf"{bad}:2: not valid JSON"):
        read_table(bad, {"text": "s", "label": "y"})
    with pytest.raises(DataError, match=rf"{f}:1: no key 'label' for field label"):
        read_table(f, {"text": "s", "label": "label"})
    rows = read_table(f, {"text": "s", "label": "label"}, optional=("label",))
    assert [r["label"] for r in rows] == [None, None]


def test_wrong_column_count_names_file_and_line(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\ngood\t1\nbad row without tab\nfine\t0\n")
    with pytest.raises(DataError, match=rf"{f}:3: expected 2 columns, found 1"):
        read_table(f, {"text": "sentence", "label": "label"})


def test_missing_column_empty_file_and_unknown_suffix(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tscore\ngood\t1\n")
    with pytest.raises(DataError, match=rf"{f}:1: no column 'label' for field label \(columns: sentence, score\)"):
        read_table(f, {"text": "sentence", "label": "label"})
    empty = write(tmp_path / "empty.tsv", "")
    with pytest.raises(DataError, match=rf"{empty}: empty file"):
        read_table(empty, {"text": "sentence"})
    with pytest.raises(DataError, match=rf"{empty}: no data rows"):
        read_table(empty, {"text": 0})
    header_only = write(tmp_path / "h.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(header_only, {"text": "sentence"})
    odd = write(tmp_path / "a.txt", "x\t1\n")
    with pytest.raises(DataError, match="set `format:`"):
        read_table(odd, {"text": 0})
    assert read_table(odd, {"text": 0, "label": 1}, "tsv")[0]["label"] == "1"
    with pytest.raises(DataError, match="only 2 columns"):
        read_table(odd, {"text": 0, "label": 2}, "tsv")


def test_limit():
    assert limit([1, 2, 3], 2) == [1, 2]
    assert limit([1, 2, 3], None) == [1, 2, 3]
    with pytest.raises(DataError):
        limit([1], 0)


def test_read_hub_local_dataset_names_class_labels(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    folder = tmp_path / "hubset"
    folder.mkdir()
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"sentence": ["bad", "good", "unknown"], "label": [0, 1, -1]}, features=features).to_parquet(
        str(folder / "train.parquet")
    )
    ds = resolved("classification", language="en", name="local", hub=str(folder), train="train")
    rows = read_hub(ds, "train")
    assert [(r["sentence"], r["label"], r["_line"]) for r in rows] == [("bad", "neg", 1), ("good", "pos", 2),
                                                                      ("unknown", None, 3)]
    with pytest.raises(DataError, match="Unknown split"):
        read_hub(ds, "validation")


def test_read_hub_offline_message(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    ds = resolved("classification", language="en", hub="nyu-mll/glue", hub_config="sst2", train="train")
    with pytest.raises(DataError, match=r"dataset nyu-mll/glue/sst2 not reachable: offline\? set data_root/local"):
        read_hub(ds, "train")


# --------------------------------------------------------------------------- family reading, labels


def test_glue_files_read_completely(tok, data_dir):
    fam = family(tok)
    glue = data_dir / "glue"
    sst = resolved("classification", language="en", name="sst2", train=str(glue / "SST-2/train.tsv"),
                   dev=str(glue / "SST-2/dev.tsv"))
    train, dev = fam.read(sst, "train"), fam.read(sst, "dev")
    assert (len(train), len(dev)) == (5000, 872)
    assert (train[0].text.strip(), train[0].label) == ("hide new secretions from the parental units", "0")
    assert train[0].where.endswith("SST-2/train.tsv:2")
    fam.fit(train)
    assert fam.vocab.labels == ["0", "1"] and fam.metric_names() == ["accuracy", "f1"]

    rte = resolved("classification", language="en", name="rte", train=str(glue / "RTE/train.tsv"),
                   dev=str(glue / "RTE/dev.tsv"),
                   fields={"text": "sentence1", "text_pair": "sentence2", "label": "label"})
    train = family(tok).read(rte, "train")
    assert len(train) == 2490 and len(family(tok).read(rte, "dev")) == 277
    assert train[0].text_pair == "Weapons of Mass Destruction Found in Iraq."
    assert {ex.label for ex in train} == {"entailment", "not_entailment"}

    sts = resolved("classification", language="en", name="stsb", train=str(glue / "STS-B/train.tsv"),
                   fields={"text": "sentence1", "text_pair": "sentence2", "label": "score"})
    train = family(tok, regression=True).read(sts, "train")
    assert len(train) == 5000 and (train[0].label, train[1].label) == (5.0, 3.8)

    cola = resolved("classification", language="en", name="cola", train=str(glue / "CoLA/train.tsv"),
                    fields={"text": 3, "label": 1})
    train = family(tok).read(cola, "train")
    assert len(train) == 5000 and {ex.label for ex in train} == {"0", "1"}
    assert train[0].text.startswith("Our friends won't buy this analysis")
    assert train[0].where.endswith("CoLA/train.tsv:1")


def test_declared_labels_reject_unknown_label(tmp_path, tok):
    f = write(tmp_path / "t.tsv", "sentence\tlabel\nok\tpos\nfine\tneg\nhm\tmaybe\n")
    fam = family(tok, labels=["neg", "pos"])
    examples = fam.read(resolved("classification", language="en", train=str(f)), "train")
    with pytest.raises(DataError, match=rf"{f}:4: label 'maybe' is not among the declared labels"):
        fam.fit(examples)


def test_dev_label_unseen_in_training(tmp_path, tok):
    tr = write(tmp_path / "train.tsv", "sentence\tlabel\na\tx\nb\ty\n")
    dv = write(tmp_path / "dev.tsv", "sentence\tlabel\nc\tx\nd\tz\n")
    ds = resolved("classification", language="en", train=str(tr), dev=str(dv))
    fam = family(tok)
    fam.fit(fam.read(ds, "train"))
    with pytest.raises(DataError, match=rf"{dv}:3: label 'z' is not among the labels of the training data"):
        fam.check(fam.read(ds, "dev"), ds, "dev")


def test_empty_label_is_an_error_and_skip_labels_reports(tmp_path, tok, data_dir, caplog):
    f = write(tmp_path / "t.tsv", "sentence\tlabel\na\tx\nb\t\n")
    with pytest.raises(DataError, match=rf"{f}:3: empty label"):
        family(tok).read(resolved("classification", language="en", train=str(f)), "train")
    ocnli = resolved("classification", language="zh", dev=str(data_dir / "ocnli/dev.sample.jsonl"),
                     fields={"text": "sentence1", "text_pair": "sentence2", "label": "label"})
    with pytest.raises(DataError, match=r"dev.sample.jsonl:66: label '-' is not among"):
        fam = family(tok, labels=["contradiction", "entailment", "neutral"])
        fam.check(fam.read(ocnli, "dev"), ocnli, "dev")
    fam = family(tok, labels=["contradiction", "entailment", "neutral"], skip_labels=["-"])
    with caplog.at_level(logging.WARNING, logger="tasks.classification"):
        examples = fam.read(ocnli, "dev")
    assert len(examples) == 199
    assert "skipped 1 of 200 rows" in caplog.text


def test_unlabelled_test_split(tmp_path, tok):
    tr = write(tmp_path / "train.tsv", "sentence\tlabel\na\tx\nb\ty\n")
    te = write(tmp_path / "test.tsv", "index\tsentence\n0\tc\n1\td\n")
    ds = resolved("classification", language="en", train=str(tr), test=str(te))
    fam = family(tok)
    fam.fit(fam.read(ds, "train"))
    test = fam.read(ds, "test")
    assert [ex.label for ex in test] == [None, None]
    assert "label" not in fam.collate(fam.featurize(test, "test"))
    assert fam.score(test, ["x", "y"], ds) == {}


def test_options_are_checked(tok):
    with pytest.raises(ConfigError, match="'pearson' is not a classification metric"):
        family(tok, metrics=["pearson"])
    with pytest.raises(ConfigError, match="primary_metric"):
        family(tok, metrics=["accuracy"], primary_metric="mcc")
    fam = family(tok, metrics=["f1"])
    examples = [_ex("a", "x"), _ex("b", "y"), _ex("c", "z")]
    with pytest.raises(ConfigError, match="need exactly two labels"):
        fam.fit(examples)
    assert family(tok, regression=True).primary_metric == "pearson"
    assert family(tok, metrics=["mcc"]).primary_metric == "mcc"


def test_options_validated_through_experiment_file():
    data = {
        "name": "x",
        "encoder": tiny_encoder(),
        "tasks": {"sent": {"family": "classification", "options": {"long_inputs": "window"},
                           "datasets": [{"language": "en", "train": str(EXAMPLES / "sentiment/en/train.tsv")}]}},
    }
    with pytest.raises(ConfigError, match=r"tasks\.sent\.options\.long_inputs: must be one of"):
        experiment_from_dict(data)
    data["tasks"]["sent"]["options"] = {"long_inputs": "windows", "pool": "max"}
    exp = experiment_from_dict(data)
    assert exp.tasks["sent"].options.pool == "max"


def _ex(text: str, label, pair: str | None = None):
    from tasks.classification import ClassificationExample

    return ClassificationExample(text, pair, label, f"mem:{text[:10]}")


# --------------------------------------------------------------------------- metrics


def test_binary_metrics_by_hand():
    # gold 1 1 1 1 0 0 0 0 0 0 / pred 1 1 1 0 1 1 0 0 0 0  →  TP 3, FN 1, FP 2, TN 4
    gold = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert accuracy(gold, pred) == pytest.approx(0.7)  # 7 of 10
    assert binary_f1(gold, pred, 1) == pytest.approx(6 / 9)  # 2·3 / (2·3 + 2 + 1)
    # class 0: TP 4, FP 1, FN 2 → 8/11; macro = (6/9 + 8/11) / 2
    assert macro_f1(gold, pred) == pytest.approx((6 / 9 + 8 / 11) / 2)
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 − 2) / sqrt(5·4·6·5)
    assert mcc(gold, pred) == pytest.approx(10 / 600**0.5)
    scores = classification_scores(["accuracy", "f1", "accuracy_f1"], gold, pred, positive=1)
    assert scores == pytest.approx({"accuracy": 0.7, "f1": 6 / 9, "accuracy_f1": (0.7 + 6 / 9) / 2})


def test_multiclass_mcc_and_degenerate_cases():
    # gold a a b b c c / pred a b b b c a: correct 4 of 6; true counts 2 2 2; predicted 2 3 1
    # (4·6 − (2·2 + 2·3 + 2·1)) / sqrt((36 − (4+9+1)) (36 − (4+4+4))) = 12 / sqrt(22·24)
    assert mcc(list("aabbcc"), list("abbbca")) == pytest.approx(12 / (22 * 24) ** 0.5)
    assert mcc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    assert binary_f1([0, 0], [0, 0], 1) == 0.0
    assert pearson([1, 2, 3], [2, 2, 2]) == 0.0


def test_correlations_by_hand():
    gold = [1, 2, 3, 4, 5]
    pred = [2, 1, 4, 3, 50]
    # deviations: gold −2 −1 0 1 2, pred −10 −11 −8 −9 38 (mean 12): Σ = 20 + 11 + 0 − 9 + 76 = 98
    # Σ gold² = 10, Σ pred² = 100 + 121 + 64 + 81 + 1444 = 1810 → r = 98 / sqrt(18100)
    assert pearson(gold, pred) == pytest.approx(98 / 18100**0.5)
    # ranks of pred: 2 1 4 3 5 → the same arithmetic on ranks gives (2 + 2 + 0 + 0 + 4) / 10 = 0.8
    assert spearman(gold, pred) == pytest.approx(0.8)
    both = regression_scores(["pearson_spearman"], gold, pred)
    assert both == pytest.approx({"pearson_spearman": (98 / 18100**0.5 + 0.8) / 2})


def test_score_keys_follow_label_count(tok):
    binary = family(tok)
    binary.fit([_ex("a", "neg"), _ex("b", "pos")])
    ds = DatasetConfig(language="en")
    examples = [_ex("a", "neg"), _ex("b", "pos"), _ex("c", "pos")]
    # positive class = second label "pos": TP 1, FN 1, FP 0 → F1 = 2/3
    assert binary.score(examples, ["neg", "pos", "neg"], ds) == pytest.approx({"accuracy": 200 / 3, "f1": 200 / 3})
    neg_positive = family(tok, positive_label="neg")
    neg_positive.fit([_ex("a", "neg"), _ex("b", "pos")])
    # positive class "neg": TP 1, FP 1, FN 0 → F1 = 2/3 too; check the key set and mcc instead
    assert set(neg_positive.score(examples, ["neg", "pos", "neg"], ds)) == {"accuracy", "f1"}
    three = family(tok)
    three.fit([_ex("a", "x"), _ex("b", "y"), _ex("c", "z")])
    assert set(three.score([_ex("a", "x")], ["x"], ds)) == {"accuracy"}
    reg = family(tok, regression=True)
    assert set(reg.score([_ex("a", 1.0), _ex("b", 2.0)], [1.5, 1.7], ds)) == {"pearson", "spearman"}


# --------------------------------------------------------------------------- long inputs

LONG = " ".join(f"word{i}" for i in range(60))


def _content(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _feature(fam: Classification, text: str, pair: str | None = None) -> dict:
    fam.fit([_ex("a", "x"), _ex("b", "y")])
    return fam.featurize([_ex(text, "x", pair)], "train")[0]


def test_head_tail_and_head_tail_keep_the_right_tokens(tok):
    ids = _content(tok, LONG)
    assert len(ids) > 100
    cls, sep = tok.cls_token_id, tok.sep_token_id
    budget = 30 - 2
    head = _feature(family(tok, 30), LONG)["input_ids"]
    assert head == [cls, *ids[:budget], sep]
    tail = _feature(family(tok, 30, long_inputs="tail"), LONG)["input_ids"]
    assert tail == [cls, *ids[-budget:], sep]
    both = _feature(family(tok, 30, long_inputs="head_tail"), LONG)["input_ids"]
    assert both == [cls, *ids[: budget // 4], *ids[-(budget - budget // 4) :], sep]
    five = _feature(family(tok, 30, long_inputs="head_tail", head_tokens=5), LONG)["input_ids"]
    assert five == [cls, *ids[:5], *ids[-(budget - 5) :], sep]
    short = _feature(family(tok, 30, long_inputs="tail"), "a short one")["input_ids"]
    assert short == tok("a short one")["input_ids"]


def test_pair_truncation_trims_the_longer_text(tok):
    first = "a short premise"
    feat = _feature(family(tok, 30), first, LONG)
    full = tok(first, LONG)
    assert len(feat["input_ids"]) == 30
    assert feat["input_ids"][: len(_content(tok, first)) + 3] == full["input_ids"][: len(_content(tok, first)) + 3]
    tail = _feature(family(tok, 30, long_inputs="tail"), first, LONG)["input_ids"]
    assert tail[-3:-1] == _content(tok, LONG)[-2:]


def test_windows_cover_every_token_like_hf_stride(tok):
    fam = family(tok, 24, long_inputs="windows", window_stride=6)
    feat = _feature(fam, LONG)
    ids = _content(tok, LONG)
    windows, start = [], 0
    for n in feat["window_lengths"]:
        windows.append(feat["input_ids"][start : start + n])
        start += n
    assert start == len(feat["input_ids"]) and len(windows) > 3
    assert all(len(w) <= 24 and w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in windows)
    inner = [w[1:-1] for w in windows]
    for a, b in itertools.pairwise(inner):
        assert a[-6:] == b[:6]  # neighbours share window_stride tokens
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[6:]]
    assert rebuilt == ids  # every token, in order, once after removing the overlaps
    hf = tok(LONG, truncation=True, max_length=24, stride=6, return_overflowing_tokens=True)["input_ids"]
    assert windows == hf
    assert window_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    with pytest.raises(ConfigError, match=r"window_stride \(22\) must be smaller than the window \(22 tokens\)"):
        _feature(family(tok, 24, long_inputs="windows", window_stride=22), LONG)


def test_pair_windows_keep_the_first_text(tok):
    fam = family(tok, 24, long_inputs="windows", window_stride=4)
    feat = _feature(fam, "the question", LONG)
    first = _content(tok, "the question")
    start, covered = 0, []
    for n in feat["window_lengths"]:
        w = feat["input_ids"][start : start + n]
        start += n
        assert w[1 : 1 + len(first)] == first and len(w) <= 24
        covered.append(w[1 + len(first) + 2 : -1])  # after <s> first </s></s>
    rebuilt = covered[0] + [t for w in covered[1:] for t in w[4:]]
    assert rebuilt == _content(tok, LONG)
    # a long first text slides instead, and the short second one closes every window
    feat = _feature(fam, LONG, "the question")
    start, covered = 0, []
    for n in feat["window_lengths"]:
        w = feat["input_ids"][start : start + n]
        start += n
        assert w[-1 - len(first) : -1] == first and len(w) <= 24
        covered.append(w[1 : -len(first) - 3])  # before </s></s> second </s>
    assert covered[0] + [t for w in covered[1:] for t in w[4:]] == _content(tok, LONG)


def test_window_pooling_gives_one_vector_per_example(tok):
    fam = family(tok, 24, long_inputs="windows", window_stride=4)
    fam.fit([_ex("a", "x"), _ex("b", "y")])
    examples = [_ex(LONG, "x"), _ex("short", "y"), _ex(LONG + " more words", "x")]
    feats = fam.featurize(examples, "train")
    batch = fam.collate(feats)
    n_windows = [len(f.get("window_lengths", [0])) for f in feats]
    assert batch["input_ids"].shape[0] == sum(n_windows) and batch["labels"].tolist() == [0, 1, 0]
    assert batch["window_example"].tolist() == [i for i, n in enumerate(n_windows) for _ in range(n)]
    info = EncoderInfo(hidden_size=8, num_layers=1, make_mix=LastLayer, dropout=0.0)
    for pool in ("mean", "max"):
        fam.options.pool = pool
        head = fam.build_head(info)
        hidden = torch.randn(batch["input_ids"].shape[0], batch["input_ids"].shape[1], 8)
        out = head((hidden,), batch)
        assert out["logits"].shape == (3, 2) and out["loss"].requires_grad
        rows = hidden[:, 0][batch["window_example"] == 0]
        pooled = rows.mean(0) if pool == "mean" else rows.max(0).values
        assert torch.allclose(out["logits"][0], head.out(pooled), atol=1e-6)
        out["loss"].backward()
        records = fam.decode(out, batch)
        assert len(fam.finalize(examples, feats, records)) == 3


# --------------------------------------------------------------------------- training
# A one-layer, 32-wide random BERT: big enough to memorise a few dozen sentences, small enough
# that a step takes milliseconds. One thread: tiny matrices gain nothing from two, and on a
# busy machine two threads wait on each other (measured: 40 steps 2.7 s vs 20 s).
TINY = tiny_encoder(hidden=32, layers=1)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_overfit_sst2(data_dir, one_thread):
    ds = resolved("classification", language="en", train=str(data_dir / "glue/SST-2/train.tsv"), max_examples=64)
    fam, enc_cfg, _ = build("classification", TINY, {}, [ds])
    examples = read_split(fam, ds, "train")  # max_examples is applied there, once
    assert len(examples) == 64
    _, preds = overfit(fam, enc_cfg, examples, steps=40, lr=3e-3)
    scores = fam.score(examples, preds, ds)
    assert scores["accuracy"] >= 95, scores


@pytest.mark.slow
def test_regression_learns_stsb_subset(data_dir, one_thread):
    ds = resolved("classification", language="en", train=str(data_dir / "glue/STS-B/train.tsv"), max_examples=48,
                  fields={"text": "sentence1", "text_pair": "sentence2", "label": "score"})
    fam, enc_cfg, _ = build("classification", TINY, {"regression": True}, [ds])
    examples = read_split(fam, ds, "train")
    assert len(examples) == 48
    model, preds = overfit(fam, enc_cfg, examples, steps=120, lr=3e-3)
    scores = fam.score(examples, preds, ds)
    assert scores["pearson"] > 90, scores
    assert all(isinstance(p, float) for p in preds)

    # windows on a regression head still give one prediction per example
    fam.options.long_inputs, fam.max_length = "windows", 16
    fam.options.window_stride = 4
    assert len(predict(fam, model, examples[:5])) == 5


def test_predictions_read_back_and_state_round_trip(tmp_path, tok):
    fam = family(tok)
    fam.fit([_ex("a", "neg"), _ex("b", "pos")])
    examples = [_ex("tab\tinside", "neg", "pair one"), _ex("line\nbreak", "pos", "pair two")]
    out = tmp_path / "preds" / "dev.tsv"
    fam.write_predictions(examples, ["pos", "pos"], out)
    rows = read_table(out, {"index": "index", "label": "prediction", "text": "text", "text_pair": "text_pair"})
    assert [(r["index"], r["label"], r["text"], r["text_pair"]) for r in rows] == [
        ("0", "pos", "tab inside", "pair one"), ("1", "pos", "line break", "pair two")]
    other = family(tok)
    other.load_state_dict(fam.state_dict())
    assert other.vocab.labels == ["neg", "pos"]
    assert other.featurize(examples, "dev") == fam.featurize(examples, "dev")
    with pytest.raises(ValueError, match="regression"):
        family(tok, regression=True).load_state_dict(fam.state_dict())


def test_family_is_registered():
    assert get_family("classification") is Classification


# --------------------------------------------------------------------------- example data


@pytest.mark.parametrize(
    ("task", "lang", "labels"),
    [("sentiment", "en", ["negative", "positive"]), ("sentiment", "de", ["negative", "positive"]),
     ("pairs", "en", ["contradiction", "entailment", "neutral"]),
     ("pairs", "fr", ["contradiction", "entailment", "neutral"])],
)
def test_example_data(tok, task, lang, labels):
    fields = {"text": "sentence1", "text_pair": "sentence2", "label": "label"} if task == "pairs" else {}
    ds = resolved("classification", language=lang, train=str(EXAMPLES / task / lang / "train.tsv"),
                  dev=str(EXAMPLES / task / lang / "dev.tsv"), fields=fields)
    fam = family(tok)
    train, dev = fam.read(ds, "train"), fam.read(ds, "dev")
    assert (len(train), len(dev)) == (300, 60)
    fam.fit(train)
    fam.check(dev, ds, "dev")
    assert fam.vocab.labels == labels
    counts = [sum(ex.label == label for ex in train) for label in labels]
    assert min(counts) >= 0.8 * len(train) / len(labels)  # roughly balanced
    inputs = {(ex.text, ex.text_pair) for ex in train}
    assert not any((ex.text, ex.text_pair) in inputs for ex in dev)


def test_label_map_renames_raw_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\nodd\t7\n")
    ds = resolved("classification", language="en", train=str(path),
                  options={"label_map": {"0": "negative", "1": "positive"}})
    fam, _, _ = build("classification", TINY, {}, [ds])
    with pytest.raises(DataError, match=r"t\.tsv:4: label '7' is not in options.label_map"):
        fam.read(ds, "train")
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    assert [ex.label for ex in fam.read(ds, "train")] == ["positive", "negative"]
