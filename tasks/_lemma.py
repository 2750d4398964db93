"""Lemmas as edit scripts (UDify / UDPipe style), so a classifier can lemmatise words it never saw.

A script has two parts:
- casing: where the lemma switches between upper and lower case, as positions counted from the
  start (first half) or from the end (second half); uncased characters (digits, punctuation)
  continue the case before them. "" is all lower case, "↑0" all upper, "↑0¦↓1" capitalised.
- edit on the lower-cased form: drop characters at the start and end and add strings there,
  around the longest common substring of form and lemma ("ran" → "run" keeps "r", drops "an"
  and adds "un"). With nothing in common, the script stores the whole lemma ("=").

Scripts are JSON strings, so they are ordinary labels in a vocabulary.
"""

from __future__ import annotations

import json
from difflib import SequenceMatcher
from functools import lru_cache

UP, DOWN, SEP = "↑", "↓", "¦"


def _casing(lemma: str) -> str:
    marks: list[str] = []
    upper = False
    n = len(lemma)
    for i, ch in enumerate(lemma):
        if ch.lower() == ch.upper():  # uncased
            continue
        is_upper = ch != ch.lower()
        if is_upper != upper:
            pos = i if i < (n + 1) // 2 else i - n
            marks.append(f"{UP if is_upper else DOWN}{pos}")
            upper = is_upper
    return SEP.join(marks)


def _apply_casing(text: str, casing: str) -> str:
    if not casing:
        return text
    n = len(text)
    runs = []
    for mark in casing.split(SEP):
        pos = int(mark[1:])
        runs.append((pos if pos >= 0 else n + pos, mark[0] == UP))
    out = [text[: max(0, runs[0][0])]]
    for k, (start, upper) in enumerate(runs):
        end = runs[k + 1][0] if k + 1 < len(runs) else n
        piece = text[max(0, start) : max(0, end)]
        out.append(piece.upper() if upper else piece)
    return "".join(out)


@lru_cache(maxsize=200_000)
def edit_script(form: str, lemma: str) -> str:
    """The script turning `form` into `lemma`; applying it gives `lemma` back (checked)."""
    f, lem = form.lower(), lemma.lower()
    match = SequenceMatcher(None, f, lem, autojunk=False).find_longest_match(0, len(f), 0, len(lem))
    if match.size:
        edit = [match.a, lem[: match.b], len(f) - match.a - match.size, lem[match.b + match.size :]]
        script = json.dumps([_casing(lemma), *edit], ensure_ascii=False)
        if apply_script(form, script) == lemma:
            return script
    return json.dumps(["=", lemma], ensure_ascii=False)


@lru_cache(maxsize=200_000)
def apply_script(form: str, script: str) -> str:
    """Apply an edit script; a script that does not fit the form (too short) returns the form."""
    parts = json.loads(script)
    if parts[0] == "=":
        return parts[1]
    casing, drop_start, add_start, drop_end, add_end = parts
    f = form.lower()
    if drop_start + drop_end > len(f):
        return form
    core = f[drop_start : len(f) - drop_end]
    return _apply_casing(add_start + core + add_end, casing)
