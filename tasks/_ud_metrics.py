"""CoNLL 2018 shared-task metrics on gold tokenisation (words, not multi-word tokens or empty nodes).

Same definitions as the official conll18_ud_eval.py, for the case where system and gold share
their words, so every word is aligned with itself:
- UFeats compares universal features only (sorted); "_" is the empty set.
- LAS, CLAS, MLAS, BLEX compare the universal part of DEPREL (before ':').
- Lemmas: a gold lemma "_" counts as correct whatever the system says.
- CLAS, MLAS, BLEX count content words only (relations in CONTENT_DEPRELS: not aux, case, cc,
  clf, cop, det, mark, punct); they are F1 scores, 2·correct / (gold content + system content),
  since the system may label a different number of words as content words.
- MLAS also needs UPOS, UFeats and the functional children (aux, case, cc, clf, cop, det, mark)
  with their relation, UPOS and UFeats; BLEX also needs the lemma.
All values are percentages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

CONTENT_DEPRELS = frozenset(
    "nsubj obj iobj csubj ccomp xcomp obl vocative expl dislocated advcl advmod discourse nmod appos "
    "nummod acl amod conj fixed flat compound list parataxis orphan goeswith reparandum root dep".split()
)
FUNCTIONAL_DEPRELS = frozenset("aux cop mark det clf case cc".split())
UNIVERSAL_FEATURES = frozenset(
    "PronType NumType Poss Reflex Foreign Abbr Gender Animacy Number Case Definite Degree VerbForm Mood "
    "Tense Aspect Voice Evident Polarity Person Polite".split()
)
METRICS = ("UPOS", "XPOS", "UFeats", "AllTags", "Lemmas", "UAS", "LAS", "CLAS", "MLAS", "BLEX")


@dataclass(frozen=True)
class Word:
    """The columns of one syntactic word that the metrics read (head 0 is ROOT)."""

    form: str
    lemma: str
    upos: str
    xpos: str
    feats: str
    head: int
    deprel: str


def universal_feats(feats: str) -> str:
    return "|".join(sorted(f for f in feats.split("|") if f.split("=", 1)[0] in UNIVERSAL_FEATURES))


def universal_deprel(deprel: str) -> str:
    return deprel.split(":", 1)[0]


def _norm(w: Word) -> Word:
    """The word as the metrics compare it: universal features and relation subtypes only."""
    return dataclasses.replace(w, feats=universal_feats(w.feats), deprel=universal_deprel(w.deprel))


def _functional_children(sent: Sequence[Word]) -> list[list[tuple]]:
    kids: list[list[tuple]] = [[] for _ in sent]
    for i, w in enumerate(sent, start=1):
        if w.head > 0 and w.deprel in FUNCTIONAL_DEPRELS:
            kids[w.head - 1].append((i, w.deprel, w.upos, w.feats))
    return kids


COUNTS = (*METRICS, "words", "content_gold", "content_sys")  # what a sentence adds to a corpus's scores


def sentence_counts(k: int, gs: Sequence[Word], ss: Sequence[Word]) -> list[int]:
    """What sentence `k` adds to each count of COUNTS: the corpus scores are ratios of these sums, so a
    resample of sentences (the paired bootstrap) is scored by adding its sentences' counts."""
    if len(gs) != len(ss):
        raise ValueError(f"sentence {k}: {len(gs)} gold words but {len(ss)} system words")
    if [w.form for w in gs] != [w.form for w in ss]:
        raise ValueError(f"sentence {k}: gold and system words differ")
    correct = dict.fromkeys(METRICS, 0)
    g = [_norm(w) for w in gs]
    s = [_norm(w) for w in ss]
    g_kids, s_kids = _functional_children(g), _functional_children(s)
    content_gold = 0
    content_sys = sum(w.deprel in CONTENT_DEPRELS for w in s)
    for gw, sw, gk, sk in zip(g, s, g_kids, s_kids, strict=True):
        lemma_ok = gw.lemma == "_" or gw.lemma == sw.lemma
        las = gw.head == sw.head and gw.deprel == sw.deprel
        correct["UPOS"] += gw.upos == sw.upos
        correct["XPOS"] += gw.xpos == sw.xpos
        correct["UFeats"] += gw.feats == sw.feats
        correct["AllTags"] += (gw.upos, gw.xpos, gw.feats) == (sw.upos, sw.xpos, sw.feats)
        correct["Lemmas"] += lemma_ok
        correct["UAS"] += gw.head == sw.head
        correct["LAS"] += las
        if gw.deprel in CONTENT_DEPRELS:
            content_gold += 1
            correct["CLAS"] += las
            correct["MLAS"] += las and (gw.upos, gw.feats, gk) == (sw.upos, sw.feats, sk)
            correct["BLEX"] += las and lemma_ok
    return [*(correct[m] for m in METRICS), len(g), content_gold, content_sys]


def from_counts(totals: Sequence[float]) -> dict[str, float]:
    """The ten metrics from summed COUNTS."""
    t = dict(zip(COUNTS, totals, strict=True))
    out: dict[str, float] = {}
    for name in METRICS:
        if name in ("CLAS", "MLAS", "BLEX"):
            total = t["content_gold"] + t["content_sys"]
            out[name] = 100.0 * 2 * t[name] / total if total else 0.0
        else:
            out[name] = 100.0 * t[name] / t["words"] if t["words"] else 0.0
    return out


def evaluate(gold: Sequence[Sequence[Word]], system: Sequence[Sequence[Word]]) -> dict[str, float]:
    """All ten metrics over a corpus; gold and system must have the same words in each sentence."""
    if len(gold) != len(system):
        raise ValueError(f"{len(gold)} gold sentences but {len(system)} system sentences")
    totals = [0] * len(COUNTS)
    for k, (gs, ss) in enumerate(zip(gold, system, strict=True)):
        totals = [a + b for a, b in zip(totals, sentence_counts(k, gs, ss), strict=True)]
    return from_counts(totals)
