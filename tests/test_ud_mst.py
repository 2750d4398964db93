"""Tree decoding: Chu-Liu-Edmonds with one root, against brute force over all trees."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tasks._mst import argmax_heads, is_tree, mst_heads, tree_score


def _brute_force_best(scores: np.ndarray) -> float:
    """Best score over every head assignment that is a tree with one root."""
    n = len(scores) - 1
    best = -np.inf
    for heads in itertools.product(range(n + 1), repeat=n):
        h = [-1, *heads]
        if any(h[d] == d for d in range(1, n + 1)) or not is_tree(h):
            continue
        best = max(best, tree_score(scores, h))
    return best


def _matrices(min_n: int, max_n: int):
    return st.integers(min_n, max_n).flatmap(
        lambda n: arrays(np.float64, (n + 1, n + 1), elements=st.floats(-20, 20, allow_nan=False, width=32))
    )


@settings(max_examples=150, deadline=None)
@given(_matrices(2, 7))
def test_mst_always_returns_a_tree_with_one_root(scores):
    heads = mst_heads(scores)
    assert heads[0] == -1
    assert is_tree(heads)
    assert int((heads[1:] == 0).sum()) == 1


@settings(max_examples=120, deadline=None)
@given(_matrices(2, 5))
def test_mst_score_equals_brute_force_maximum(scores):
    heads = mst_heads(scores)
    assert tree_score(scores, heads) == pytest.approx(_brute_force_best(scores), abs=1e-6)


def test_single_root_is_enforced_when_every_word_prefers_root():
    # Every word's best head is ROOT; the best single-root tree puts word 2 on ROOT.
    scores = np.array([
        [0, 0, 0, 0],
        [10, 0, 5, 1],
        [12, 2, 0, 1],
        [10, 1, 6, 0],
    ], dtype=float)
    assert argmax_heads(scores).tolist() == [-1, 0, 0, 0]
    assert mst_heads(scores).tolist() == [-1, 2, 0, 2]


def test_cycle_is_broken_at_its_cheapest_arc():
    # Words 1 and 2 prefer each other (a cycle); entering the cycle from ROOT at word 1 costs
    # 9 - 8 = 1 less than the cycle arc, at word 2: 9 - 2 = 7; so ROOT → 1 → 2, and 3 hangs on 2.
    scores = np.array([
        [0, 0, 0, 0],
        [8, 0, 9, 0],
        [2, 9, 0, 0],
        [0, 1, 3, 0],
    ], dtype=float)
    assert argmax_heads(scores).tolist() == [-1, 2, 1, 2]
    assert mst_heads(scores).tolist() == [-1, 0, 1, 2]


def test_one_word_and_non_finite_scores():
    assert mst_heads(np.array([[0.0, 0.0], [3.0, 0.0]])).tolist() == [-1, 0]
    with pytest.raises(ValueError, match="finite"):
        mst_heads(np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 1.0], [1.0, 2.0, 0.0]]))


def test_is_tree_rejects_cycles_and_two_roots():
    assert is_tree([-1, 0, 1, 2])
    assert not is_tree([-1, 0, 0, 2])  # two roots
    assert not is_tree([-1, 0, 3, 2])  # 2 ↔ 3
