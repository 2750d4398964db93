"""Runs that would end in silent garbage or destroy another: divergence stops (or skips) with the step and
the group, one live run per folder, damaged checkpoints passed over, a changed experiment refused on
resume, and problems that would surface late found before the first step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import E5, REPO
from test_trainer import glue_experiment

from mtl import checkpoint as ckpt
from mtl.core.errors import ConfigError
from mtl.experiment import experiment_from_dict
from mtl.trainer import train


def _small(tmp_path: Path, data_dir: Path, **train_over) -> dict:
    cfg = glue_experiment(tmp_path, data_dir, **train_over)
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"]}
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 64
    return cfg


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "MTL_LOG_LEVEL": "WARNING",
           "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_diverging_run_stops_at_the_step_and_is_marked_failed(tmp_path, data_dir):
    cfg = _small(tmp_path, data_dir, steps=30, encoder_lr=1e30, head_lr=1e30, checkpoint_every=100)
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = _cli(["train", str(path)], tmp_path)
    assert run.returncode == 1, run.stderr[-2000:]
    (line,) = [t for t in run.stderr.splitlines() if t.startswith("mtl: error:")]
    assert line.startswith("mtl: error: step ") and "sst2/en" in line and "train.on_nonfinite: skip" in line
    assert "nan" in line or "inf" in line
    assert not ckpt.list_checkpoints(tmp_path / "run")  # no checkpoint of non-finite weights, no model logged
    import mlflow

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    (logged,) = mlflow.search_runs(experiment_names=["glue-mini"], output_format="list")
    assert logged.info.status == "FAILED"
    assert not mlflow.MlflowClient().list_artifacts(logged.info.run_id, "model")


def test_skipping_non_finite_steps_counts_them_and_keeps_the_weights_finite(tmp_path, data_dir):
    cfg = _small(tmp_path, data_dir, steps=12, encoder_lr=1e30, head_lr=1e30, on_nonfinite="skip")
    cfg["tracking"] = {"enabled": False}
    out = train(experiment_from_dict(cfg), progress=False)
    state = json.loads((out.checkpoint / "trainer_state.json").read_text())
    assert 0 < state["skipped_steps"] <= 12 and state["step"] == 12
    weights = torch.load(out.checkpoint / "model.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    cfg["launch"] = {"profile": "deepspeed"}
    with pytest.raises(ConfigError, match=r"train.on_nonfinite: skip is not built under the deepspeed profile"):
        experiment_from_dict(cfg)


_HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from mtl.run_lock import RunLock
lock = RunLock(__import__("pathlib").Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_one_live_run_per_output_folder(tmp_path, data_dir):
    cfg = _small(tmp_path, data_dir, steps=2)
    cfg["tracking"] = {"enabled": False}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=str(REPO)), str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"train.output_dir .*run is in use by another run \(pid {holder.pid} "):
            train(experiment_from_dict(cfg), progress=False)
        assert not (tmp_path / "run" / "checkpoint-2").exists()
    finally:
        holder.kill()
        holder.wait()
    out = train(experiment_from_dict(cfg), progress=False)  # the dead owner's lock is taken over
    assert out.checkpoint.name == "checkpoint-2"


def test_an_unwritable_output_folder_is_found_before_any_work(tmp_path, data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = _small(tmp_path, data_dir, steps=2, output_dir=str(blocker / "run"))
    cfg["tracking"] = {"enabled": False}
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"train.output_dir .*a-file/run: cannot be written"):
        train(experiment_from_dict(cfg), progress=False)
    assert time.perf_counter() - started < 30


def test_resume_passes_over_a_damaged_checkpoint_and_names_the_file(tmp_path, data_dir, caplog):
    cfg = _small(tmp_path, data_dir, steps=6, checkpoint_every=2, keep_checkpoints=5)
    cfg["tracking"] = {"enabled": False}
    full = train(experiment_from_dict(cfg), progress=False)
    reference = torch.load(full.checkpoint / "model.pt", weights_only=True)
    assert ckpt.damage(ckpt.latest(tmp_path / "run")) is None
    (tmp_path / "run" / "checkpoint-6").rename(tmp_path / "aside")  # as if killed after checkpoint 4
    four = tmp_path / "run" / "checkpoint-4"
    data = bytearray((four / "optimizer.pt").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = os.urandom(4096)  # overwritten in place: same size
    (four / "optimizer.pt").write_bytes(bytes(data))
    model = four / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # and a truncated one
    out = train(experiment_from_dict(cfg), resume=True, progress=False)
    assert "checkpoint-4/model.pt: " in caplog.text and "truncated or overwritten" in caplog.text
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    resumed = torch.load(out.checkpoint / "model.pt", weights_only=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # from step 2, the same end
    data = bytearray((out.checkpoint / "rng.pt").read_bytes())
    data[10] ^= 0xFF
    (out.checkpoint / "rng.pt").write_bytes(bytes(data))
    assert "its bytes changed" in ckpt.damage(ckpt.Checkpoint(out.checkpoint))


def test_resume_refuses_a_changed_experiment_unless_told(tmp_path, data_dir):
    cfg = _small(tmp_path, data_dir, steps=4, checkpoint_every=2)
    import mlflow

    first = train(experiment_from_dict(cfg), progress=False)
    assert first.checkpoint.name == "checkpoint-4"
    (tmp_path / "run" / "checkpoint-4").rename(tmp_path / "aside")
    changed = json.loads(json.dumps(cfg))
    changed["train"]["encoder_lr"] = 2e-3
    changed["sampling"]["batch_size"] = 8
    changed["train"]["log_every"] = 1  # how it reports: allowed
    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    before = [(r.info.run_id, r.info.status) for r in mlflow.search_runs(experiment_names=["glue-mini"],
                                                                         output_format="list")]
    with pytest.raises(ConfigError, match=r"--resume: the experiment differs .*sampling.batch_size: 16 → 8; "
                                          r"train.encoder_lr: 0.001 → 0.002\. .*--allow-change KEY"):
        train(experiment_from_dict(changed), resume=True, progress=False)
    after = [(r.info.run_id, r.info.status) for r in mlflow.search_runs(experiment_names=["glue-mini"],
                                                                        output_format="list")]
    assert after == before  # a refused resume changes nothing in MLflow
    out = train(experiment_from_dict(changed), resume=True, progress=False,
                allow_changes=["train.encoder_lr", "sampling"])
    assert out.checkpoint.name == "checkpoint-4"


def test_max_length_beyond_the_encoder_positions_is_an_error_at_its_line(tmp_path, data_dir):
    cfg = _small(tmp_path, data_dir, steps=2)
    cfg["encoder"] = {"name": str(E5), "max_length": 1200}
    cfg["tracking"] = {"enabled": False}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if "max_length: 1200" in text)
    run = _cli(["train", str(path)], tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"mtl: error: {path}:{line}: encoder.max_length: 1200 is more than the 512 positions of {E5}; set "
        "encoder.max_length to 512 or less (long inputs are cut into windows by each family)")


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB file system of its own (tmpfs; needs root, as CI and this project's machines run)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so_and_leaves_no_partial_checkpoint(tmp_path, data_dir, small_disk, caplog):
    cfg = _small(tmp_path, data_dir, steps=4, checkpoint_every=2, output_dir=str(small_disk / "run"))
    cfg["tracking"] = {"enabled": False}
    with pytest.raises(Exception, match=r"no space left on device while writing checkpoint-2 \(.* MiB free, the "
                                        r"checkpoint needs about .* MiB\); nothing of it was left behind") as err:
        train(experiment_from_dict(cfg), progress=False)
    assert type(err.value).__name__ == "TrainingError"
    assert "checkpoints will fail unless room is made" in caplog.text  # said before step 1
    assert sorted(p.name for p in (small_disk / "run").iterdir()) == [".mtl-lock"]


def test_a_huge_input_is_windowed_in_linear_time_and_capped(tmp_path, data_dir, caplog):
    """One ~1 MB row of real text (SQuAD paragraphs), as JSON lines and as TSV (a cell over csv's 128 KiB
    limit): read, windowed (each window's positions sorted, not found by a pass over the whole input) and
    cut to max_windows, so its batch stays bounded."""
    from mtl.data import build_families, load_splits
    from mtl.encoder import load_tokenizer

    squad = json.loads((data_dir / "squad/dev.json").read_text(encoding="utf-8"))
    paragraphs = [p["context"].replace("\n", " ").replace("\t", " ") for a in squad["data"] for p in a["paragraphs"]]
    huge = " ".join(paragraphs)[:1_000_000]
    rows = [("a short one", "0"), (huge, "1"), ("another short one", "0")]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (tmp_path / "long.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    for name in ("long.jsonl", "long.tsv"):
        cfg = _small(tmp_path, data_dir, steps=1)
        cfg["tasks"] = {"doc": {"family": "classification", "options": {"long_inputs": "windows"}, "datasets": [
            {"language": "en", "train": str(tmp_path / name), "fields": {"text": "text", "label": "label"}}]}}
        exp = experiment_from_dict(cfg)
        families = build_families(exp, load_tokenizer(exp.encoder))
        (split,) = load_splits(exp, families, ["train"])
        big = split.features[1]
        assert len(big["window_lengths"]) == 64 and max(big["window_lengths"]) <= exp.encoder.max_length
        assert "1 of 3 inputs need more than options.max_windows=64 windows" in caplog.text
        caplog.clear()
