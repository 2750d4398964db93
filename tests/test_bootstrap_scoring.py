"""The paired bootstrap scores each resample through the family's `sample_scorer`: whatever shortcut a family
takes (UD adds per-sentence counts computed once), a resample's metrics must be those of scoring the
resampled examples from scratch — repeats included."""

from __future__ import annotations

import pytest
from helpers import build, resolved

from mtl.core.config import DatasetConfig
from mtl.significance import resamples
from tasks.base import TaskFamily


def _perturbed_ud(examples: list) -> list[dict[str, list[str]]]:
    """Gold with every fifth word's head, relation and tag changed (also inside functional children)."""
    out = []
    for k, s in enumerate(examples):
        out.append({"head": ["0" if (k + i) % 5 == 0 else h for i, h in enumerate(s.column("head"))],
                    "deprel": ["dep" if (k + i) % 5 == 0 else r for i, r in enumerate(s.column("deprel"))],
                    "upos": ["X" if (k + i) % 7 == 0 else u for i, u in enumerate(s.column("upos"))],
                    "lemma": ["_" if (k + i) % 3 == 0 else m for i, m in enumerate(s.column("lemma"))]})
    return out


def test_ud_resample_scored_by_counts_equals_scoring_it_whole(data_dir, tiny_encoder_cfg):
    ds = DatasetConfig(language="en", name="en_ewt", train=str(data_dir / "ud/en_ewt/dev.conllu"),
                       dev=str(data_dir / "ud/en_ewt/dev.conllu"))
    fam, _, _ = build("ud", tiny_encoder_cfg, {"heads": ["upos", "feats", "lemma", "deps"]}, [ds])
    examples = fam.read(ds, "dev")[:300]
    fam.fit(examples)
    predictions = _perturbed_ud(examples)
    assert type(fam).sample_scorer is not TaskFamily.sample_scorer  # UD's own: counts added, not re-scored
    score = fam.sample_scorer(examples, predictions, ds)
    whole = fam.score(examples, predictions, ds)
    assert 40 < whole["LAS"] < 95  # the perturbation leaves something to resample
    assert score(list(range(len(examples)))) == pytest.approx(whole)
    for indices in resamples(len(examples), 5):
        picked = indices.tolist()
        assert len(set(picked)) < len(picked)  # repeats, which must count twice
        expected = fam.score([examples[i] for i in picked], [predictions[i] for i in picked], ds)
        assert score(picked) == pytest.approx(expected)


def test_default_scorer_rescored_resample(data_dir, tiny_encoder_cfg):
    ds = resolved("classification", language="en", name="sst2", train=str(data_dir / "glue/SST-2/dev.tsv"),
                  dev=str(data_dir / "glue/SST-2/dev.tsv"), fields={"text": "sentence", "label": "label"})
    fam, _, _ = build("classification", tiny_encoder_cfg, {}, [ds])
    examples = fam.read(ds, "dev")[:200]
    fam.fit(examples)
    labels = sorted({ex.label for ex in examples}, key=str)
    predictions = [labels[0] if k % 3 == 0 else ex.label for k, ex in enumerate(examples)]
    score = fam.sample_scorer(examples, predictions, ds)
    for indices in resamples(len(examples), 3):
        picked = indices.tolist()
        right = sum(predictions[i] == examples[i].label for i in picked)
        assert score(picked)["accuracy"] == pytest.approx(100.0 * right / len(picked))


def test_qa_resample_scored_by_rows_counts_a_question_drawn_twice_twice(data_dir, tiny_encoder_cfg):
    from tasks._squad_metrics import evaluate

    ds = resolved("qa", language="en", name="squad", train=str(data_dir / "squad/dev.json"),
                  dev=str(data_dir / "squad/dev.json"))
    fam, _, _ = build("qa", tiny_encoder_cfg, {}, [ds])
    examples = fam.read(ds, "dev")[:200]
    predictions = ["" if k % 4 == 0 else "the" if k % 4 == 1 else ex.answers[0].text + (" x" if k % 4 == 2 else "")
                   for k, ex in enumerate(examples)]
    score = fam.sample_scorer(examples, predictions, ds)
    for indices in resamples(len(examples), 3):
        picked = indices.tolist()
        assert len(set(picked)) < len(picked)
        expected = evaluate({str(n): predictions[i] for n, i in enumerate(picked)},
                            {str(n): [a.text for a in examples[i].answers] for n, i in enumerate(picked)}, "en")
        assert 10 < expected["f1"] < 90
        assert score(picked) == pytest.approx(expected)
