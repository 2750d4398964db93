"""train.select_best keeps the best evaluated checkpoint beside the last; a run is evaluated from
any directory, with its dataset paths resolved against the experiment's data_root."""

from __future__ import annotations

import pytest
from test_trainer import glue_experiment

from mtl.core.errors import ConfigError
from mtl.experiment import experiment_from_dict
from mtl.trainer import train


def test_select_best_keeps_the_best_evaluation_and_evaluate_uses_it_from_anywhere(tmp_path, data_dir, monkeypatch):
    import mlflow

    from mtl import checkpoint as ckpt
    from mtl.inference import evaluate_checkpoint, load

    metric = "eval/sst2/en/accuracy"
    cfg = glue_experiment(tmp_path, data_dir, steps=12, eval_every=2, select_best=metric, encoder_lr=3e-3,
                          head_lr=3e-3)
    for task in ("rte", "stsb"):
        cfg["tasks"].pop(task)
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 96
    out = train(experiment_from_dict(cfg))

    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    run = mlflow.search_runs(experiment_names=["glue-mini"], output_format="list", search_all_experiments=False)[0]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
    assert [s for s, _ in history] == [2, 4, 6, 8, 10, 12]
    best_value = max(v for _, v in history)
    best_step = next(s for s, v in history if v == best_value)  # the first evaluation to reach it
    assert (out.best_step, out.best_value) == (best_step, pytest.approx(best_value))
    assert out.best_checkpoint == tmp_path / "run" / "best" / f"checkpoint-{best_step}"
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "run" / "best")] == [best_step]
    assert ckpt.latest(tmp_path / "run").step == 12  # the last stays where it was
    logged = client.get_metric_history(run.info.run_id, "best/step")
    assert max(m.value for m in logged) == best_step

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # dataset paths must not depend on the working directory
    loaded = load(tmp_path / "run", device="cpu")
    assert loaded.checkpoint.step == best_step
    assert evaluate_checkpoint(loaded)[0].metrics["accuracy"] == pytest.approx(best_value)
    last = load(tmp_path / "run", device="cpu", which="last")
    assert last.checkpoint.step == 12
    assert evaluate_checkpoint(last)[0].metrics["accuracy"] == pytest.approx(out.metrics[metric])


def test_select_best_must_name_an_evaluation_metric(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir, select_best="accuracy")
    with pytest.raises(ConfigError, match=r"train\.select_best: 'accuracy' is not an evaluation metric"):
        experiment_from_dict(cfg)
    cfg = glue_experiment(tmp_path, data_dir, select_best="eval/sst2/de/accuracy")  # no dataset 'de'
    with pytest.raises(ConfigError, match=r"not an evaluation metric.*datasets: en"):
        experiment_from_dict(cfg)
    cfg = glue_experiment(tmp_path, data_dir, select_best="eval/sst2/en/acuracy", steps=1)
    for task in ("rte", "stsb"):
        cfg["tasks"].pop(task)
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 16
    cfg["tracking"] = {"enabled": False}
    with pytest.raises(ConfigError, match=r"no metric 'eval/sst2/en/acuracy' at evaluation \(metrics: .*"
                                         r"eval/sst2/en/accuracy"):
        train(experiment_from_dict(cfg))


def _xnli_zero_shot(tmp_path, data_dir, **train_over) -> dict:
    """NLI trained on English XNLI, with German XNLI evaluated zero-shot."""
    cfg = glue_experiment(tmp_path, data_dir, steps=4, eval_every=2, **train_over)
    fields = {"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    cfg["tasks"] = {"nli": {"family": "classification", "datasets": [
        {"language": "en", "train": "xnli/en/dev.tsv", "dev": "xnli/en/dev.tsv", "fields": fields,
         "max_examples": 48},
        {"language": "de", "dev": "xnli/de/dev.tsv", "fields": fields, "max_examples": 48}]}}
    return cfg


def test_zero_shot_selection_never_looks_at_target_labels_unless_asked(tmp_path, data_dir, capsys):
    """Choosing the checkpoint on the zero-shot language's dev labels is an oracle (Keung et al. 2020): refused by
    default, allowed with select_oracle and then said in the run's output and MLflow tag."""
    import mlflow

    oracle = "zeroshot/nli/de/accuracy"
    with pytest.raises(ConfigError, match=r"train\.select_best: 'zeroshot/nli/de/accuracy' chooses the checkpoint "
                                          r"with the labels of a language the task does not train on"):
        experiment_from_dict(_xnli_zero_shot(tmp_path, data_dir, select_best=oracle))
    with pytest.raises(ConfigError, match=r"train\.select_oracle: applies to a zeroshot/ select_best metric"):
        experiment_from_dict(_xnli_zero_shot(tmp_path, data_dir, select_best="eval/nli/en/accuracy",
                                             select_oracle=True))

    honest = experiment_from_dict(_xnli_zero_shot(tmp_path / "a", data_dir, select_best="eval/nli/en/accuracy"))
    train(honest)
    assert "chosen on eval/nli/en/accuracy (dev of en, trained languages only)" in capsys.readouterr().out
    exp = experiment_from_dict(_xnli_zero_shot(tmp_path / "b", data_dir, select_best=oracle, select_oracle=True))
    out = train(exp)
    assert "chosen on oracle: zeroshot/nli/de/accuracy (dev of de, a language the task does not train on)" \
        in capsys.readouterr().out
    run = mlflow.MlflowClient(tracking_uri=exp.tracking.uri).get_run(out.run_id)
    assert run.data.tags["mtl.selection"].startswith("oracle: zeroshot/nli/de/accuracy")
