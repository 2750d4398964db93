"""Every load of a checkpoint file names the file and what is wrong with it (missing, truncated, unreadable):
in `mtl evaluate`, on resume and when a stage starts from another's weights, with a manifest and for a
checkpoint written before manifests (legacy: none), whose resume falls back to the previous loadable one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_run_guards import _small

from launch.cli import main
from mtl import checkpoint as ckpt
from mtl.core.errors import ConfigError
from mtl.experiment import experiment_from_dict
from mtl.trainer import train

RESUMED = ("model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", "vocab.json")
EVALUATED = ("model.pt", "vocab.json", "experiment.yaml", "tokenizer/tokenizer.json", "encoder/config.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir) -> tuple[dict, Path, dict[str, torch.Tensor]]:
    """A real 4-step run with checkpoints at steps 2 and 4: its experiment, its folder, its final weights."""
    base = tmp_path_factory.mktemp("trained")
    cfg = _small(base, data_dir, steps=4, checkpoint_every=2, keep_checkpoints=5)
    cfg["tracking"] = {"enabled": False}
    out = train(experiment_from_dict(cfg), progress=False)
    return cfg, base / "run", torch.load(out.checkpoint / "model.pt", weights_only=True)


def truncate(path: Path) -> None:
    """Cut to its first half: what a copy or a write stopped short leaves."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove(path: Path) -> None:
    path.unlink()


def copy(run: Path, into: Path, steps: tuple[int, ...], legacy: bool) -> Path:
    """Checkpoints `steps` of `run` in a new run folder; legacy: without their manifests."""
    into.mkdir()
    for step in steps:
        shutil.copytree(run / f"checkpoint-{step}", into / f"checkpoint-{step}")
        if legacy:
            (into / f"checkpoint-{step}" / ckpt.MANIFEST).unlink()
    return into


def named(text: str, path: Path, damage: Callable[[Path], None]) -> bool:
    """Whether `text` names the file and says what is wrong with it."""
    words = ("missing",) if damage is remove else ("truncated",)
    return str(path) in text and any(w in text for w in words)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "manifest"])
@pytest.mark.parametrize("damage", [truncate, remove], ids=["truncated", "missing"])
@pytest.mark.parametrize("name", EVALUATED)
def test_evaluate_names_the_damaged_file(run, tmp_path, capsys, name, damage, legacy):
    _, folder, _ = run
    target = copy(folder, tmp_path / "run", (4,), legacy) / "checkpoint-4"
    damage(target / name)
    capsys.readouterr()
    code = main(["evaluate", str(target), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith("mtl: error: "), err[-5:]
    assert named(err[-1], target / name, damage), err[-1]


def test_evaluate_does_not_need_the_training_state(run, tmp_path, capsys):
    """Evaluation reads the weights, vocabularies, tokenizer and encoder config, not the optimiser's state."""
    _, folder, _ = run
    target = copy(folder, tmp_path / "run", (4,), legacy=False) / "checkpoint-4"
    for name in ("optimizer.pt", "rng.pt", "scheduler.pt"):
        truncate(target / name)
    assert main(["evaluate", str(target), "--device", "cpu"]) == 0
    assert "sst2" in capsys.readouterr().out


@pytest.mark.parametrize("damage,name", [(truncate, n) for n in RESUMED] + [(remove, "optimizer.pt")],
                         ids=[f"truncated-{n}" for n in RESUMED] + ["missing-optimizer.pt"])
def test_legacy_resume_names_the_damaged_file(run, tmp_path, damage, name):
    """A checkpoint without a manifest, the only one: resuming from it is refused, naming the file."""
    cfg, folder, _ = run
    into = copy(folder, tmp_path / "run", (4,), legacy=True)
    damage(into / "checkpoint-4" / name)
    resumed = {**cfg, "train": {**cfg["train"], "output_dir": str(into)}}
    with pytest.raises(ConfigError) as err:
        train(experiment_from_dict(resumed), resume=True, progress=False)
    assert named(str(err.value), into / "checkpoint-4" / name, damage), str(err.value)
    assert "every checkpoint is damaged" in str(err.value)


@pytest.mark.parametrize("name", ["model.pt", "rng.pt", "trainer_state.json"])
def test_legacy_resume_falls_back_to_the_previous_loadable_checkpoint(run, tmp_path, caplog, name):
    """Checkpoints 2 and 4 without manifests, 4's `name` cut short: the resume warns, naming it, goes on from 2
    and ends with the uninterrupted run's weights."""
    cfg, folder, reference = run
    into = copy(folder, tmp_path / "run", (2, 4), legacy=True)
    truncate(into / "checkpoint-4" / name)
    resumed = {**cfg, "train": {**cfg["train"], "output_dir": str(into)}}
    out = train(experiment_from_dict(resumed), resume=True, progress=False)
    assert f"not resuming from a damaged checkpoint: {into / 'checkpoint-4' / name}: unreadable" in caplog.text
    assert f"resuming from {into / 'checkpoint-2'} instead" in caplog.text
    weights = torch.load(out.checkpoint / "model.pt", weights_only=True)
    assert all(torch.equal(reference[k], weights[k]) for k in reference)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "manifest"])
def test_starting_from_a_damaged_checkpoint_names_it(run, tmp_path, legacy):
    """A stage that starts from another's (best) checkpoint: its damaged model.pt is named, not loaded."""
    cfg, folder, _ = run
    source = copy(folder, tmp_path / "from", (4,), legacy) / "checkpoint-4"
    model = source / "model.pt"
    data = bytearray(model.read_bytes())
    if legacy:
        truncate(model)
    else:  # overwritten in place, same size: only the manifest can tell
        data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
        model.write_bytes(bytes(data))
    fresh = {**cfg, "train": {**cfg["train"], "output_dir": str(tmp_path / "next")}}
    with pytest.raises(ConfigError, match=r"unreadable|changed since it was written") as err:
        train(experiment_from_dict(fresh), init_from=source, progress=False)
    assert str(model) in str(err.value)
