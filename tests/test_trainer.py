"""The trainer end to end on real GLUE data: metrics, two-process equivalence, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tiny_encoder
from scipy import stats

from mtl.experiment import experiment_from_dict, load_experiment
from mtl.trainer import train


def glue_experiment(tmp_path: Path, data_dir: Path, **train_over) -> dict:
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"max_length": 96, "layer_dropout": 0.0, "dropout": 0.0})
    return {
        "name": "glue-mini",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "sst2": {
                "family": "classification",
                "datasets": [
                    {
                        "language": "en",
                        "train": "glue/SST-2/train.tsv",
                        "dev": "glue/SST-2/dev.tsv",
                        "fields": {"text": "sentence", "label": "label"},
                        "max_examples": 160,
                    }
                ],
            },
            "rte": {
                "family": "classification",
                "datasets": [
                    {
                        "language": "en",
                        "train": "glue/RTE/train.tsv",
                        "dev": "glue/RTE/dev.tsv",
                        "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "label"},
                        "max_examples": 64,
                    }
                ],
            },
            "stsb": {
                "family": "classification",
                "options": {"regression": True},
                "datasets": [
                    {
                        "language": "en",
                        "train": "glue/STS-B/train.tsv",
                        "dev": "glue/STS-B/dev.tsv",
                        "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "score"},
                        "max_examples": 96,
                    }
                ],
            },
        },
        "sampling": {"batch_size": 16},
        "train": {
            "steps": 12,
            "head_lr": 1e-3,
            "encoder_lr": 1e-3,
            "output_dir": str(tmp_path / "run"),
            "eval_batch_size": 64,
            "log_every": 4,
            **train_over,
        },
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"},
    }


def independent_metrics(gold: list, pred: list, regression: bool) -> dict[str, float]:
    if regression:
        g, p = np.asarray(gold, float), np.asarray(pred, float)
        return {"pearson": stats.pearsonr(g, p)[0], "spearman": stats.spearmanr(g, p)[0]}
    positive = sorted(set(gold))[1]  # the family's default: the second label in sorted order
    tp = sum(1 for g, p in zip(gold, pred) if g == p == positive)
    fp = sum(1 for g, p in zip(gold, pred) if g != positive and p == positive)
    fn = sum(1 for g, p in zip(gold, pred) if g == positive and p != positive)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold), "f1": f1}


def test_multitask_glue_metrics_match_independent_computation(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir)
    cfg["tasks"]["sst2"]["mix"] = "scalar"  # a task's own choice; the others read the last layer
    exp = experiment_from_dict(cfg)
    out = train(exp)
    assert {(r.split.task, r.split.dataset.name) for r in out.results} == {
        ("sst2", "en"),
        ("rte", "en"),
        ("stsb", "en"),
    }
    for r in out.results:
        gold = [ex.label for ex in r.split.examples]
        regression = r.split.task == "stsb"
        expected = independent_metrics(gold, r.predictions, regression)
        for name, value in expected.items():
            assert r.metrics[name] == pytest.approx(100 * value, abs=1e-7), (r.split.label, name)
        dev_rows = {"sst2": 872, "rte": 277, "stsb": 1500}[r.split.task]
        assert len(r.predictions) == min(dev_rows, r.split.dataset.max_examples)
    assert out.metrics["eval/rte/en/accuracy"] == pytest.approx(out.results[1].metrics["accuracy"])
    # Predictions were written in the input's own format, one file per eval dataset.
    written = sorted(p.name for p in (out.output_dir / "predictions").iterdir())
    assert len(written) == 3
    # MLflow holds the run: params, per-task loss and lr per step, eval metrics, artifacts.
    import mlflow

    mlflow.set_tracking_uri(exp.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["glue-mini"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.encoder_lr"] == "0.001"
    assert "train/loss/sst2/en" in run.data.metrics
    assert "train/lr/encoder" in run.data.metrics
    assert run.data.metrics["eval/sst2/en/accuracy"] == pytest.approx(out.metrics["eval/sst2/en/accuracy"])
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [4, 8, 12]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "predictions", "sampling", "metrics"} <= arts
    # the learned layer weights of the one scalar mix (embeddings + 2 layers) moved off uniform
    mix = [run.data.metrics[f"mix/sst2/{i}"] for i in range(3)]
    assert max(mix) - min(mix) > 1e-3
    assert min(mix) > 0 and not any(k.startswith(("mix/rte", "mix/stsb")) for k in run.data.metrics)
    assert "layer_mix.txt" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "metrics")}


def test_nested_run_and_unreachable_server(tmp_path, data_dir, caplog):
    import mlflow

    cfg = glue_experiment(tmp_path, data_dir, steps=2)
    for t in list(cfg["tasks"])[1:]:
        cfg["tasks"].pop(t)
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 32
    exp = experiment_from_dict(cfg)
    mlflow.set_tracking_uri(exp.tracking.uri)
    mlflow.set_experiment("outer")
    with mlflow.start_run() as outer:
        train(exp)
    inner = mlflow.search_runs(experiment_names=["glue-mini"], output_format="list")
    assert inner and inner[0].data.tags.get("mlflow.parentRunId") == outer.info.run_id
    # A server that cannot be reached: warn and keep training.
    cfg["tracking"] = {"uri": "http://127.0.0.1:9"}
    cfg["train"]["output_dir"] = str(tmp_path / "run2")
    out = train(experiment_from_dict(cfg))
    assert out.steps == 2
    assert any("cannot be reached" in r.getMessage() for r in caplog.records)


def _write_cfg(tmp_path: Path, cfg: dict, name: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _mtl(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "MTL_LOG_LEVEL": "WARNING",
        "TQDM_DISABLE": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from mtl.checkpoint import latest

    return torch.load(latest(run_dir).path / "model.pt", map_location="cpu", weights_only=True)


def _assert_close_states(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


def test_two_processes_match_one(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir, steps=6)
    cfg["tasks"].pop("stsb")
    cfg["tracking"] = {"enabled": False}
    # 15 = 8 + 7 examples: the loss must be the mean over the global batch, not the mean of two ranks' means
    cfg["sampling"] = {"batch_size": 15, "group_by_length": False}
    # Dropout draws differ when a batch is split over two processes; without it the runs must agree.
    cfg["encoder"]["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    single = dict(cfg, train={**cfg["train"], "output_dir": str(tmp_path / "one")})
    double = dict(cfg, train={**cfg["train"], "output_dir": str(tmp_path / "two")})
    p1 = _mtl(["train", str(_write_cfg(tmp_path, single, "one"))], tmp_path)
    out1, _ = p1.communicate(timeout=300)
    assert p1.returncode == 0, out1
    p2 = _mtl(["train", str(_write_cfg(tmp_path, double, "two")), "--nproc", "2"], tmp_path)
    out2, _ = p2.communicate(timeout=300)
    assert p2.returncode == 0, out2
    _assert_close_states(_model_state(tmp_path / "one"), _model_state(tmp_path / "two"), atol=2e-5)


def test_killed_run_resumes_to_the_same_result(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir, steps=80, checkpoint_every=10, keep_checkpoints=50)
    cfg["tasks"].pop("stsb")
    cfg["encoder"]["dropout"] = 0.1  # RNG state must be restored for this to match
    cfg["encoder"]["layer_dropout"] = 0.2
    cfg["encoder"]["mix"] = "scalar"  # so that layer dropout draws from the RNG too
    cfg["tracking"] = {"enabled": False}
    full = _write_cfg(tmp_path, dict(cfg, train={**cfg["train"], "output_dir": str(tmp_path / "full")}), "full")
    killed_cfg = dict(cfg, train={**cfg["train"], "output_dir": str(tmp_path / "killed")})
    killed = _write_cfg(tmp_path, killed_cfg, "killed")

    proc = _mtl(["train", str(killed)], tmp_path, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoint-10" / "model.pt").exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from mtl.checkpoint import latest

    interrupted_at = latest(tmp_path / "killed").step
    assert interrupted_at < 80, "the run finished before it could be interrupted"

    ref = _mtl(["train", str(full)], tmp_path)
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out
    resumed = _mtl(["train", str(killed), "--resume"], tmp_path)
    res_out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, res_out
    _assert_close_states(_model_state(tmp_path / "full"), _model_state(tmp_path / "killed"), atol=1e-6)
    final_line = [ln for ln in ref_out.splitlines() if ln.startswith("sst2")]
    assert final_line and final_line == [ln for ln in res_out.splitlines() if ln.startswith("sst2")]


def test_dry_run_prints_sizes_and_sampling(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir)
    proc = _mtl(["train", str(_write_cfg(tmp_path, cfg, "dry")), "--dry-run"], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "sst2/en" in out and "160" in out and "# sampling" in out
    assert not (tmp_path / "run").exists()


def test_cli_reports_config_errors_cleanly(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir)
    cfg["train"]["stpes"] = 3
    proc = _mtl(["train", str(_write_cfg(tmp_path, cfg, "bad"))], tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "mtl: error:" in out and "train.stpes" in out and "Traceback" not in out


def test_evaluate_and_predict_from_checkpoint(tmp_path, data_dir):
    cfg = glue_experiment(tmp_path, data_dir, steps=3)
    cfg["tracking"] = {"enabled": False}
    out = train(experiment_from_dict(cfg))
    ckpt = out.checkpoint
    proc = _mtl(["evaluate", str(ckpt), "--device", "cpu", "--output", str(tmp_path / "m.json")], tmp_path)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["eval/sst2/en/accuracy"] == pytest.approx(out.metrics["eval/sst2/en/accuracy"])
    pred = tmp_path / "pred.tsv"
    proc = _mtl(
        [
            "predict",
            str(ckpt),
            "--task",
            "sst2",
            "--input",
            str(data_dir / "glue/SST-2/dev.tsv"),
            "--output",
            str(pred),
        ],
        tmp_path,
    )
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert len(pred.read_text().strip().splitlines()) == 872 + 1
    assert load_experiment(ckpt / "experiment.yaml").name == "glue-mini"


def test_resume_with_other_optimizer_groups_is_a_clear_error(tmp_path, data_dir):
    from mtl.core.errors import ConfigError

    cfg = glue_experiment(tmp_path, data_dir, steps=2)
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"]}
    cfg["tracking"] = {"enabled": False}
    train(experiment_from_dict(cfg))  # reads the last layer: no mix group in its optimizer
    cfg["tasks"]["sst2"]["mix"] = "scalar"
    with pytest.raises(ConfigError, match=r"--resume: the experiment differs .*tasks\.sst2\.mix: None → 'scalar'"):
        train(experiment_from_dict(cfg), resume=True)
    # and when the change is said to be meant, the checkpoint that cannot hold it is still a clear error
    with pytest.raises(ConfigError, match=r"does not fit the model or optimizer.*without --resume"):
        train(experiment_from_dict(cfg), resume=True, allow_changes=["tasks.sst2.mix"])
