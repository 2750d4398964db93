"""Metric names: every form the project writes formats and parses back to itself, MLflow's sanitising is the one
runs were logged with (so `mtl compare` reads old runs), and a name of no known form is refused by name."""

from __future__ import annotations

import pytest

from mtl.core.metric_key import EVAL, SCORE, ZERO_SHOT, MetricKey, mlflow_safe
from mtl.plots import _is_dev_metric
from mtl.regimes.base import Stage
from mtl.regimes.derive import _select_best
from mtl.regimes.readback import _scores
from mtl.regimes.report import StageResult, regime_row

# name → the key it parses to; each as the evaluation, select_best, the regime runner or `mtl compare` writes it
PREFIXED = {
    "eval/sst2/en/accuracy": MetricKey(EVAL, "sst2", "en", "accuracy"),
    "zeroshot/nli/de/accuracy": MetricKey(ZERO_SHOT, "nli", "de", "accuracy"),
    "eval/deps/mean_LAS": MetricKey(EVAL, "deps", None, "mean_LAS"),
    "score/rte/en/accuracy": MetricKey(SCORE, "rte", "en", "accuracy"),
    "extra/ner/zh-TW/f1": MetricKey("extra", "ner", "zh-TW", "f1"),
    "eval/upos/ud/en_ewt/accuracy": MetricKey(EVAL, "upos", "ud/en_ewt", "accuracy"),  # a '/' in a dataset name
}


@pytest.mark.parametrize("text", sorted(PREFIXED))
def test_each_form_parses_and_formats_back_to_itself(text):
    key = MetricKey.parse(text)
    assert key == PREFIXED[text]
    assert key.format() == str(key) == text


def test_a_comparison_column_has_no_prefix():
    key = MetricKey.parse("rte/en/accuracy", prefixed=False)
    assert key == MetricKey(None, "rte", "en", "accuracy") and str(key) == "rte/en/accuracy"
    assert str(key.with_prefix(SCORE)) == "score/rte/en/accuracy"
    assert str(MetricKey.parse("score/rte/en/accuracy").with_prefix(None)) == "rte/en/accuracy"


def test_roles_and_the_task_mean():
    assert str(MetricKey.for_role("eval", "sst2", "en", "accuracy")) == "eval/sst2/en/accuracy"
    assert str(MetricKey.for_role("zero-shot", "nli", "de", "accuracy")) == "zeroshot/nli/de/accuracy"
    assert str(MetricKey.mean("deps", "LAS")) == "eval/deps/mean_LAS"
    assert MetricKey.parse("eval/sst2/en/accuracy").role == "eval"
    assert MetricKey.parse("zeroshot/nli/de/accuracy").role == "zero-shot"
    assert MetricKey.parse("zeroshot/nli/de/accuracy").zero_shot
    assert MetricKey.parse("score/rte/en/accuracy").role is None


@pytest.mark.parametrize("name, stored", [
    ("eval/ner/zh-TW/f1", "eval/ner/zh-TW/f1"),  # - . space : / and letters pass
    ("eval/qa/en.v2 dev:1/exact_match", "eval/qa/en.v2 dev:1/exact_match"),
    ("eval/upos/日本語/accuracy", "eval/upos/日本語/accuracy"),  # any alphanumeric, not only ASCII
    ("eval/qa/squad(en)+fr/f1@1", "eval/qa/squad_en__fr/f1_1"),
    ("train/loss/sst2/en", "train/loss/sst2/en"),  # any metric name, not only a MetricKey
])
def test_mlflow_keeps_what_it_allows_and_gets_underscores_for_the_rest(name, stored):
    assert mlflow_safe(name) == stored
    if name.startswith("eval/"):
        assert str(MetricKey.parse(name).safe()) == stored  # per part or whole: the same bytes


def test_regime_columns_and_their_logged_scores_read_back_the_same():
    stage = Stage("mt", "multi_task", "pretrain", {"qa": ["squad(en)"]}, evaluate={"qa": {"squad(en)": "eval"}},
                  reports=[("qa", "squad(en)")])
    result = StageResult("multi_task/mt", 4, 100, {"eval/qa/squad(en)/f1": 71.5}, {"qa": "f1"}, "ckpt", {})
    row = regime_row("multi_task", [stage], {stage.key: result})
    assert row.scores == {"qa/squad_en_/f1": 71.5}
    logged = {mlflow_safe(str(MetricKey.parse(k, prefixed=False).with_prefix(SCORE))): v
              for k, v in row.scores.items()}
    assert logged == {"score/qa/squad_en_/f1": 71.5}
    assert _scores({**logged, "regime/steps": 4.0}) == row.scores


def test_select_best_and_the_learning_curves_read_the_same_names():
    stage = Stage("mt", "multi_task", "pretrain", {"nli": ["en"]}, evaluate={"nli": {"en": "eval", "de": "zero-shot"}})
    assert _select_best("eval/nli/en/accuracy", stage) == "eval/nli/en/accuracy"
    assert _select_best("zeroshot/nli/de/accuracy", stage) == "zeroshot/nli/de/accuracy"
    assert _select_best("eval/nli/de/accuracy", stage) is None  # de is zero-shot in this stage
    assert _select_best("eval/nli/mean_accuracy", stage) == "eval/nli/mean_accuracy"
    assert _select_best("accuracy", stage) is None
    assert _is_dev_metric("zeroshot/nli/de/accuracy", "nli", "accuracy")
    assert not _is_dev_metric("eval/nli/mean_accuracy", "nli", "accuracy")
    assert not _is_dev_metric("train/loss/nli/en", "nli", "en")


@pytest.mark.parametrize("text, prefixed", [
    ("accuracy", True),
    ("eval/sst2", True),
    ("dev/sst2/en/accuracy", True),  # the split is not the prefix: eval (trained languages) or zeroshot
    ("train/loss/sst2/en", True),
    ("eval//en/accuracy", True),
    ("eval/sst2/en/", True),
    ("sst2/accuracy", False),
    ("", False),
])
def test_a_name_of_no_known_form_is_refused_by_name(text, prefixed):
    with pytest.raises(ValueError, match="is not a metric name") as err:
        MetricKey.parse(text, prefixed=prefixed)
    assert repr(text) in str(err.value)
