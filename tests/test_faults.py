"""Faults from outside: a tracking server that goes down mid-run and comes back, a kill during a
checkpoint write. Nothing logged is lost, and the previous checkpoint stays loadable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import REPO

from mtl import checkpoint as ckpt
from mtl import tracking
from mtl.core.config import TrackingConfig

# --------------------------------------------------------------------------- a real MLflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 over one SQLite file, stopped and started again on the same port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        store = f"sqlite:///{self.folder / 'db.sqlite'}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def test_metrics_logged_while_the_server_is_down_reach_it_when_it_is_back(server, tmp_path, monkeypatch, capsys):
    import mlflow

    from launch.cli import main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setattr(tracking, "RETRY_FIRST_S", 0.2)
    tracker = tracking.Tracker(TrackingConfig(uri=server.uri), "outage")
    tracker.unsent_file = tmp_path / "run" / "unsent-metrics.jsonl"
    run_id = tracker.start(run_name="r")
    assert run_id
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert tracker.flush(timeout=30) and not tracker.pending

    server.stop()
    tracker.log_text("logged during the outage", "notes.txt")  # kept beside the run, uploaded later
    tracker.log_metrics({"loss": 2.0}, step=2)
    tracker.log_metrics({"loss": 3.0}, step=3)
    assert not tracker.flush(timeout=30)  # a fresh try failed: kept, tracking still on
    assert [m["step"] for m in tracker.pending] == [2, 3] and tracker.enabled

    server.start()
    assert tracker.flush(timeout=30) and not tracker.pending  # sent once it answers again

    server.stop()  # down again, and still down when the run ends: the rest goes to a file
    tracker.log_metrics({"loss": 5.0}, step=5)
    tracker.end()
    assert tracker.unsent_file.is_file()
    assert (tmp_path / "run" / "unsent-artifacts" / run_id / "notes.txt").read_text() == "logged during the outage"

    server.start()
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert main(["sync-metrics", str(tracker.unsent_file), "--uri", server.uri]) == 0
    assert "sent 1 metric values" in capsys.readouterr().out
    assert not tracker.unsent_file.exists()  # renamed once sent, so it is not sent twice
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (5, 5.0)]
    notes = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "down"))
    assert Path(notes).read_text() == "logged during the outage"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_log_metrics_does_not_wait_for_a_server_that_is_down(server, tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow's own retries (2, 2 s apart) make one failing send cost seconds: the cost training must not pay.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setattr(tracking, "RETRY_FIRST_S", 0.2)
    tracker = tracking.Tracker(TrackingConfig(uri=server.uri), "outage")
    tracker.unsent_file = tmp_path / "run" / "unsent-metrics.jsonl"
    run_id = tracker.start(run_name="r")
    server.stop()

    # What one send to the stopped server costs here, measured the way the tracker sends.
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    probe = [{"run_id": run_id, "key": "probe", "value": 0.0, "timestamp": 0, "step": 0}]
    t0 = time.perf_counter()
    with pytest.raises(MlflowException):
        tracking.send_metrics(client, probe)
    one_send = time.perf_counter() - t0
    assert one_send > 1.0, one_send  # MLflow waited between its retries

    first_ms = int(time.time() * 1000)
    t0 = time.perf_counter()
    for step in range(1, 51):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.1}, step=step)
    elapsed = time.perf_counter() - t0
    last_ms = int(time.time() * 1000)
    print(f"one failing send {one_send:.3f} s; 50 log_metrics calls {elapsed:.4f} s")
    assert elapsed < one_send / 10, f"50 log_metrics calls took {elapsed:.3f} s; one failing send {one_send:.3f} s"

    server.start()
    tracker.end()
    assert not tracker.unsent_file.exists()  # all sent at the end: nothing left for sync-metrics
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    history = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(1, 51)]
    assert all(first_ms <= m.timestamp <= last_ms for m in history)  # the time logged, not the time sent
    assert len(client.get_metric_history(run_id, "train/lr")) == 50
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_end_of_a_run_waits_a_bounded_time_for_a_server_that_hangs(server, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # each request to the hung server waits this long
    monkeypatch.setattr(tracking, "FLUSH_WAIT_S", 1.0, raising=False)
    tracker = tracking.Tracker(TrackingConfig(uri=server.uri), "outage")
    tracker.unsent_file = tmp_path / "run" / "unsent-metrics.jsonl"
    run_id = tracker.start(run_name="r")
    server.stop()
    with socket.socket() as hung:  # the server's port accepts connections and never answers
        hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hung.bind(("127.0.0.1", server.port))
        hung.listen(16)
        t0 = time.perf_counter()
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.end()
        elapsed = time.perf_counter() - t0
    assert elapsed < tracking.FLUSH_WAIT_S + 5 < 30, elapsed  # the bounded wait, not the request's 30 s
    records = [json.loads(line) for line in tracker.unsent_file.read_text().splitlines()]
    assert [(r["key"], r["step"], r["value"]) for r in records if "kind" not in r] == [("loss", 1, 1.0)]
    assert [(r["run_id"], r["status"]) for r in records if r.get("kind") == "end"] == [(run_id, "FINISHED")]


def test_a_run_whose_server_is_down_at_its_end_is_ended_by_sync_metrics(server, tmp_path, data_dir, monkeypatch,
                                                                         capsys):
    import json

    import mlflow
    from test_trainer import glue_experiment

    from launch.cli import main
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import Trainer, train

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    cfg = glue_experiment(tmp_path, data_dir, steps=2, log_every=1)
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"]}
    cfg["tasks"]["sst2"]["datasets"][0]["max_examples"] = 32
    cfg["tracking"] = {"uri": server.uri}
    real_evaluate = Trainer._evaluate

    def evaluate(self):
        if self.step == self.total_steps and server.proc is not None:
            server.stop()  # down from the final evaluation on: tables, predictions, plots, model, the run's end
        return real_evaluate(self)

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    started_ms = int(time.time() * 1000)
    out = train(experiment_from_dict(cfg), progress=False)
    ended_ms = int(time.time() * 1000)

    unsent = out.output_dir / "unsent-metrics.jsonl"
    assert unsent.is_file()
    (end,) = [r for r in map(json.loads, unsent.read_text().splitlines()) if r.get("kind") == "end"]
    assert end["status"] == "FINISHED" and started_ms <= end["end_time"] <= ended_ms
    run_id = end["run_id"]
    server.start()
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    assert main(["sync-metrics", str(unsent), "--uri", server.uri]) == 0
    assert f"run {run_id} ended FINISHED" in capsys.readouterr().out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == end["end_time"]  # as it ended, not as synced
    assert run.data.metrics["eval/sst2/en/accuracy"] == pytest.approx(out.metrics["eval/sst2/en/accuracy"])

    def files(path: str | None = None) -> set[str]:
        found = set()
        for a in client.list_artifacts(run_id, path):
            found |= files(a.path) if a.is_dir else {a.path}
        return found

    logged = files()
    assert {"metrics/table.txt", "sampling/rates.txt", "plots/sampling_rates.png",
            "plots/learning_curves.png", "records/models.json"} <= logged, logged
    assert [f for f in logged if f.startswith("predictions/")]
    uris = json.loads(Path(client.download_artifacts(run_id, "records/models.json", str(tmp_path / "m"))).read_text())
    model = mlflow.MlflowClient(tracking_uri=server.uri).get_logged_model(uris["sst2"].split("/")[-1])
    assert model.source_run_id == run_id


# --------------------------------------------------------------------------- a kill inside a checkpoint write

_WRITER = """
import sys, time
from pathlib import Path

