"""Tracking as a user meets it: run names that say what ran, and sync-metrics errors in one line."""

from __future__ import annotations

import mlflow
from test_trainer import glue_experiment

from mtl.experiment import experiment_from_dict
from mtl.trainer import train


def _quick(tmp_path, data_dir, folder: str) -> dict:
    cfg = glue_experiment(tmp_path, data_dir, steps=1, output_dir=str(tmp_path / folder))
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"]}
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 16
    cfg["tracking"].update(log_model=False, log_plots=False, log_predictions=False)
    return cfg


def test_runs_of_one_experiment_get_distinct_names_that_say_what_ran(tmp_path, data_dir):
    for folder in ("a", "b"):
        train(experiment_from_dict(_quick(tmp_path, data_dir, folder)), progress=False)
    named = _quick(tmp_path, data_dir, "c")
    named["tracking"]["run_name"] = "baseline"  # a name given is kept as given
    train(experiment_from_dict(named), progress=False)

    client = mlflow.MlflowClient(tracking_uri=named["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("glue-mini").experiment_id],
                              order_by=["attributes.start_time ASC"])
    names = [r.info.run_name for r in runs]
    assert len(names) == 3 and names[2] == "baseline", names
    assert names[0] != names[1] and all(n.startswith("glue-mini-") for n in names[:2]), names


def test_a_regime_run_is_named_after_the_experiment_and_the_regime():
    from mtl.tracking import default_run_name

    first, second = default_run_name("glue-mini", "mt_finetune"), default_run_name("glue-mini", "mt_finetune")
    assert first.startswith("glue-mini-mt_finetune-") and first != second


def test_sync_metrics_names_a_missing_or_broken_file_in_one_line(tmp_path, monkeypatch, capsys):
    from launch.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sync-metrics", "nothere.jsonl"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mtl: error: nothere.jsonl: no such file") and "Errno" not in line, line

    (tmp_path / "broken.jsonl").write_text('{"run_id": "a", "key": "loss", "value": 1, "timestamp": 1, "step": 1}\n'
                                           "not json\n")
    assert main(["sync-metrics", "broken.jsonl"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mtl: error: broken.jsonl:2: not a JSON record"), line
