"""A regime resumed with a changed experiment is refused before anything is tracked: every MLflow run of the
finished regime (its parent run and its stages' runs) keeps its status and end time."""

from __future__ import annotations

import pytest
import yaml
from test_regimes import three_tasks

from launch.cli import main
from mtl import regimes


def _runs(uri: str, experiment: str) -> dict[str, tuple]:
    """run id → (name, status, start, end) of every run of the MLflow experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_id: (r.info.run_name, r.info.status, r.info.start_time, r.info.end_time) for r in found}


@pytest.mark.parametrize("left", ["finished", "checkpoints"])
def test_a_refused_regime_resume_changes_nothing_in_mlflow(tmp_path, data_dir, capsys, left):
    """mt_finetune on sst2 (2 stages) run to its end, then resumed with train.encoder_lr changed: refused by the
    finished stage's record (`finished`), or, with the stage records gone, by the stage's checkpoint."""
    cfg = three_tasks(tmp_path, data_dir, cap=16, regime={"name": "mt_finetune", "pretrain_steps": 2,
                                                          "finetune_steps": 2})
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"]}
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg["tracking"] = {"uri": uri, "experiment": "regime-resume", "log_model": False, "log_plots": False,
                       "log_predictions": False}
    path = tmp_path / "regime.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    before = _runs(uri, "regime-resume")
    # the regime's run and one per stage, finished
    assert len(before) == 3 and {"mt", "finetune/sst2"} <= {name for name, _, _, _ in before.values()}
    assert all(status == "FINISHED" and end for _, status, _, end in before.values())
    root = tmp_path / "run"
    if left == "checkpoints":  # as if killed after each stage's last checkpoint, before its record
        for done in root.rglob(regimes.DONE_FILE):
            done.unlink()
    capsys.readouterr()

    code = main(["train", str(path), "--resume", "--set", "train.encoder_lr=0.002"])
    err = capsys.readouterr().err
    assert code == 2
    if left == "finished":
        assert f"{root / 'mt' / regimes.DONE_FILE}: stage mt was finished with another experiment" in err
    else:
        assert "--resume: the experiment differs from the one" in err and "train.encoder_lr: 0.001 → 0.002" in err
    assert _runs(uri, "regime-resume") == before  # no run reopened, none marked FAILED, no end time moved

    # unchanged, the same resume goes through: nothing trained again, the regime's run reused
    assert main(["train", str(path), "--resume"]) == 0
    after = _runs(uri, "regime-resume")
    assert set(after) == set(before)
    assert all(status == "FINISHED" for _, status, _, _ in after.values())

