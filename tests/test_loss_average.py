"""The loss of a data-parallel step is the mean over the items of the global batch (mtl/loss.py):
hand-worked numbers, each family's sums and counts, and two gloo processes against one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from mtl.encoder import LastLayer
from mtl.loss import global_mean_loss, scale_loss
from mtl.runtime import Runtime
from tasks._crf import CRF
from tasks.base import EncoderInfo, loss_output
from tasks.classification import ClassificationHead
from tasks.ner import TaggingHead
from tasks.qa import SpanHead

# --------------------------------------------------------------------------- the rule, by hand


def test_scaled_rank_losses_average_to_the_global_mean():
    # Two ranks, two loss terms. Rank 0: term sums 3 and 1 over 3 and 1 items; rank 1: 1 and 4 over 1 and 3.
    # Global means: (3 + 1) / 4 = 1 and (1 + 4) / 4 = 1.25, so the loss of the whole batch is 2.25.
    counts = torch.tensor([4.0, 4.0])
    rank0 = scale_loss(torch.tensor([3.0, 1.0]), counts, world=2)  # 2 · (3/4 + 1/4) = 2
    rank1 = scale_loss(torch.tensor([1.0, 4.0]), counts, world=2)  # 2 · (1/4 + 4/4) = 2.5
    assert float(rank0) == pytest.approx(2.0) and float(rank1) == pytest.approx(2.5)
    assert float((rank0 + rank1) / 2) == pytest.approx(2.25)  # what DDP's mean over ranks gives
    # the mean of the per-rank means is another number: ((1 + 1) + (1 + 4/3)) / 2 = 2.1667
    per_rank_means = (3 / 3 + 1 / 1 + 1 / 1 + 4 / 3) / 2
    assert per_rank_means == pytest.approx(2.1667, abs=1e-4) and abs(per_rank_means - 2.25) > 0.05


def test_a_term_without_items_anywhere_adds_zero():
    assert float(scale_loss(torch.tensor([0.0, 6.0]), torch.tensor([0.0, 3.0]), world=2)) == pytest.approx(4.0)


def test_single_process_loss_is_the_local_mean_and_heads_without_counts_keep_theirs():
    sums = [torch.tensor(6.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)]
    out = loss_output(sums, [3, torch.tensor(4)])
    assert out["loss_count"].tolist() == [3.0, 4.0]
    loss, logged = global_mean_loss(out, Runtime())
    assert float(loss.detach()) == pytest.approx(6 / 3 + 2 / 4) and logged == pytest.approx(2.5)
    loss.backward()
    assert [float(s.grad) for s in sums] == pytest.approx([1 / 3, 1 / 4])
    plain = torch.tensor(0.7)
    assert global_mean_loss({"loss": plain}, Runtime()) == (plain, pytest.approx(0.7))


# --------------------------------------------------------------------------- what each family counts


def _info(hidden: int = 4) -> EncoderInfo:
    return EncoderInfo(hidden, 1, LastLayer, 0.0)


@torch.no_grad()
def test_tagging_counts_labelled_words_and_keeps_its_mean():
    torch.manual_seed(0)
    head = TaggingHead(_info(), num_labels=3)
    x = torch.randn(2, 6, 4)
    starts = torch.tensor([[1, 2, 3, 4], [1, 3, 0, 0]])
    batch = {"word_starts": starts, "word_ends": starts, "word_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
             "labels": torch.tensor([[0, 2, -100, 1], [1, 0, -100, -100]])}
    out = head((x,), batch)
    logits = head.proj(x.gather(1, starts.unsqueeze(-1).expand(-1, -1, 4)))
    picked = [(0, 0, 0), (0, 1, 2), (0, 3, 1), (1, 0, 1), (1, 1, 0)]  # (row, word, gold) of the labelled words
    nll = [-torch.log_softmax(logits[b, w], -1)[g] for b, w, g in picked]
    assert out["loss_count"].tolist() == [5.0]
    assert float(out["loss_sum"][0]) == pytest.approx(float(sum(nll)), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(sum(nll)) / 5, rel=1e-6)


@torch.no_grad()
def test_crf_tagging_counts_sentences_with_words():
    torch.manual_seed(0)
    head = TaggingHead(_info(), num_labels=3, crf=CRF(3))
    x = torch.randn(3, 5, 4)
    starts = torch.tensor([[1, 2, 3], [1, 0, 0], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the third row: a window without words
    labels = torch.tensor([[0, 1, 2], [2, -100, -100], [-100, -100, -100]])
    out = head((x,), {"word_starts": starts, "word_ends": starts, "word_mask": mask, "labels": labels})
    logits = head.proj(x.gather(1, starts.unsqueeze(-1).expand(-1, -1, 4)))
    expected = -head.crf.log_likelihood(logits, labels.clamp(min=0), mask)[:2].sum()
    assert out["loss_count"].tolist() == [2.0]
    assert float(out["loss_sum"][0]) == pytest.approx(float(expected), rel=1e-6)


@torch.no_grad()
def test_qa_counts_windows_and_classification_counts_examples():
    torch.manual_seed(0)
    qa = SpanHead(_info())
    x = torch.randn(3, 7, 4)
    batch = {"span_mask": torch.ones(3, 7, dtype=torch.bool), "start_positions": torch.tensor([1, 0, 4]),
             "end_positions": torch.tensor([2, 0, 6])}
    out = qa((x,), batch)
    old = (F.cross_entropy(out["start_logits"], batch["start_positions"])
           + F.cross_entropy(out["end_logits"], batch["end_positions"])) / 2  # the mean it always had
    assert out["loss_count"].tolist() == [3.0]
    assert float(out["loss_sum"][0]) == pytest.approx(3 * float(old), rel=1e-6)

    cls = ClassificationHead(_info(), outputs=2, regression=False)
    out = cls((x,), {"labels": torch.tensor([1, 0, 1])})
    assert out["loss_count"].tolist() == [3.0]
    assert float(out["loss"]) == pytest.approx(float(F.cross_entropy(out["logits"], torch.tensor([1, 0, 1]))))
    reg = ClassificationHead(_info(), outputs=1, regression=True)
    gold = torch.tensor([0.5, 2.0, -1.0])
    out = reg((x,), {"labels": gold})
    assert float(out["loss_sum"][0]) == pytest.approx(float(((out["logits"][:, 0] - gold) ** 2).sum()), rel=1e-6)


# --------------------------------------------------------------------------- two processes against one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_with_unequal_words_get_the_gradient_of_the_whole_batch(tmp_path):
    """NER and UD (six loss terms, one with fewer labelled words) on real sentences split 3/2 over two
    gloo ranks: DDP's gradient with the global-mean loss equals one process's gradient on the whole batch;
    with per-rank means it does not."""
    result = tmp_path / "grads.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("dp_loss_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(result)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    saved = torch.load(result, weights_only=False)
    for task in ("ner", "ud"):
        # the counts each rank used: its own labelled items per term, read off the labels it was given
        keys = ("labels",) if task == "ner" else ("upos", "xpos", "feats", "lemma", "heads", "deprels")
        features = saved["labels"][task]
        for rank, seen in enumerate(saved["counts_per_rank"]):
            mine = features[rank::2]
            expected = [sum(1 for f in mine for v in f[k] if v != -100) for k in keys]
            if task == "ud":  # the label term counts the words with a gold relation, the arc term those with a head
                assert expected[4] == expected[5]
            assert seen[(task, "items")] == expected
            assert seen[(task, "logged")] == pytest.approx(saved[(task, "single_loss")], rel=1e-5)
        ranks = saved["counts_per_rank"]
        assert ranks[0][(task, "items")][0] != ranks[1][(task, "items")][0]  # the ranks hold unequal counts
        single = saved[(task, "single")]
        scale = max(float(g.abs().max()) for g in single.values())
        worst = {rule: max(float((saved[(task, rule)][n] - g).abs().max()) for n, g in single.items())
                 for rule in ("global", "per_rank_mean")}
        assert worst["global"] <= 1e-5 * scale, (task, worst, scale)
        assert worst["per_rank_mean"] > 1e-2 * scale, (task, worst, scale)  # the check can tell them apart
    assert saved["counts_per_rank"][1][("ud", "items")][3] < saved["counts_per_rank"][1][("ud", "items")][0]