import torch

from mtl import checkpoint as ckpt


class Tok:
    def save_pretrained(self, path):
        Path(path).mkdir()
        (Path(path) / "tokenizer.json").write_text("{}")


class Cfg(Tok):
    pass


out, step, stall = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
real_save = torch.save


def save(obj, f, *a, **k):
    if stall == "model" and str(f).endswith("model.pt"):
        with open(f, "wb") as fh:  # half a file, then hang until killed
            fh.write(b"PK" * 1000)
            fh.flush()
        (out / "stalled").write_text("1")
        time.sleep(600)
    return real_save(obj, f, *a, **k)


torch.save = save
real_replace = ckpt.os.replace


def replace(src, dst):
    if stall == "swap":
        (out / "stalled").write_text("1")
        time.sleep(600)
    return real_replace(src, dst)


ckpt.os.replace = replace
ckpt.save(out, step, model_state={"w": torch.full((4,), float(step))}, optimizer_state={"s": step},
          scheduler_state={"s": step}, trainer_state={"step": step}, vocab={}, experiment_yaml="name: x\\n",
          tokenizer=Tok(), encoder_config=Cfg(), rng_states=[ckpt.rng_state()], keep=2)
"""


class _Tok:
    def save_pretrained(self, path: Path) -> None:
        Path(path).mkdir()
        (Path(path) / "tokenizer.json").write_text("{}")


def _save(out: Path, step: int) -> None:
    ckpt.save(out, step, model_state={"w": torch.full((4,), float(step))}, optimizer_state={"s": step},
              scheduler_state={"s": step}, trainer_state={"step": step}, vocab={}, experiment_yaml="name: x\n",
              tokenizer=_Tok(), encoder_config=_Tok(), rng_states=[ckpt.rng_state()], keep=2)


def _killed_write(out: Path, step: int, stall: str, script: Path) -> None:
    """Run a checkpoint write in a child process and kill it in the middle of the write."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(step), stall], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "stalled").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / "stalled").unlink()


@pytest.mark.parametrize("stall", ["model", "swap"])
def test_kill_inside_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, stall):
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER))
    out = tmp_path / "run"
    _save(out, 10)
    # Killed while writing step 20 (mid-file, or with every file written but not yet in place), and
    # while writing step 10 again (a resumed run saving the same step).
    _killed_write(out, 20, stall, script)
    _killed_write(out, 10, stall, script)
    found = ckpt.latest(out)
    assert found is not None and found.step == 10
    assert torch.load(found.path / "model.pt", weights_only=True)["w"].tolist() == [10.0] * 4
    assert found.state() == {"step": 10}
    assert [c.step for c in ckpt.list_checkpoints(out)] == [10]
    # The next complete write clears what the killed ones left behind.
    _save(out, 30)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [10, 30]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
