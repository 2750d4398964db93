"""CoNLL 2018 metrics on hand-worked sentences, and lemma edit scripts on real data."""

from __future__ import annotations

import pytest

from tasks._conllu_io import read_conllu
from tasks._lemma import apply_script, edit_script
from tasks._ud_metrics import Word, evaluate, universal_feats

NOM = "Case=Nom|Number=Sing|Person=3|PronType=Prs"
FIN = "Mood=Ind|Number=Sing|Tense=Pres|VerbForm=Fin"

# She has eaten the apples .
GOLD = [
    Word("She", "she", "PRON", "PRP", NOM, 3, "nsubj:pass"),
    Word("has", "have", "AUX", "VBZ", FIN, 3, "aux"),
    Word("eaten", "eat", "VERB", "VBN", "Tense=Past|VerbForm=Part", 0, "root"),
    Word("the", "the", "DET", "DT", "Definite=Def|PronType=Art", 5, "det"),
    Word("apples", "apple", "NOUN", "NNS", "Foo=Bar|Number=Plur", 3, "obj"),
    Word(".", "_", "PUNCT", ".", "_", 3, "punct"),
]
SYSTEM = [
    # features in another order, relation without its subtype: both still right
    Word("She", "she", "PRON", "PRP", "PronType=Prs|Case=Nom|Number=Sing|Person=3", 3, "nsubj"),
    Word("has", "has", "AUX", "VBZ", FIN, 3, "aux"),  # lemma wrong
    Word("eaten", "eat", "VERB", "VBD", "Tense=Past|VerbForm=Part", 0, "root"),  # XPOS wrong
    Word("the", "the", "DET", "DT", "Definite=Def|PronType=Art", 3, "det"),  # head wrong
    Word("apples", "apple", "NOUN", "NNS", "Number=Plur", 3, "obl"),  # relation wrong; Foo is not universal
    Word(".", ".", "PUNCT", ".", "_", 5, "discourse"),  # head and relation wrong; gold lemma '_' = right
]


def test_hand_worked_sentence():
    m = evaluate([GOLD], [SYSTEM])
    # 6 words. Tags: only XPOS of "eaten" is wrong.
    assert m["UPOS"] == pytest.approx(100.0)
    assert m["XPOS"] == pytest.approx(100 * 5 / 6)
    assert m["UFeats"] == pytest.approx(100.0)
    assert m["AllTags"] == pytest.approx(100 * 5 / 6)
    # Lemmas: "has" wrong; "." right because its gold lemma is '_'.
    assert m["Lemmas"] == pytest.approx(100 * 5 / 6)
    # Heads: "the" and "." wrong → 4/6. Labels: also "apples" (obl ≠ obj) → 3/6.
    assert m["UAS"] == pytest.approx(100 * 4 / 6)
    assert m["LAS"] == pytest.approx(100 * 3 / 6)
    # Content words: gold She, eaten, apples (3); system She, eaten, apples, "." as discourse (4).
    # CLAS correct: She, eaten → F1 = 2·2 / (3 + 4).
    assert m["CLAS"] == pytest.approx(100 * 4 / 7)
    # MLAS: "eaten" has functional children [has/aux] in gold but [has/aux, the/det] in the
    # system, so only "She" is right → 2·1 / 7.
    assert m["MLAS"] == pytest.approx(100 * 2 / 7)
    # BLEX: She (she) and eaten (eat) have right heads, relations and lemmas → 2·2 / 7.
    assert m["BLEX"] == pytest.approx(100 * 4 / 7)


def test_perfect_copy_scores_100_and_corpus_counts_words():
    m = evaluate([GOLD], [GOLD])
    assert all(v == pytest.approx(100.0) for v in m.values())
    # Two sentences: the wrong one (6 words) and a copy (6 words) → UAS (4 + 6) / 12.
    m2 = evaluate([GOLD, GOLD], [SYSTEM, GOLD])
    assert m2["UAS"] == pytest.approx(100 * 10 / 12)
    assert m2["CLAS"] == pytest.approx(100 * 2 * (2 + 3) / (6 + 7))


def test_mlas_checks_functional_children_features():
    system = list(GOLD)
    system[1] = Word("has", "have", "AUX", "VBZ", "Mood=Ind", 3, "aux")  # the aux child's features differ
    m = evaluate([GOLD], [system])
    assert m["UFeats"] == pytest.approx(100 * 5 / 6)
    assert m["LAS"] == pytest.approx(100.0)
    assert m["CLAS"] == pytest.approx(100.0)
    # "eaten" is now wrong in MLAS (its child differs); She and apples stay right → 2·2 / 6.
    assert m["MLAS"] == pytest.approx(100 * 4 / 6)


def test_mismatched_words_are_refused():
    with pytest.raises(ValueError, match="words"):
        evaluate([GOLD], [SYSTEM[:5]])


def test_universal_feats():
    assert universal_feats("_") == ""
    assert universal_feats("Number[psor]=Sing|Typo=Yes|Case=Gen|Animacy=Anim") == "Animacy=Anim|Case=Gen"


@pytest.mark.parametrize(
    ("form", "lemma"),
    [("running", "run"), ("Dogs", "dog"), ("USA", "USA"), ("McDonald's", "McDonald"), ("went", "go"),
     ("unhappiest", "unhappy"), ("Straße", "Straße"), ("3D", "3D"), ("NASA's", "NASA"), ("_", "_")],
)
def test_edit_scripts_reproduce_lemmas(form, lemma):
    assert apply_script(form, edit_script(form, lemma)) == lemma


def test_edit_scripts_generalise_to_unseen_words():
    # learned on one word, applied to another with the same inflection
    assert apply_script("walked", edit_script("jumped", "jump")) == "walk"
    assert apply_script("Cats", edit_script("Dogs", "dog")) == "cat"
    assert apply_script("Paris", edit_script("London", "London")) == "Paris"  # capitalised, unchanged
    assert apply_script("a", edit_script("running", "run")) == "a"  # does not fit: the form itself


def test_edit_scripts_cover_ewt_train(data_dir):
    sents = read_conllu(data_dir / "ud" / "en_ewt" / "train.conllu")
    pairs = [(f, lem) for s in sents for f, lem in zip(s.forms, s.column("lemma"), strict=True) if lem != "_"]
    ok = sum(apply_script(f, edit_script(f, lem)) == lem for f, lem in pairs)
    assert len(pairs) > 60_000
    assert ok / len(pairs) >= 0.99
    scripts = {edit_script(f, lem) for f, lem in pairs}
    assert len(scripts) < 500  # compact: a few hundred classes for ~65k tokens
