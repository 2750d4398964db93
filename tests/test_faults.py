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
from mtl.config import TrackingConfig

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
    assert not tracker.pending

    server.stop()
    tracker.log_text("logged during the outage", "notes.txt")  # lost, with a warning; tracking goes on
    tracker.log_metrics({"loss": 2.0}, step=2)
    tracker.log_metrics({"loss": 3.0}, step=3)
    assert [m["step"] for m in tracker.pending] == [2, 3] and tracker.enabled  # kept, tracking still on

    server.start()
    time.sleep(0.5)  # past the retry wait
    tracker.log_metrics({"loss": 4.0}, step=4)
    assert not tracker.pending

    server.stop()  # down again, and still down when the run ends: the rest goes to a file
    tracker.log_metrics({"loss": 5.0}, step=5)
    tracker.end()
    assert tracker.unsent_file.is_file()

    # Sent later (here straight into the server's own store, which any tracking URI may name).
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["sync-metrics", str(tracker.unsent_file), "--uri", store]) == 0
    assert "sent 1 metric values" in capsys.readouterr().out
    assert not tracker.unsent_file.exists()  # renamed once sent, so it is not sent twice
    history = mlflow.MlflowClient(tracking_uri=store).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)]


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
