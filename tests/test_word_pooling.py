"""Word-level heads read real pieces: a bare SentencePiece "▁" never stands for a word."""

from __future__ import annotations

import pytest
import torch
from conftest import E5

from tasks.base import encode_words, pool_words

ZH = ["中国", "的", "经济", "发展", "很", "快", "。"]
JA = ["今日", "は", "晴れ", "です", "。"]
EN = ["The", "economy", "grows", "unbelievably", "fast"]
DE = ["Die", "Wirtschaftsentwicklung", "bleibt", "stabil"]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(E5))


def _pieces_by_word(tok, words: list[str]) -> list[list[str]]:
    """Each word's pieces, read independently of encode_words from the tokenizer's word ids."""
    enc = tok(words, is_split_into_words=True, add_special_tokens=False)
    out: list[list[str]] = [[] for _ in words]
    for tok_id, w in zip(enc["input_ids"], enc.word_ids()):
        out[w].append(tok.convert_ids_to_tokens(tok_id))
    return out


@pytest.mark.parametrize("words", [ZH, JA])
def test_cjk_words_are_not_read_at_a_bare_marker(tok, words):
    pieces = _pieces_by_word(tok, words)
    assert sum(p[0] == "▁" for p in pieces) >= len(words) // 2  # the problem is real for this tokenizer
    (window,) = encode_words(tok, words, 128)
    read = tok.convert_ids_to_tokens([window["input_ids"][s] for s in window["word_starts"]])
    assert "▁" not in read
    for j, (s, e) in enumerate(zip(window["word_starts"], window["word_ends"])):
        span = tok.convert_ids_to_tokens(window["input_ids"][s : e + 1])
        assert span == [p for p in pieces[j] if p != "▁"]  # the word's own characters, nothing else


@pytest.mark.parametrize("words", [EN, DE])
def test_other_words_keep_their_first_piece(tok, words):
    enc = tok(words, is_split_into_words=True, add_special_tokens=True)
    first = {}
    for pos, w in enumerate(enc.word_ids()):
        if w is not None:
            first.setdefault(w, pos)
    (window,) = encode_words(tok, words, 128)
    assert window["word_starts"] == [first[j] for j in range(len(words))]
    last = [max(p for p, w in enumerate(enc.word_ids()) if w == j) for j in range(len(words))]
    assert window["word_ends"] == last


def test_punctuation_is_read_at_its_character(tok):
    # this vocabulary writes a sentence-final "." as a bare "▁" and then "."
    assert _pieces_by_word(tok, ["fast", "."])[1] == ["▁", "."]
    (window,) = encode_words(tok, ["fast", "."], 16)
    assert tok.convert_ids_to_tokens(window["input_ids"][window["word_starts"][1]]) == "."


def test_windows_still_cut_at_word_boundaries(tok):
    words = ZH * 12
    windows = encode_words(tok, words, 24)
    assert len(windows) > 1
    assert sum(len(w["word_starts"]) for w in windows) == len(words)
    for w in windows:
        assert len(w["input_ids"]) <= 24
        assert all(s <= e < len(w["input_ids"]) - 1 for s, e in zip(w["word_starts"], w["word_ends"]))


def test_pool_words_by_hand():
    x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0]]])
    starts = torch.tensor([[1, 4]])
    ends = torch.tensor([[3, 4]])
    assert pool_words(x, starts, ends, "first").tolist() == [[[2.0, 20.0], [5.0, 50.0]]]
    assert pool_words(x, starts, ends, "last").tolist() == [[[4.0, 40.0], [5.0, 50.0]]]
    assert pool_words(x, starts, ends, "mean").tolist() == [[[3.0, 30.0], [5.0, 50.0]]]
    with pytest.raises(ValueError, match="first, mean or last"):
        pool_words(x, starts, ends, "max")
