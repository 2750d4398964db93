"""A newcomer's first hour: the typical mistakes end in one line that names what was typed and what to type
instead, and a run's console shows mtl's own lines and a closing summary, not the libraries' chatter."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_records import quickstart_overrides
from test_regimes import three_tasks

from launch.cli import main
from mtl.experiment import load_experiment
from mtl.trainer import train

REPO = Path(__file__).resolve().parents[1]
# What the libraries print on their own: DeepSpeed's accelerator guess, MLflow's INFO lines and download
# bars, transformers' loading bar, raw ANSI colour codes.
NOISE = re.compile(r"DeepSpeed|real_accelerator|Setting accelerator|\bmlflow\.[a-z_.]+:|Downloading artifacts|"
                   r"Loading weights|Validating input example|Creating initial MLflow|\x1b\[")


def test_the_quickstart_console_is_quiet_and_ends_with_a_summary(tmp_path):
    """The real quickstart (pretrained MiniLM) through the real CLI, as a user starts it, at 4 steps."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "launch.cli", "train", "examples/quickstart.yaml", "--set", "train.steps=4",
           "--set", f"train.output_dir={tmp_path / 'run'}", "--set", f"train.cache_dir={tmp_path / 'cache'}",
           "--set", f"tracking.uri={uri}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [part for line in (done.stdout + done.stderr).splitlines() for part in line.split("\r")]
    assert [line for line in lines if NOISE.search(line)] == []
    # The libraries' INFO lines are not lost: they are in the run's log file.
    assert re.search(r"INFO mlflow\.", (tmp_path / "run" / "mtl.log").read_text())

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    summary = done.stdout[done.stdout.index("Done: run 'quickstart' in "):]
    metrics = run.data.metrics
    assert "4 steps" in summary
    assert f"{metrics['train/tokens_per_second']:,.0f} tokens/s" in summary
    for task in ("sentiment", "nli"):
        assert f"{task}/mean_accuracy={metrics[f'eval/{task}/mean_accuracy']:.2f}" in summary
    checkpoint = re.search(r"checkpoint: (\S+)", summary).group(1)
    assert (Path(checkpoint) / "model.pt").is_file()
    assert f"MLflow run {run.info.run_id} at {uri}" in summary
    assert f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in summary


@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory) -> Path:
    """The quickstart's tasks, trained 2 steps with a tiny encoder, without tracking."""
    root = tmp_path_factory.mktemp("first-hour")
    overrides = [*quickstart_overrides(REPO / "examples", "", steps=2), f"train.output_dir={root / 'run'}",
                 f"train.cache_dir={root / 'cache'}", "tracking.enabled=false"]
    overrides = [o for o in overrides if not o.startswith("tracking.uri=")]
    train(load_experiment(REPO / "examples" / "quickstart.yaml", overrides))
    return root / "run"


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()  # what came before this command
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_predict_mistakes_name_the_flags_to_use(quick_checkpoint, tmp_path, capsys):
    columns = tmp_path / "reviews.tsv"
    columns.write_text("review\ngood movie\nbad one\n", encoding="utf-8")
    out = tmp_path / "out.tsv"
    base = ["predict", str(quick_checkpoint), "--task", "sentiment", "--output", str(out)]
    msg = _error(capsys, [*base, "--input", str(columns)])
    assert "no column 'sentence'" in msg and """--fields '{"text": "COLUMN"}'""" in msg, msg
    suffix = tmp_path / "reviews.txt"
    suffix.write_text("sentence\ngood movie\n", encoding="utf-8")
    msg = _error(capsys, [*base, "--input", str(suffix)])
    assert "pass --format, one of" in msg and "`format:`" not in msg, msg
    assert "not JSON" in _error(capsys, [*base, "--input", str(columns), "--fields", "{text: review}"])
    # Doing what the message says works.
    assert main([*base, "--input", str(columns), "--fields", '{"text": "review"}']) == 0
    assert len(out.read_text(encoding="utf-8").strip().splitlines()) >= 2


