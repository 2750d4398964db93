"""Maximum spanning trees for dependency parsing (Chu-Liu-Edmonds), single root enforced.

Scores are a square matrix `scores[dep, head]` over nodes 0..n, node 0 being the artificial
ROOT. The result is a head array with `heads[0] == -1` and, for every word, a head such that
the arcs form a tree hanging from ROOT with exactly one word attached to ROOT.
"""

from __future__ import annotations

import numpy as np


def _find_cycle(heads: np.ndarray) -> list[int] | None:
    """The nodes of one cycle in a head array (heads[0] == -1), or None when it is a forest."""
    n = len(heads)
    state = np.zeros(n, dtype=np.int8)  # 0 unvisited, 1 on the current path, 2 done
    state[0] = 2
    for start in range(1, n):
        path = []
        node = start
        while state[node] == 0:
            state[node] = 1
            path.append(node)
            node = int(heads[node])
        if state[node] == 1:  # came back to the current path: a cycle
            return path[path.index(node) :]
        for p in path:
            state[p] = 2
    return None


def _arborescence(scores: np.ndarray) -> np.ndarray:
    """Maximum spanning arborescence rooted at node 0 (any number of root children)."""
    n = len(scores)
    s = scores.copy()
    np.fill_diagonal(s, -np.inf)
    s[0, :] = -np.inf
    heads = s.argmax(axis=1)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    cyc = np.asarray(cycle)
    in_cycle = np.zeros(n, dtype=bool)
    in_cycle[cyc] = True
    rest = np.flatnonzero(~in_cycle)  # always holds node 0, which is never in a cycle
    m = len(rest) + 1  # the contracted graph: the nodes outside the cycle, then the cycle as one node
    sub = np.full((m, m), -np.inf)
    sub[: m - 1, : m - 1] = s[np.ix_(rest, rest)]
    # Entering the cycle at v from h replaces v's cycle arc: gain s[v, h] - s[v, heads[v]].
    gain = s[np.ix_(cyc, rest)] - s[cyc, heads[cyc]][:, None]
    enter = gain.argmax(axis=0)
    sub[m - 1, : m - 1] = gain[enter, np.arange(len(rest))]
    # Leaving the cycle towards d: the best cycle node as d's head.
    out = s[np.ix_(rest, cyc)]
    leave = out.argmax(axis=1)
    sub[: m - 1, m - 1] = out[np.arange(len(rest)), leave]
    sub_heads = _arborescence(sub)
    result = heads.copy()
    for i, node in enumerate(rest):
        if node == 0:
            continue
        h = sub_heads[i]
        result[node] = cyc[leave[i]] if h == m - 1 else rest[h]
    h_c = sub_heads[m - 1]
    result[cyc[enter[h_c]]] = rest[h_c]
    return result


def mst_heads(scores: np.ndarray) -> np.ndarray:
    """Best tree with exactly one word attached to ROOT; `scores[dep, head]` of shape (n+1, n+1).

    A single root is enforced by lowering every ROOT arc by more than the spread of any two
    trees' scores: the best arborescence then uses one ROOT arc, and among those it is the best.
    """
    s = np.array(scores, dtype=np.float64)
    n = len(s) - 1
    if n < 1:
        return np.full(len(s), -1, dtype=np.int64)
    if not np.isfinite(s[1:]).all():
        raise ValueError("arc scores must be finite")
    spread = float(s[1:].max() - s[1:].min())
    s[1:, 0] -= (spread + 1.0) * (n + 1)
    return _arborescence(s).astype(np.int64)


def argmax_heads(scores: np.ndarray) -> np.ndarray:
    """Each word's best head on its own (no self-loops); may contain cycles or several roots."""
    s = np.array(scores, dtype=np.float64)
    np.fill_diagonal(s, -np.inf)
    heads = s.argmax(axis=1)
    heads[0] = -1
    return heads.astype(np.int64)


def is_tree(heads: np.ndarray | list[int]) -> bool:
    """One word on ROOT, every word reachable from ROOT (heads[0] is ignored)."""
    h = np.asarray(heads)
    if len(h) < 2:
        return True
    if int((h[1:] == 0).sum()) != 1 or (h[1:] < 0).any() or (h[1:] >= len(h)).any():
        return False
    h = h.copy()
    h[0] = -1
    return _find_cycle(h) is None


def tree_score(scores: np.ndarray, heads: np.ndarray | list[int]) -> float:
    h = np.asarray(heads)
    return float(sum(scores[d, h[d]] for d in range(1, len(h))))
