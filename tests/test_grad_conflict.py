"""train.grad_conflict_every on real SST-2/RTE data: the cosine of a group with its copy is 1 and with its
label-flipped copy is negative; metrics and the heatmap land in MLflow; training with the diagnostic on is
bit-identical to training with it off, also across a resume; two DDP processes measure what one does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_encoder
from helpers import resume_from_copy

from mtl.core.errors import ConfigError
from mtl.experiment import experiment_from_dict, load_experiment
from mtl.trainer import train

SST2 = {"text": "sentence", "label": "label"}


def _flipped_sst2(data_dir: Path, path: Path, rows: int = 200) -> Path:
    """The first SST-2 training sentences with each label swapped (0 ↔ 1)."""
    header, *lines = (data_dir / "glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines()[: rows + 1]
    flipped = [f"{text}\t{1 - int(label)}" for text, label in (line.rsplit("\t", 1) for line in lines)]
    path.write_text("\n".join([header, *flipped]) + "\n", encoding="utf-8")
    return path


def _sst2(name: str, train_file: str, **extra) -> dict:
    return {"language": "en", "name": name, "train": train_file, "fields": SST2, "max_examples": 64, **extra}


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory, data_dir):
    """One run of one SST-2 task over three groups: the data, the same data again, and its labels flipped."""
    tmp = tmp_path_factory.mktemp("copies")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp / "hf_home"))
        flip = _flipped_sst2(data_dir, tmp / "flip.tsv")
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        cfg = {
            "name": "gradcos",
            "data_root": str(data_dir),
            "encoder": tiny_encoder(hidden=32),
            "tasks": {"sst2": {"family": "classification", "datasets": [
                _sst2("orig", "glue/SST-2/train.tsv", dev="glue/SST-2/dev.tsv"),
                _sst2("copy", "glue/SST-2/train.tsv"),
                _sst2("flip", str(flip)),
            ]}},
            "sampling": {"batch_size": 16},
            "train": {"steps": 4, "grad_conflict_every": 2, "output_dir": str(tmp / "run")},
            "tracking": {"uri": uri},
        }
        out = train(experiment_from_dict(cfg), progress=False)
    client = _client(uri)
    names = [k for k in client.get_run(out.run_id).data.metrics if k.startswith(("gradcos/", "gradnorm/"))]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(out.run_id, k)] for k in names}
    return out, uri, history, tmp


def test_a_group_and_its_copy_have_cosine_one(copies_run):
    _, _, history, _ = copies_run
    same = history["gradcos/sst2/orig/sst2/copy"]
    assert [s for s, _ in same] == [2, 4]
    assert all(v == pytest.approx(1.0, abs=1e-6) for _, v in same), same
    assert history["gradnorm/sst2/orig"] == history["gradnorm/sst2/copy"]


def test_a_group_and_its_label_flipped_copy_have_negative_cosine(copies_run):
    _, _, history, _ = copies_run
    for pair in ("gradcos/sst2/orig/sst2/flip", "gradcos/sst2/copy/sst2/flip"):
        values = [v for _, v in history[pair]]
        assert len(values) == 2 and all(v < -0.9 for v in values), (pair, values)


def test_metrics_and_heatmap_land_in_mlflow(copies_run):
    import matplotlib.image

    out, uri, history, tmp = copies_run
    labels = ["sst2/orig", "sst2/copy", "sst2/flip"]  # the groups in the trainer's order, upper triangle
    pairs = {f"gradcos/{a}/{b}" for i, a in enumerate(labels) for b in labels[i + 1 :]}
    assert set(history) == pairs | {f"gradnorm/{a}" for a in labels}
    assert all([s for s, _ in history[k]] == [2, 4] for k in history)
    client = _client(uri)
    assert "plots/gradient_cosine.png" in {a.path for a in client.list_artifacts(out.run_id, "plots")}
    local = client.download_artifacts(out.run_id, "plots/gradient_cosine.png", str(tmp / "fetched"))
    image = matplotlib.image.imread(local)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200


def _two_task(tmp_path: Path, data_dir: Path, out: str, every: int | None, tracked: bool) -> dict:
    """SST-2 with a learned layer mix and layer dropout, and masked LM streamed from SQuAD text: dropout,
    layer dropout and MLM masks all draw from the training RNG, and the stream has a cursor to disturb."""
    import json

    text = tmp_path / "squad.txt"
    if not text.exists():
        data = json.loads((data_dir / "squad/dev.json").read_text(encoding="utf-8"))
        paragraphs = [p["context"].replace("\n", " ") for a in data["data"] for p in a["paragraphs"]][:120]
        text.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    enc = tiny_encoder(hidden=32)
    enc.update({"max_length": 64, "layer_dropout": 0.2, "mix": "scalar"})
    return {
        "name": "gradcos-exact",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "sst2": {"family": "classification", "datasets": [_sst2("en", "glue/SST-2/train.tsv")]},
            "mlm": {"family": "mlm", "datasets": [{"language": "en", "train": str(text), "streaming": True}]},
        },
        "sampling": {"batch_size": 16},
        "train": {"steps": 6, "checkpoint_every": 3, "keep_checkpoints": 5, "warmup": 0, "head_lr": 3e-3,
                  "encoder_lr": 3e-3, "grad_conflict_every": every, "output_dir": str(tmp_path / out)},
        "tracking": ({"uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "log_model": False} if tracked
                     else {"enabled": False}),
    }


def _weights(outcome) -> dict[str, torch.Tensor]:
    return torch.load(outcome.checkpoint / "model.pt", weights_only=True)


def test_training_is_the_same_with_the_diagnostic_on_or_off_and_resumes_exactly(tmp_path, data_dir):
    off = train(experiment_from_dict(_two_task(tmp_path, data_dir, "off", None, tracked=False)), progress=False)
    on_cfg = _two_task(tmp_path, data_dir, "on", 1, tracked=True)
    on = train(experiment_from_dict(on_cfg), progress=False)
    a, b = _weights(off), _weights(on)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    measured = _client(on_cfg["tracking"]["uri"]).get_metric_history(on.run_id, "gradcos/sst2/en/mlm/en")
    assert [m.step for m in measured] == list(range(1, 7))
    # killed after step 3 and resumed with the diagnostic on: the same weights as the run without it
    resumed, c = resume_from_copy(on_cfg, tmp_path / "on", 3, tmp_path / "resumed")
    assert resumed.steps == 6 and all(torch.equal(a[k], c[k]) for k in a)


def test_two_ddp_processes_measure_what_one_process_measures(tmp_path, data_dir):
    """Each rank takes its share of the diagnostic batch; the gradients averaged over the ranks are those of
    the whole batch, so the cosines match one process's; the run does not hang, and trains as it does without."""
    enc = tiny_encoder(hidden=32)
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = {
        "name": "gradcos-ddp",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "sst2": {"family": "classification", "datasets": [_sst2("en", "glue/SST-2/train.tsv")]},
            "rte": {"family": "classification", "datasets": [{
                "language": "en", "train": "glue/RTE/train.tsv", "max_examples": 64,
                "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "label"}}]},
        },
        "sampling": {"batch_size": 15, "group_by_length": False},  # 8 + 7 rows: the mean is over the global batch
        # warm-up from 0: step 1 leaves the weights as they were built, so one and two processes measure
        # the same weights there (later their weights differ by float rounding, which a cosine magnifies)
        "train": {"steps": 4, "warmup": 2, "head_lr": 1e-3, "encoder_lr": 1e-3},
    }

    def variant(name: str, every: int | None) -> dict:
        return {**cfg, "train": {**cfg["train"], "grad_conflict_every": every, "output_dir": str(tmp_path / name)},
                "tracking": {"uri": f"sqlite:///{tmp_path / name / 'mlflow.db'}", "log_model": False}}

    def two_processes(name: str, every: int | None) -> dict[str, torch.Tensor]:
        path = tmp_path / f"{name}.yaml"  # in the order of the dict: the same task order, so the same init
        path.write_text(yaml.safe_dump(variant(name, every), sort_keys=False), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(REPO), "MTL_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
        proc = subprocess.run([sys.executable, "-m", "launch.cli", "train", str(path), "--nproc", "2"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        from mtl.checkpoint import latest

        return torch.load(latest(tmp_path / name).path / "model.pt", weights_only=True)

    def cosines(name: str) -> list[tuple[int, float]]:
        client = _client(variant(name, 1)["tracking"]["uri"])
        (run,) = client.search_runs([client.get_experiment_by_name("gradcos-ddp").experiment_id])
        (metric,) = [k for k in run.data.metrics if k.startswith("gradcos/")]  # the one pair
        assert metric == "gradcos/sst2/en/rte/en"
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]

    train(experiment_from_dict(variant("one", 1)), progress=False)
    on, off = two_processes("two", 1), two_processes("two-off", None)
    single, double = cosines("one"), cosines("two")
    assert [s for s, _ in single] == [s for s, _ in double] == [1, 2, 3, 4]
    assert double[0][1] == pytest.approx(single[0][1], abs=1e-5), (single, double)
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


def test_what_is_not_built_is_refused_at_its_line(tmp_path, data_dir):
    base = {
        "name": "refused",
        "data_root": str(data_dir),
        "encoder": tiny_encoder(hidden=32),
        "tasks": {"sst2": {"family": "classification", "datasets": [
            _sst2("a", "glue/SST-2/train.tsv"), _sst2("b", "glue/SST-2/train.tsv")]}},
        "train": {"grad_conflict_every": 5},
    }

    def load(**over) -> None:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({**base, **over}, sort_keys=False), encoding="utf-8")
        load_experiment(path)

    line = next(i for i, t in enumerate(yaml.safe_dump(base, sort_keys=False).splitlines(), 1)
                if "grad_conflict_every" in t)
    load()  # two groups, one process: accepted
    with pytest.raises(ConfigError, match=rf"exp\.yaml:{line}: train\.grad_conflict_every: not built under the "
                                          r"deepspeed profile"):
        load(launch={"profile": "deepspeed"})
    with pytest.raises(ConfigError, match=rf":{line}: train\.grad_conflict_every: must be at least 1"):
        load(train={"grad_conflict_every": 0})
    one_group = {"sst2": {**base["tasks"]["sst2"], "datasets": base["tasks"]["sst2"]["datasets"][:1]}}
    with pytest.raises(ConfigError, match=r"train\.grad_conflict_every: compares the gradients of two or more"):
        load(tasks=one_group)
    with pytest.raises(ConfigError, match=rf":{line}: train\.grad_conflict_every: its cosines go to MLflow"):
        load(tracking={"enabled": False})
