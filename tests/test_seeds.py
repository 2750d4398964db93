"""Regimes over seeds: one MLflow child per (regime, seed), cells that are the mean ± sd of the seeds' values
read back from MLflow, a planted difference marked and a null one not, and stages trained once when two
regimes train the same weights."""

from __future__ import annotations

import csv
import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_encoder

from mtl import regimes, significance
from mtl.experiment import experiment_from_dict


def _language_id(tmp: Path, data_dir: Path, shuffled: bool = False) -> tuple[Path, Path]:
    """Which language a real XNLI sentence is in (en or de): learnt in a few steps by a tiny encoder."""
    rows = {lang: list(csv.DictReader(open(data_dir / "xnli" / lang / "dev.tsv", encoding="utf-8"), delimiter="\t",
                                      quoting=csv.QUOTE_NONE)) for lang in ("en", "de")}
    pairs = [(r["sentence1"], lang) for i in range(200) for lang in ("en", "de") for r in [rows[lang][i]]]
    train, dev = pairs[:240], pairs[240:]  # 240 to train on, 160 to evaluate
    out = []
    for name, part in (("train", train), ("dev", dev)):
        labels = [label for _, label in part]
        if shuffled and name == "train":
            random.Random(0).shuffle(labels)
        path = tmp / f"{name}{'-shuffled' if shuffled and name == 'train' else ''}.tsv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(["sentence", "label"])
            w.writerows((text.replace("\t", " "), label) for (text, _), label in zip(part, labels))
        out.append(path)
    return out[0], out[1]


def _config(tmp: Path, train: Path, dev: Path, seeds: list[int], folder: str) -> dict:
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"max_length": 48, "layer_dropout": 0.0, "dropout": 0.0})
    return {
        "name": "seeds", "encoder": enc,
        "tasks": {"lid": {"family": "classification", "datasets": [
            {"language": "en", "train": str(train), "dev": str(dev),
             "fields": {"text": "sentence", "label": "label"}}]}},
        "sampling": {"batch_size": 16},
        "train": {"steps": 40, "head_lr": 1e-2, "encoder_lr": 1e-2, "warmup": 0, "output_dir": str(tmp / folder),
                  "eval_batch_size": 80, "log_every": 4},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": folder, "log_model": False,
                     "log_plots": False, "log_predictions": False},
        "compare": ["single", "multi_task"], "seeds": seeds,
    }


def test_bootstrap_marks_only_what_every_seed_pair_shows():
    rng = np.random.default_rng(0)
    same = list(rng.normal(70, 2, 1000))
    assert significance.paired_p(same, same) == 1.0
    up = [x + 5 for x in same]
    assert significance.paired_p(up, same) == 0.0
    assert significance.mark([(75, 70, up, same)] * 3) == significance.UP
    assert significance.mark([(65, 70, [x - 5 for x in same], same)] * 2) == significance.DOWN
    # one seed pair inside the noise (or pointing the other way) leaves the cell unmarked
    noisy = list(np.asarray(same) + rng.normal(0, 3, 1000))
    assert significance.mark([(75, 70, up, same), (70.1, 70, noisy, same)]) == ""
    assert significance.mark([(75, 70, up, same), (65, 70, [x - 5 for x in same], same)]) == ""
    # the same resamples for every run scoring the same number of examples: replicates pair up afterwards
    assert (significance.resamples(50, 3) == significance.resamples(50, 3)).all()


def test_compare_over_seeds(tmp_path, data_dir, monkeypatch, capsys):
    import mlflow

    from launch.cli import main
    from mtl.regimes import derive, runner

    train, dev = _language_id(tmp_path, data_dir)
    noise, _ = _language_id(tmp_path, data_dir, shuffled=True)
    cut = derive.stage_experiment

    def planted(exp, stage):  # multi_task trains on the same sentences with shuffled labels
        sexp = cut(exp, stage)
        if stage.regime == "multi_task":
            task = sexp.tasks["lid"]
            ds = dataclasses.replace(task.datasets[0], train=str(noise), _given={**task.datasets[0]._given,
                                                                                 "train": str(noise)})
            sexp.tasks["lid"] = dataclasses.replace(task, datasets=[ds])
        return sexp

    monkeypatch.setattr(derive, "stage_experiment", planted)
    monkeypatch.setattr(runner, "stage_experiment", planted)
    cfg = _config(tmp_path, train, dev, [1, 2, 3], "planted")
    out = regimes.run(experiment_from_dict(cfg), progress=False)
    single, multi = out.rows
    assert [r.seed for r in single.runs] == [1, 2, 3]
    column = "lid/en/accuracy"
    assert single.scores[column] > 80 and multi.marks == {column: significance.DOWN}

    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("planted").experiment_id])
    (top,) = [r for r in runs if r.data.tags.get("mtl.role") == "compare"]
    children = [r for r in runs if r.data.tags.get("mtl.role") == "regime"]
    assert len(children) == 6 and all(c.data.tags["mlflow.parentRunId"] == top.info.run_id for c in children)
    assert sorted((c.data.tags["mtl.regime"], c.data.tags["mtl.seed"]) for c in children) == \
        sorted((r, s) for r in ("single", "multi_task") for s in "123")
    for row in out.rows:  # every cell: mean and sd of the seeds' metrics as MLflow holds them
        values = [c.data.metrics[f"score/{column}"] for c in children if c.data.tags["mtl.regime"] == row.regime]
        assert row.scores[column] == pytest.approx(np.mean(values)) and row.sd[column] == pytest.approx(
            np.std(values, ddof=1))
        assert f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in out.text
    table = list(csv.reader(open(tmp_path / "planted" / "table.csv", encoding="utf-8")))
    assert [r[1] for r in table[1:] if r[0] == "single"] == ["1", "2", "3", "mean", "sd", "marked"]
    capsys.readouterr()
    assert main(["compare", top.info.run_id, "--tracking-uri", cfg["tracking"]["uri"]]) == 0
    assert regimes.table_text(out.rows) in capsys.readouterr().out  # read back from MLflow alone, marks too

    # The null: unplanted, multi_task with one task trains single's weights: trained once, never marked.
    monkeypatch.setattr(derive, "stage_experiment", cut)
    monkeypatch.setattr(runner, "stage_experiment", cut)
    null = regimes.run(experiment_from_dict(_config(tmp_path, train, dev, [1], "null")), progress=False)
    _, b = null.rows
    assert b.reused == {"seed-1/multi_task/mt": "seed-1/single/lid"} and not b.marks
    assert null.stages["seed-1/multi_task/mt"] is null.stages["seed-1/single/lid"]
    assert not (tmp_path / "null" / "seed-1" / "multi_task" / "mt").exists()  # no stage folder of its own
