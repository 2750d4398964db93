"""Multiple-choice family on real data: XNLI English premises, each with its entailed hypothesis among 1–4
others (its own contradiction and neutral ones, then entailed hypotheses of other premises), so K varies
from 2 to 5 inside one file; the right ending is the entailed one."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_encoder
from helpers import build, overfit, resolved

from launch.cli import main
from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from mtl.data import read_split
from mtl.inference import load
from mtl.pyfunc import TaskModel
from tasks import get_family
from tasks.base import EncoderInfo
from tasks.multiple_choice import MultipleChoice

TINY = tiny_encoder(hidden=32, layers=1)
ENDINGS = [f"ending{k}" for k in range(5)]
FIELDS = {"context": "premise", **{e: e for e in ENDINGS}, "label": "label"}


def xnli_choices(data_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """n premises of XNLI en dev as choice rows: the entailed hypothesis is the right ending, K = 2 … 5."""
    with (data_dir / "xnli/en/dev.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    by_premise: dict[str, dict[str, str]] = {}
    for r in rows:
        by_premise.setdefault(r["sentence1"], {})[r["label"]] = r["sentence2"]
    premises = list(by_premise)
    rng = random.Random(seed)
    out = []
    for i, premise in enumerate(premises[:n]):
        hyps = by_premise[premise]
        k = 2 + i % 4
        others = [hyps["contradiction"], hyps["neutral"]]
        others += [by_premise[premises[(i + j) % len(premises)]]["entailment"] for j in (101, 202)]
        endings = [hyps["entailment"], *others[: k - 1]]
        rng.shuffle(endings)
        out.append({"premise": premise, "endings": endings, "label": endings.index(hyps["entailment"])})
    return out


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """Five ending columns; a row with fewer endings leaves the last cells empty."""
    lines = ["\t".join(["premise", *ENDINGS, "label"])]
    for r in rows:
        cells = r["endings"] + [""] * (5 - len(r["endings"]))
        lines.append("\t".join([r["premise"], *cells, str(r["label"])]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family(datasets: list[DatasetConfig] | None = None) -> MultipleChoice:
    fam, _, _ = build("multiple_choice", TINY, {}, datasets or [])
    return fam


# --------------------------------------------------------------------------- reading


def test_family_is_registered():
    assert get_family("multiple_choice") is MultipleChoice


def test_reads_rows_with_two_to_five_endings(tmp_path, data_dir):
    rows = xnli_choices(data_dir, 40)
    ds = resolved("multiple_choice", language="en", train=str(write_tsv(tmp_path / "mc.tsv", rows)), fields=FIELDS)
    examples = _family([ds]).read(ds, "train")
    assert [len(ex.endings) for ex in examples] == [len(r["endings"]) for r in rows]
    assert {len(ex.endings) for ex in examples} == {2, 3, 4, 5}
    assert [ex.label for ex in examples] == [r["label"] for r in rows]
    assert examples[0].where == f"{tmp_path / 'mc.tsv'}:2"


def test_bad_rows_name_file_and_line(tmp_path):
    fam = _family()
    path = tmp_path / "bad.tsv"
    head = "premise\tending0\tending1\tending2\tlabel\n"

    def read(body: str, fields: dict | None = None):
        path.write_text(head + body, encoding="utf-8")
        ds = resolved("multiple_choice", language="en", train=str(path),
                      fields=fields or {"context": "premise", "ending0": "ending0", "ending1": "ending1",
                                             "ending2": "ending2", "label": "label"})
        return fam.read(ds, "train")

    with pytest.raises(DataError, match=rf"{path}:3: ending1 is empty but ending2 is not"):
        read("p\ta\tb\tc\t0\np\ta\t\tc\t0\n")
    with pytest.raises(DataError, match=rf"{path}:2: 1 ending\(s\); a multiple-choice row needs at least two"):
        read("p\ta\t\t\t0\n")
    with pytest.raises(DataError, match=rf"{path}:2: label '2' points at ending 2, but the row has 2"):
        read("p\ta\tb\t\t2\n")
    with pytest.raises(DataError, match=rf"{path}:2: empty label in a labelled train split"):
        read("p\ta\tb\t\t\n")
    with pytest.raises(DataError, match=rf"{path}:2: label 'x' is neither a 0-based ending index"):
        read("p\ta\tb\t\tx\n")
    with pytest.raises(DataError, match=rf"{path}:2: empty context"):
        read(" \ta\tb\t\t0\n")
    with pytest.raises(DataError, match="ending0, ending1, … without gaps"):
        read("p\ta\tb\tc\t0\n", {"context": "premise", "ending0": "ending0", "ending2": "ending2", "label": "label"})
    with pytest.raises(DataError, match="unknown field"):
        read("p\ta\tb\tc\t0\n", {"context": "premise", "ending0": "ending0", "ending1": "ending1", "answer": "label"})
    assert [ex.endings for ex in read("p\ta\tb\t\t1\n")] == [["a", "b"]]


def test_jsonl_nulls_hub_style_names_and_label_map(tmp_path):
    fam = _family()
    path = tmp_path / "copa.jsonl"
    records = [{"premise": "The man broke his toe.", "question": "cause", "choice1": "He dropped a hammer.",
                "choice2": "He got a hole in his sock.", "choice3": None, "label": "choice1"},
               {"premise": "I emptied my pockets.", "question": "effect", "choice1": "I found a ticket.",
                "choice2": "I got a hole.", "choice3": "I lost my key.", "label": "choice3"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    fields = {"context": "premise", "stem": "question", "ending0": "choice1", "ending1": "choice2",
              "ending2": "choice3", "label": "label"}
    examples = fam.read(resolved("multiple_choice", language="en", train=str(path), fields=fields), "train")
    assert [(len(ex.endings), ex.label, ex.stem) for ex in examples] == [(2, 0, "cause"), (3, 2, "effect")]
    ds = resolved("multiple_choice", language="en", train=str(path), fields=fields,
                  options={"label_map": {"choice1": "1", "choice3": "0"}})
    assert [ex.label for ex in fam.read(ds, "train")] == [1, 0]
    path.write_text(json.dumps({**records[0], "label": -1}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: label -1 is negative"):
        fam.read(resolved("multiple_choice", language="en", train=str(path), fields=fields), "train")


# --------------------------------------------------------------------------- features and head


def test_collate_pads_every_ending_and_masks_absent_ones(tmp_path, data_dir):
    rows = xnli_choices(data_dir, 4)
    ds = resolved("multiple_choice", language="en", train=str(write_tsv(tmp_path / "mc.tsv", rows)), fields=FIELDS)
    fam = _family([ds])
    examples = fam.read(ds, "train")
    feats = fam.featurize(examples, "train")
    assert [len(f["choice_lengths"]) for f in feats] == [2, 3, 4, 5]
    assert all(len(f["input_ids"]) == sum(f["choice_lengths"]) for f in feats)
    batch = fam.collate(feats)
    width = max(n for f in feats for n in f["choice_lengths"])
    assert batch["input_ids"].shape == (14, width) and batch["attention_mask"].sum() == sum(
        len(f["input_ids"]) for f in feats)
    assert batch["choice_example"].tolist() == [0] * 2 + [1] * 3 + [2] * 4 + [3] * 5
    # the first row of each example is its context paired with ending 0
    enc = fam.tokenizer(examples[1].context, examples[1].endings[0])["input_ids"]
    assert batch["input_ids"][2, : len(enc)].tolist() == enc
    hidden = 8
    info = EncoderInfo(hidden, 2, lambda: (lambda hs: hs[-1]), 0.0)
    head = fam.build_head(info)
    states = [torch.randn(14, width, hidden, requires_grad=True) for _ in range(2)]
    out = head(states, batch)
    assert out["logits"].shape == (4, 5)
    probs = out["logits"].softmax(-1)
    assert probs[0, 2:].sum() == 0 and probs[3].gt(0).all()
    assert out["loss_count"].tolist() == [4.0]
    expected = torch.nn.functional.cross_entropy(out["logits"], batch["labels"], reduction="sum")
    assert torch.allclose(out["loss_sum"][0], expected) and torch.allclose(out["loss"], expected / 4)
    out["loss"].backward()
    assert states[-1].grad is not None and states[-1].grad[:, 1:].abs().sum() == 0  # only first tokens read


# --------------------------------------------------------------------------- learning and predictions


@pytest.mark.slow
def test_overfits_real_choices_and_predictions_rescore(tmp_path, data_dir, one_thread):
    rows = xnli_choices(data_dir, 48)
    src = write_tsv(tmp_path / "mc.tsv", rows)
    ds = resolved("multiple_choice", language="en", train=str(src), dev=str(src), fields=FIELDS)
    fam, enc_cfg, _ = build("multiple_choice", TINY, {}, [ds])
    examples = read_split(fam, ds, "train")
    _, preds = overfit(fam, enc_cfg, examples, steps=80, batch_size=8, lr=3e-3)
    scores = fam.score(examples, preds, ds)
    assert scores["accuracy"] >= 90, scores

    # (b) the written predictions, read with the csv module, rescore to the same accuracy
    out = tmp_path / "preds.tsv"
    fam.write_predictions(examples, preds, out)
    with out.open(encoding="utf-8") as f:
        written = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(written) == len(rows)
    for w, r in zip(written, rows, strict=True):
        assert w["prediction_text"] == r["endings"][int(w["prediction"])]
        assert [w[e] for e in ENDINGS[: len(r["endings"])]] == r["endings"]
    hits = sum(int(w["prediction"]) == r["label"] for w, r in zip(written, rows, strict=True))
    assert scores["accuracy"] == pytest.approx(100 * hits / len(rows))
    # and the file reads back as a dataset whose labels are the predictions
    back = resolved("multiple_choice", language="en", dev=str(out),
                    fields={"context": "context", **{e: e for e in ENDINGS}, "label": "prediction"})
    assert [ex.label for ex in fam.read(back, "dev")] == preds


@pytest.mark.slow
def test_mtl_train_with_classification(tmp_path, data_dir, capsys):
    rows = xnli_choices(data_dir, 60)
    train, dev = write_tsv(tmp_path / "train.tsv", rows[:40]), write_tsv(tmp_path / "dev.tsv", rows[40:])
    enc = {**tiny_encoder(hidden=32, layers=2), "max_length": 64, "dropout": 0.0, "layer_dropout": 0.0}
    cfg = {
        "name": "mc",
        "encoder": enc,
        "tasks": {
            "choice": {"family": "multiple_choice", "datasets": [
                {"language": "en", "train": str(train), "dev": str(dev), "fields": FIELDS}]},
            "sst2": {"family": "classification", "datasets": [
                {"language": "en", "train": str(data_dir / "glue/SST-2/train.tsv"),
                 "dev": str(data_dir / "glue/SST-2/dev.tsv"), "max_examples": 24}]},
        },
        "sampling": {"batch_size": 8},
        "train": {"steps": 6, "head_lr": 1e-3, "encoder_lr": 1e-3, "output_dir": str(tmp_path / "run"),
                  "eval_batch_size": 16, "log_every": 2},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "mc.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    said = capsys.readouterr().out
    preds = tmp_path / "run" / "predictions" / "choice.en.dev.tsv"
    assert (tmp_path / "run" / "predictions" / "sst2.en.dev.txt").exists()
    with preds.open(encoding="utf-8") as f:
        written = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    gold = rows[40:]
    assert len(written) == len(gold)
    assert all(0 <= int(w["prediction"]) < len(r["endings"]) for w, r in zip(written, gold, strict=True))
    hits = sum(int(w["prediction"]) == r["label"] for w, r in zip(written, gold, strict=True))
    final = said[said.rindex("Final evaluation"):]
    shown = re.search(r"choice\s+en\s+en\s+eval\s+20\s+accuracy=([\d.]+)", final)
    assert shown is not None, final
    assert float(shown.group(1)) == pytest.approx(100 * hits / len(gold), abs=0.01)

    # `mtl predict` on unlabelled rows (no label column) gives the same choices as the final evaluation
    unlabelled = tmp_path / "test.tsv"
    unlabelled.write_text("\n".join(line.rsplit("\t", 1)[0] for line in dev.read_text().splitlines()) + "\n")
    out = tmp_path / "predicted.tsv"
    assert main(["predict", str(tmp_path / "run"), "--task", "choice", "--input", str(unlabelled),
                 "--output", str(out)]) == 0
    with out.open(encoding="utf-8") as f:
        predicted = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert [p["prediction"] for p in predicted] == [w["prediction"] for w in written]

    # the MLflow pyfunc model takes the family's fields as DataFrame columns (None: an absent ending)
    model = TaskModel("choice")
    model.loaded = load(tmp_path / "run")
    frame = pd.DataFrame([{"context": r["premise"], **dict(zip(ENDINGS, r["endings"] + [None] * 5))}
                          for r in gold])
    assert [str(p) for p in model.predict(None, frame)] == [w["prediction"] for w in written]
