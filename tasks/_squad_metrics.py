"""Extractive QA metrics: SQuAD exact match and token F1, and the character-level Chinese variant.

English (and every language but Chinese) follows the official SQuAD v1.1 evaluation: lower-case,
drop punctuation, drop the articles a/an/the, collapse whitespace, then bag-of-tokens F1. An empty
prediction or gold answer (SQuAD v2 "no answer") scores 1 only against another empty one.

Chinese follows the CMRC 2018 / DRCD evaluation: every CJK character is a token, runs of other
characters are split on whitespace, punctuation (Chinese and English) is removed, and F1 is
computed from the longest common run of tokens. Both take the best score over the gold answers.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

ARTICLES = re.compile(r"\b(a|an|the)\b")
ENGLISH_PUNCTUATION = frozenset(string.punctuation)
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")


# --------------------------------------------------------------------------- SQuAD (English)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in ENGLISH_PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    return overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def overlap_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Bag-of-tokens F1; two empty answers agree, an empty one against a non-empty one scores 0."""
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- Chinese


def is_punctuation(ch: str) -> bool:
    """ASCII punctuation or any Unicode punctuation (，。「」《》、…) character."""
    return ch in ENGLISH_PUNCTUATION or unicodedata.category(ch).startswith("P")


def chinese_tokens(text: str) -> list[str]:
    """Each CJK character alone; other characters grouped into whitespace-separated runs; no punctuation."""
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower().strip():
        if is_punctuation(ch):
            continue
        if CJK.match(ch) or ch.isspace():
            if run:
                tokens.append("".join(run))
                run = []
            if not ch.isspace():
                tokens.append(ch)
        else:
            run.append(ch)
    if run:
        tokens.append("".join(run))
    return tokens


def chinese_exact(prediction: str, gold: str) -> float:
    def strip(s: str) -> str:
        return "".join(ch for ch in s.lower().strip() if not is_punctuation(ch))

    return float(strip(prediction) == strip(gold))


def chinese_f1(prediction: str, gold: str) -> float:
    pred, ref = chinese_tokens(prediction), chinese_tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = longest_common_run(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous sequence of tokens found in both."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


# --------------------------------------------------------------------------- per dataset


def metrics_for(language: str) -> tuple[Callable[[str, str], float], Callable[[str, str], float]]:
    """(exact, f1) for a dataset language: the character-level pair for Chinese ('zh', 'zh-TW', …)."""
    if language.lower().startswith("zh"):
        return chinese_exact, chinese_f1
    return squad_exact, squad_f1


def best_over(metric: Callable[[str, str], float], prediction: str, golds: Iterable[str]) -> float:
    """The best score over the gold answers; no gold answer means the right output is the empty string."""
    golds = list(golds) or [""]
    return max(metric(prediction, g) for g in golds)


def evaluate(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]], language: str) -> dict[str, float]:
    """Exact match and F1 (×100) over all questions; with unanswerable questions, also per kind."""
    exact_fn, f1_fn = metrics_for(language)
    missing = [qid for qid in golds if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    return from_rows([(best_over(exact_fn, predictions[qid], g), best_over(f1_fn, predictions[qid], g), bool(g))
                      for qid, g in golds.items()])


def from_rows(rows: Sequence[tuple[float, float, bool]]) -> dict[str, float]:
    """The metrics from each question's (exact, f1, has an answer): means over questions, so a resample of
    questions (the paired bootstrap) is scored from rows computed once."""
    out = _averages(rows, "")
    if any(not has for *_, has in rows):
        out.update(_averages([r for r in rows if r[2]], "has_ans_"))
        out.update(_averages([r for r in rows if not r[2]], "no_ans_"))
    return out


def _averages(rows: Iterable[tuple[float, float, bool]], prefix: str) -> dict[str, float]:
    """Percentages only: counts are not metrics (see question_counts)."""
    rows = list(rows)
    n = max(len(rows), 1)
    return {
        f"{prefix}exact_match": 100 * sum(r[0] for r in rows) / n,
        f"{prefix}f1": 100 * sum(r[1] for r in rows) / n,
    }


def question_counts(golds: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """How many questions were scored, with and without an answer (reported beside the metrics)."""
    has = sum(1 for g in golds.values() if g)
    return {"questions": len(golds), "has_answer": has, "no_answer": len(golds) - has}
