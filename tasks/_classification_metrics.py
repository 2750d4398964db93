"""Sentence-level metrics as GLUE reports them, computed from counts (no scikit-learn needed).

Every function returns a fraction in [0, 1] (correlations and MCC in [-1, 1]). Where a
metric is undefined (no positive examples for F1, a constant series for a correlation,
an all-one-class confusion matrix for MCC) it is 0.0, the value scikit-learn reports for
F1 and MCC, so that a degenerate early checkpoint scores low instead of NaN.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from scipy import stats

CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc", "accuracy_f1")
REGRESSION_METRICS = ("pearson", "spearman", "pearson_spearman")


def accuracy(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    _same_length(gold, pred)
    if not gold:
        return 0.0
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def _f1(tp: int, fp: int, fn: int) -> float:
    # F1 = 2TP / (2TP + FP + FN): the harmonic mean of precision and recall without dividing twice.
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def binary_f1(gold: Sequence[Hashable], pred: Sequence[Hashable], positive: Hashable) -> float:
    """F1 of the positive class (MRPC, QQP)."""
    _same_length(gold, pred)
    tp = sum(g == positive and p == positive for g, p in zip(gold, pred, strict=True))
    fp = sum(g != positive and p == positive for g, p in zip(gold, pred, strict=True))
    fn = sum(g == positive and p != positive for g, p in zip(gold, pred, strict=True))
    return _f1(tp, fp, fn)


def macro_f1(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in gold or predictions."""
    _same_length(gold, pred)
    classes = set(gold) | set(pred)
    if not classes:
        return 0.0
    pairs = Counter(zip(gold, pred, strict=True))
    scores = []
    for c in classes:
        tp = pairs[(c, c)]
        fp = sum(n for (g, p), n in pairs.items() if p == c and g != c)
        fn = sum(n for (g, p), n in pairs.items() if g == c and p != c)
        scores.append(_f1(tp, fp, fn))
    return float(sum(scores) / len(scores))


def mcc(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """Matthews correlation (CoLA); the multi-class form (Gorodkin 2004) equals the binary one for two classes."""
    _same_length(gold, pred)
    classes = sorted(set(gold) | set(pred), key=str)
    index = {c: i for i, c in enumerate(classes)}
    conf = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for g, p in zip(gold, pred, strict=True):
        conf[index[g], index[p]] += 1
    n = conf.sum()
    correct = np.trace(conf)
    true_counts = conf.sum(axis=1)  # t_k: how often class k occurs
    pred_counts = conf.sum(axis=0)  # p_k: how often class k is predicted
    cov_tp = correct * n - true_counts @ pred_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_tt = n * n - true_counts @ true_counts
    denom = math.sqrt(cov_pp * cov_tt)
    return float(cov_tp / denom) if denom else 0.0


def _correlation(fn: Callable, gold: Sequence[float], pred: Sequence[float]) -> float:
    _same_length(gold, pred)
    x = np.asarray(gold, dtype=np.float64)
    y = np.asarray(pred, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(x, y)[0])
    return 0.0 if math.isnan(value) else value


def pearson(gold: Sequence[float], pred: Sequence[float]) -> float:
    return _correlation(stats.pearsonr, gold, pred)


def spearman(gold: Sequence[float], pred: Sequence[float]) -> float:
    return _correlation(stats.spearmanr, gold, pred)


def classification_scores(
    names: Sequence[str], gold: Sequence[Hashable], pred: Sequence[Hashable], positive: Hashable | None = None
) -> dict[str, float]:
    """The requested metrics; `positive` is needed for f1 and accuracy_f1 (GLUE's MRPC score)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(gold, pred)
        elif name == "f1":
            out[name] = binary_f1(gold, pred, positive)
        elif name == "macro_f1":
            out[name] = macro_f1(gold, pred)
        elif name == "mcc":
            out[name] = mcc(gold, pred)
        elif name == "accuracy_f1":
            out[name] = (accuracy(gold, pred) + binary_f1(gold, pred, positive)) / 2
        else:
            raise ValueError(f"unknown classification metric {name!r} (known: {', '.join(CLASSIFICATION_METRICS)})")
    return out


def regression_scores(names: Sequence[str], gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """The requested correlations; pearson_spearman is their mean (GLUE's STS-B score)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "pearson":
            out[name] = pearson(gold, pred)
        elif name == "spearman":
            out[name] = spearman(gold, pred)
        elif name == "pearson_spearman":
            out[name] = (pearson(gold, pred) + spearman(gold, pred)) / 2
        else:
            raise ValueError(f"unknown regression metric {name!r} (known: {', '.join(REGRESSION_METRICS)})")
    return out


def _same_length(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold values but {len(pred)} predictions")
