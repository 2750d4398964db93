"""Entity tag schemes: read IOB1 / IOB2 / BIOES tags as spans, write spans as BIO or BIOES.

Going through spans makes every conversion the same two steps, and it is where
ill-formed sequences (I-PER right after O in an IOB2 file) are found and counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TAG = re.compile(r"^(?:O|[BIES]-\S.*)$")
INPUT_SCHEMES = ("IOB1", "IOB2", "BIOES")


@dataclass(frozen=True)
class Span:
    start: int  # first token
    end: int  # one past the last token
    type: str


@dataclass(frozen=True)
class Repair:
    index: int  # token where the sequence broke the scheme
    reason: str


def is_tag(tag: str) -> bool:
    return bool(TAG.match(tag))


def detect_scheme(sequences: Sequence[Sequence[str]]) -> str:
    """IOB1, IOB2 or BIOES for the tags of one file.

    BIOES when E- or S- occurs. IOB1 when entities open with I- and every B- directly follows
    an entity of its own type (the only place IOB1 uses B-); anything else is IOB2.
    """
    opens_with_i = False
    for tags in sequences:
        prev = "O"
        for tag in tags:
            if tag[:2] in ("E-", "S-"):
                return "BIOES"
            if tag.startswith("B-") and (prev == "O" or prev[2:] != tag[2:]):
                return "IOB2"
            if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
                opens_with_i = True
            prev = tag
    return "IOB1" if opens_with_i else "IOB2"


def to_spans(tags: Sequence[str], scheme: str) -> tuple[list[Span], list[Repair]]:
    """Entity spans of one sentence, and where it had to be read leniently (as conlleval does).

    IOB1: I-X opens an entity unless it continues one of type X; that is the rule, not a repair.
    IOB2 and BIOES: an I-X (or E-X) that does not continue an X entity is repaired into the start
    of a new one; in BIOES an entity left open without E-X is closed where it stops.
    """
    spans: list[Span] = []
    repairs: list[Repair] = []
    start, kind = -1, ""
    strict = scheme != "IOB1"

    def close(at: int, properly: bool) -> None:
        nonlocal start, kind
        if start >= 0:
            if scheme == "BIOES" and not properly:
                repairs.append(Repair(start, f"{kind} entity opened here is not closed by E-{kind}"))
            spans.append(Span(start, at, kind))
        start, kind = -1, ""

    for i, tag in enumerate(tags):
        if tag == "O":
            close(i, False)
            continue
        prefix, typ = tag[0], tag[2:]
        continues = start >= 0 and kind == typ
        if prefix in ("I", "E") and not continues:
            if strict:
                before = tags[i - 1] if i > 0 else "sentence start"
                repairs.append(Repair(i, f"{tag} after {before}"))
            close(i, False)
            start, kind = i, typ
        elif prefix in ("B", "S"):
            close(i, False)
            start, kind = i, typ
        if prefix in ("E", "S"):
            close(i + 1, True)
    close(len(tags), False)
    return spans, repairs


def from_spans(spans: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Tags for `length` tokens in BIO (IOB2) or BIOES."""
    tags = ["O"] * length
    for span in spans:
        n = span.end - span.start
        if scheme == "BIOES" and n == 1:
            tags[span.start] = f"S-{span.type}"
            continue
        tags[span.start] = f"B-{span.type}"
        for j in range(span.start + 1, span.end):
            tags[j] = f"I-{span.type}"
        if scheme == "BIOES":
            tags[span.end - 1] = f"E-{span.type}"
    return tags


def label_set(types: Sequence[str], scheme: str) -> list[str]:
    """Every tag of the scheme for the given entity types, 'O' first, in a stable order."""
    prefixes = ("B", "I", "E", "S") if scheme == "BIOES" else ("B", "I")
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in prefixes]