def test_evaluate_dataset_options_map_the_labels_of_a_real_file(quick_checkpoint, data_dir, tmp_path, capsys):
    """SST-2's dev labels are 0/1, the run's are negative/positive: scorable once mapped, and the score is the
    accuracy of `mtl predict` on the same sentences against the mapped gold labels."""
    dev = data_dir / "glue" / "SST-2" / "dev.tsv"
    spec = ["evaluate", str(quick_checkpoint), "--only-extra", "--dataset", f"sentiment:en={dev}"]
    msg = _error(capsys, spec)
    assert "label '1'" in msg and "--dataset-options 'sentiment:en={options: {label_map:" in msg, msg
    mapping = 'sentiment:en={options: {label_map: {"0": negative, "1": positive}}}'
    scores = tmp_path / "scores.json"
    assert main([*spec, "--dataset-options", mapping, "--output", str(scores)]) == 0
    accuracy = json.loads(scores.read_text())["extra/sentiment/en/accuracy"]

    with dev.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = tmp_path / "sentences.tsv"
    sentences.write_text("sentence\n" + "".join(r["sentence"] + "\n" for r in rows), encoding="utf-8")
    predicted = tmp_path / "predicted.tsv"
    assert main(["predict", str(quick_checkpoint), "--task", "sentiment", "--input", str(sentences),
                 "--output", str(predicted)]) == 0
    with predicted.open(encoding="utf-8") as f:
        labels = [r["prediction"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    gold = [{"0": "negative", "1": "positive"}[r["label"]] for r in rows]
    assert len(labels) == len(gold) == 872
    assert accuracy == pytest.approx(100 * sum(p == g for p, g in zip(labels, gold, strict=True)) / len(gold))

    msg = _error(capsys, [*spec, "--dataset-options", 'sentiment:en={options: {label_mapp: {}}}'])
    assert msg.startswith("mtl: error: --dataset-options 'sentiment:en=") and "did you mean label_map?" in msg
    assert "no --dataset nli:en" in _error(capsys, [*spec, "--dataset-options", "nli:en={options: {}}"])


def test_evaluate_on_a_regime_folder_lists_its_stage_folders(tmp_path, data_dir, capsys):
    cfg = three_tasks(tmp_path, data_dir, cap=16, regime={"name": "single", "finetune_steps": 2})
    del cfg["tasks"]["lm"]
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg["tracking"] = {"uri": uri, "log_model": False, "log_plots": False}
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", str(path)]) == 0
    said = capsys.readouterr()
    assert "Done: regime single of 'regimes' in " in said.out and f"stage folders under {tmp_path / 'run'}" in said.out
    # The console says which run is the regime's and which are its stages, and the summary names the regime's.
    parent = re.search(r"MLflow regime run (\w+) 'regimes-single-", said.err).group(1)
    for stage in ("single/sst2", "single/nli"):
        assert re.search(rf"MLflow stage run \w+ '{stage}', inside run {parent}", said.err), said.err
    assert f"MLflow run {parent} at {uri} (each stage a nested run under it)" in said.out
    root = tmp_path / "run"
    msg = _error(capsys, ["evaluate", str(root)])
    assert "no checkpoint here" in msg and "single/sst2" in msg and "single/nli" in msg, msg
    assert main(["evaluate", str(root / "single" / "sst2")]) == 0


def test_a_table_read_as_a_column_file_says_how_it_was_read(tmp_path, capsys):
    text = (REPO / "examples" / "quickstart.yaml").read_text().replace("family: classification", "family: ner")
    cfg = yaml.safe_load(text)
    cfg["data_root"] = str(REPO / "examples")
    del cfg["tasks"]["nli"]
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(cfg))
    msg = _error(capsys, ["train", str(path), "--dry-run"])
    assert "train.tsv:2: 16 columns where the file's first token line has 2" in msg
    assert "read as a CoNLL-style column file (format conll" in msg and "classification" in msg, msg
