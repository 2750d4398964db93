"""One load of a checkpoint's weights (mtl/checkpoint_load.py) behind `mtl evaluate`/`mtl predict` and a stage
that starts from another's weights: the same encoder tensors either way, heads the checkpoint lacks start
fresh only where a stage starts from it, and a head that does not fit is an error naming the folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_trainer import glue_experiment

from launch.cli import main
from mtl import checkpoint as ckpt
from mtl import inference
from mtl.checkpoint_load import WeightsMismatch, mismatch
from mtl.experiment import experiment_from_dict
from mtl.trainer import Trainer, train


class _Started(Exception):
    """Stops a stage once it is set up, carrying the weights it starts from."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__("set up")
        self.state = state


def _tasks(cfg: dict, names: tuple[str, ...], out: Path) -> dict:
    every = glue_experiment(out, Path(cfg["data_root"]), steps=2)["tasks"]
    tasks = {n: every[n] for n in names}
    for t in tasks.values():
        t["datasets"][0]["max_examples"] = 32
    return {**cfg, "tasks": tasks, "train": {**cfg["train"], "output_dir": str(out / "run")}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> tuple[dict, Path]:
    """A 2-step run with heads sst2 and rte: its experiment and its final checkpoint."""
    base = tmp_path_factory.mktemp("ab")
    cfg = glue_experiment(base, data_dir, steps=2)
    cfg["tracking"] = {"enabled": False}
    cfg = _tasks(cfg, ("sst2", "rte"), base)
    return cfg, train(experiment_from_dict(cfg), progress=False).checkpoint


def started_from(cfg: dict, source: Path, monkeypatch) -> dict[str, torch.Tensor]:
    """The weights a stage of `cfg` starts from when it starts from `source` (the stage stops there)."""
    setup = Trainer._setup

    def stop_after_setup(self):
        setup(self)
        raise _Started({k: v.clone() for k, v in self.engine.unwrap().state_dict().items()})

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_setup", stop_after_setup)
        with pytest.raises(_Started) as got:
            train(experiment_from_dict(cfg), init_from=source, progress=False)
    return got.value.state


def test_inference_and_init_from_load_the_same_weights(trained, tmp_path, monkeypatch, caplog):
    cfg, source = trained
    saved = torch.load(source / "model.pt", weights_only=True)
    encoder = [k for k in saved if k.startswith("encoder.")]
    loaded = inference.load(source, device="cpu").model.state_dict()
    assert encoder and all(torch.equal(loaded[k], saved[k]) for k in saved)  # every tensor, both heads
    caplog.set_level("INFO", logger="mtl.trainer")
    # a stage of sst2 and stsb: sst2's head and the encoder come from the checkpoint, stsb's starts fresh,
    # rte's is left behind
    start = started_from(_tasks(cfg, ("sst2", "stsb"), tmp_path), source, monkeypatch)
    assert all(torch.equal(start[k], loaded[k]) for k in encoder)
    assert all(torch.equal(start[k], saved[k]) for k in saved if k.startswith("heads.sst2."))
    new = [k for k in start if k not in saved]
    unused = [k for k in saved if k not in start]
    assert new and all(k.startswith("heads.stsb.") for k in new)
    assert unused and all(k.startswith("heads.rte.") for k in unused)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initialised from")]
    assert f"({len(new)} new tensors, {len(unused)} unused)" in line


def _widen_rte_head(source: Path, into: Path) -> Path:
    """A copy of `source` whose rte head has 3 outputs where the experiment builds 2 (manifest rewritten)."""
    shutil.copytree(source, into)
    state = torch.load(into / "model.pt", weights_only=True)
    hidden = state["heads.rte.out.weight"].shape[1]
    state["heads.rte.out.weight"], state["heads.rte.out.bias"] = torch.zeros(3, hidden), torch.zeros(3)
    torch.save(state, into / "model.pt")
    (into / ckpt.MANIFEST).unlink()
    ckpt.write_manifest(into)
    return into


def test_a_head_that_does_not_fit_names_the_folder(trained, tmp_path, monkeypatch, capsys):
    cfg, source = trained
    bad = _widen_rte_head(source, tmp_path / "checkpoint-2")
    with pytest.raises(WeightsMismatch) as err:
        inference.load(bad, device="cpu")
    said = str(err.value)
    assert said.startswith(f"{bad}: the checkpoint's weights do not fit") and "heads.rte.out.weight" in said
    assert "(3, 32) there, (2, 32) here" in said
    with pytest.raises(WeightsMismatch) as err:  # a stage that trains rte starts from it: the same error
        started_from(_tasks(cfg, ("sst2", "rte"), tmp_path / "both"), bad, monkeypatch)
    assert str(err.value) == said
    # a stage without rte leaves that head behind, whatever its shape
    start = started_from(_tasks(cfg, ("sst2",), tmp_path / "sst2"), bad, monkeypatch)
    assert not any(k.startswith("heads.rte.") for k in start)
    capsys.readouterr()
    assert main(["evaluate", str(bad), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"mtl: error: {said}"


def test_which_tensors_must_match():
    own = {"encoder.w": torch.zeros(2), "heads.a.w": torch.zeros(2), "heads.b.w": torch.zeros(2)}
    saved = {"encoder.w": torch.zeros(2), "heads.a.w": torch.zeros(2), "heads.c.w": torch.zeros(2)}
    assert mismatch(own, saved, strict_heads=False) is None  # b starts fresh, c is left
    assert mismatch(own, saved, strict_heads=True) == "not in the checkpoint: heads.b.w; not in the model: heads.c.w"
    without_encoder = {k: v for k, v in saved.items() if k != "encoder.w"}
    assert mismatch(own, without_encoder, strict_heads=False) == "not in the checkpoint: encoder.w"
