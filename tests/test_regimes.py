"""Regimes: the stage graph of every regime, what each stage really draws, masked-LM pre-training with the
`mlm` family, a killed comparison resumed, the MLflow layout and `mtl compare`, and the transfer matrix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_encoder

from mtl import regimes
from mtl.core.errors import ConfigError
from mtl.experiment import experiment_from_dict, load_experiment


def _encoder() -> dict:
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"max_length": 64, "layer_dropout": 0.0, "dropout": 0.0})
    return enc


def _nli(lang: str, path: str, cap: int, train: bool = True) -> dict:
    ds = {"language": lang, "dev": path, "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "label"},
          "max_examples": cap}
    if train:
        ds["train"] = path
    return ds


def three_tasks(tmp_path: Path, data_dir: Path, cap: int = 24, regime: dict | None = None) -> dict:
    """sst2 (one language), nli (en and de to train on, zh to evaluate only) and masked LM on SST-2 sentences."""
    return {
        "name": "regimes",
        "data_root": str(data_dir),
        "encoder": _encoder(),
        "tasks": {
            "sst2": {"family": "classification", "datasets": [
                {"language": "en", "train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv",
                 "fields": {"text": "sentence", "label": "label"}, "max_examples": cap}]},
            "nli": {"family": "classification", "options": {"skip_labels": ["-"]}, "datasets": [
                _nli("en", "xnli/en/dev.tsv", cap), _nli("de", "xnli/de/dev.tsv", cap),
                _nli("zh", "ocnli/dev.sample.jsonl", cap, train=False)]},
            "lm": {"family": "mlm", "datasets": [
                {"language": "en", "train": "glue/SST-2/train.tsv", "fields": {"text": "sentence"},
                 "max_examples": cap}]},
        },
        "sampling": {"batch_size": 8},
        "train": {"steps": 5, "head_lr": 1e-3, "encoder_lr": 1e-3, "output_dir": str(tmp_path / "run"),
                  "eval_batch_size": 32, "log_every": 2},
        "tracking": {"enabled": False},
        **({"regime": regime} if regime is not None else {}),
    }


def regime_keys(name: str) -> dict:
    """The budgets (and the task whose languages count) that regime `name` reads."""
    keys: dict = {}
    if name in ("multi_task", "mt_finetune", "leave_one_out", "supervised_pretrain", "mlm_pretrain"):
        keys["pretrain_steps"] = 7
    if name != "multi_task":
        keys["finetune_steps"] = 3
    if name in ("leave_one_language_out", "transfer"):
        keys["languages_of"] = "nli"
    return keys


# --------------------------------------------------------------------------- the stage graph (pure)

NLI_EVAL = {"en": "eval", "de": "eval", "zh": "zero-shot"}
ALL = {"sst2": ["en"], "nli": ["en", "de"], "lm": ["en"]}
FT = {"sst2": ({"sst2": ["en"]}, {"sst2": {"en": "eval"}}), "nli": ({"nli": ["en", "de"]}, {"nli": NLI_EVAL})}

# regime → [(stage, starts from, trains, evaluates)], written out by hand
EXPECTED = {
    "single": [("single/sst2", None, *FT["sst2"]), ("single/nli", None, *FT["nli"])],
    "multi_task": [("mt", None, ALL, {"sst2": {"en": "eval"}, "nli": NLI_EVAL})],
    "mt_finetune": [("mt", None, ALL, {}), ("finetune/sst2", "mt", *FT["sst2"]), ("finetune/nli", "mt", *FT["nli"])],
    "leave_one_out": [
        ("loo/sst2/pretrain", None, {"nli": ["en", "de"], "lm": ["en"]}, {}),
        ("loo/sst2/finetune", "loo/sst2/pretrain", *FT["sst2"]),
        ("loo/nli/pretrain", None, {"sst2": ["en"], "lm": ["en"]}, {}),
        ("loo/nli/finetune", "loo/nli/pretrain", *FT["nli"]),
    ],
    "supervised_pretrain": [("supervised", None, {"sst2": ["en"], "nli": ["en", "de"]}, {}),
                            ("finetune/sst2", "supervised", *FT["sst2"]), ("finetune/nli", "supervised", *FT["nli"])],
    "mlm_pretrain": [("mlm", None, {"lm": ["en"]}, {}), ("finetune/sst2", "mlm", *FT["sst2"]),
                     ("finetune/nli", "mlm", *FT["nli"])],
    "leave_one_language_out": [
        ("lolo/en", None, {"nli": ["de"]}, {"nli": {"en": "zero-shot", "de": "eval", "zh": "zero-shot"}}),
        ("lolo/de", None, {"nli": ["en"]}, {"nli": {"en": "eval", "de": "zero-shot", "zh": "zero-shot"}}),
    ],
    "transfer": [
        ("transfer/en", None, {"nli": ["en"]}, {"nli": {"en": "eval", "de": "zero-shot", "zh": "zero-shot"}}),
        ("transfer/de", None, {"nli": ["de"]}, {"nli": {"en": "zero-shot", "de": "eval", "zh": "zero-shot"}}),
    ],
}
# what each regime scores, stage by stage
REPORTS = {
    "single": {"single/sst2": [("sst2", "en")], "single/nli": [("nli", "en"), ("nli", "de"), ("nli", "zh")]},
    "multi_task": {"mt": [("sst2", "en"), ("nli", "en"), ("nli", "de"), ("nli", "zh")]},
    "leave_one_language_out": {"lolo/en": [("nli", "en")], "lolo/de": [("nli", "de")]},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_stage_graph_of_every_regime(tmp_path, data_dir, name):
    if name == "multi_task":  # on its own a plain run (no regime keys): read its graph in a comparison
        data = three_tasks(tmp_path, data_dir, regime={"pretrain_steps": 7, "finetune_steps": 3})
        data["compare"] = ["multi_task", "single"]
    else:
        data = three_tasks(tmp_path, data_dir, regime={"name": name, **regime_keys(name)})
    stages = regimes.plan_regime(experiment_from_dict(data), name)
    got = [(s.key, s.init_from, s.train, s.evaluate) for s in stages]
    assert got == EXPECTED[name]
    budgets = {"pretrain": 7, "finetune": 3}
    assert all(s.steps == budgets[s.budget] and s.epochs is None for s in stages)
    assert [s.budget for s in stages] == ["pretrain" if not s[3] or s[0] == "mt" else "finetune"
                                          for s in EXPECTED[name]]
    if name in REPORTS:
        assert {s.key: s.reports for s in stages} == REPORTS[name]
    # Each scored dataset is scored by one stage only, and only where that stage evaluates it.
    scored = [(t, d) for s in stages for t, d in s.reports]
    assert all(d in s.evaluate[t] for s in stages for t, d in s.reports)
    if name != "transfer":
        assert len(scored) == len(set(scored))
    # A stage starts from a stage trained before it.
    keys = [s.key for s in stages]
    assert all(s.init_from is None or keys.index(s.init_from) < keys.index(s.key) for s in stages)


def test_compare_qualifies_stages_and_keeps_the_graph(tmp_path, data_dir):
    data = three_tasks(tmp_path, data_dir, regime={"pretrain_steps": 7, "finetune_steps": 3})
    exp = experiment_from_dict({**data, "compare": ["mt_finetune", "leave_one_out"]})
    stages = regimes.plan(exp)
    assert [(s.key, s.init_from) for s in stages] == [
        ("mt_finetune/mt", None), ("mt_finetune/finetune/sst2", "mt_finetune/mt"),
        ("mt_finetune/finetune/nli", "mt_finetune/mt"),
        ("leave_one_out/loo/sst2/pretrain", None),
        ("leave_one_out/loo/sst2/finetune", "leave_one_out/loo/sst2/pretrain"),
        ("leave_one_out/loo/nli/pretrain", None),
        ("leave_one_out/loo/nli/finetune", "leave_one_out/loo/nli/pretrain"),
    ]


def test_stage_experiment_keeps_only_its_splits(tmp_path, data_dir):
    exp = experiment_from_dict(three_tasks(tmp_path, data_dir, regime={
        "name": "leave_one_language_out", "languages_of": "nli", "finetune_epochs": 2.0}))
    stage = regimes.plan(exp)[0]  # lolo/en: trains de, evaluates en zero-shot
    assert stage.roles() == {"nli": {"de": ["train", "eval"], "en": ["zero-shot"], "zh": ["zero-shot"]}}
    sexp = regimes.stage_experiment(exp, stage)
    assert list(sexp.tasks) == ["nli"]
    by_name = {ds.name: ds for ds in sexp.tasks["nli"].datasets}
    assert by_name["en"].train is None and by_name["en"].dev.endswith("xnli/en/dev.tsv")
    assert by_name["de"].train.endswith("xnli/de/dev.tsv")
    # the stage's dumped experiment (beside its checkpoints) does not bring the left-out split back
    dumped = {d["name"]: d for d in sexp.to_dict()["tasks"]["nli"]["datasets"]}
    assert dumped["en"]["train"] is None and dumped["de"]["train"] == "xnli/de/dev.tsv"
    assert sexp.train.steps is None and sexp.train.epochs == 2.0
    assert sexp.output_dir == tmp_path / "run" / "lolo" / "en"
    assert sexp.regime.is_default() and not sexp.compare and "regime" not in sexp.to_dict()
    assert sexp.tracking.tags["mtl.stage"] == "lolo/en"
    assert exp.tasks["nli"].datasets[0].train is not None  # the parent is untouched


# --------------------------------------------------------------------------- the schema


def _load(tmp_path: Path, data: dict, overrides: list[str] | None = None):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment(p, overrides)


@pytest.mark.parametrize("regime, compare, fragments", [
    ({"name": "single", "targets": ["sst2"]}, None, ["regime.targets", "read only by leave_one_out"]),
    ({"name": "leave_one_out", "targets": ["nope"]}, None, ["regime.targets.0", "unknown task 'nope'"]),
    ({"name": "leave_one_out", "targets": ["lm"]}, None, ["regime.targets.0", "not a supervised task"]),
    ({"name": "single", "finetune_steps": 3, "finetune_epochs": 1.0}, None, ["finetune_steps or finetune_epochs"]),
    ({"pretrain_steps": 3}, None, ["regime.pretrain_steps", "plain training run"]),
    ({"name": "transfer"}, None, ["languages_of", "the task whose languages"]),
    ({"name": "transfer", "languages_of": "nli", "sources": [["en", "zh"]]}, None,
     ["regime.sources.0", "'zh' is not a training language of task nli"]),
    ({"name": "leave_one_language_out", "languages_of": "sst2"}, None, ["at least two training languages"]),
    ({"name": "sngle"}, None, ["regime.name", "must be one of", "(did you mean single?)"]),
    ({}, ["single"], ["compare", "at least two regimes"]),
    ({}, ["single", "transfer"], ["compare", "not a row of a comparison"]),
    ({"name": "single"}, ["single", "multi_task"], ["regime.name", "with `compare`"]),
])
def test_regime_keys_are_checked_at_the_door(tmp_path, data_dir, regime, compare, fragments):
    data = three_tasks(tmp_path, data_dir)
    data["regime"] = regime
    if compare:
        data["compare"] = compare
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert str(tmp_path / "exp.yaml") in str(info.value)


def test_a_left_out_language_needs_eval_data(tmp_path, data_dir):
    data = three_tasks(tmp_path, data_dir, regime={"name": "leave_one_language_out", "languages_of": "nli",
                                                    "languages": ["de"]})
    data["tasks"]["nli"]["datasets"][1].pop("dev")
    with pytest.raises(ConfigError, match=r"regime.languages.0: task nli has no dev split in 'de'"):
        _load(tmp_path, data)
    data["regime"].pop("languages")  # by default only languages with eval data are left out
    assert [s.key for s in regimes.plan(_load(tmp_path, data))] == ["lolo/en"]


def test_mlm_pretrain_needs_a_self_supervised_task(tmp_path, data_dir):
    data = three_tasks(tmp_path, data_dir)
    data["tasks"].pop("lm")
    data["regime"] = {"name": "mlm_pretrain"}
    with pytest.raises(ConfigError, match="mlm_pretrain pre-trains on the self-supervised tasks"):
        _load(tmp_path, data)


def test_dry_run_prints_the_stage_graph(tmp_path, data_dir, capsys):
    from launch.cli import main

    data = three_tasks(tmp_path, data_dir, regime={"pretrain_steps": 7, "finetune_steps": 3})
    data["compare"] = ["supervised_pretrain", "mlm_pretrain"]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the sampling rates are those of a stage that trains every group, not a plain run's step count
    assert "# sampling (smoothed, every group together, as a multi-task stage draws them)" in out
    rows = {line.split()[0]: line.split() for line in out.split("# stages")[1].splitlines()[3:] if line.strip()}
    assert rows["mlm_pretrain/mlm"][1:6] == ["pretrained", "pretrain", "(7", "steps)", "lm:"]
    assert rows["mlm_pretrain/finetune/sst2"][1:3] == ["mlm_pretrain/mlm", "finetune"]
    assert "lm:" not in rows["supervised_pretrain/supervised"]
    assert len(rows) == 6 and not any(k.endswith("/lm") and k != "mlm_pretrain/mlm" for k in rows)


def test_a_bare_regime_name_and_set_overrides(tmp_path, data_dir):
    data = three_tasks(tmp_path, data_dir)
    data["regime"] = "single"
    assert _load(tmp_path, data).regime.name == "single"
    data.pop("regime")
    exp = _load(tmp_path, data, ["regime=mt_finetune", "regime.finetune_steps=4"])
    assert (exp.regime.name, exp.regime.finetune_steps) == ("mt_finetune", 4)
    assert "regime" not in _load(tmp_path, data).to_dict()  # a plain run dumps as it always has


# --------------------------------------------------------------------------- training


def test_leave_one_out_never_draws_the_target(tmp_path, data_dir, caplog):
    caplog.set_level("INFO", logger="mtl.trainer")
    cfg = three_tasks(tmp_path, data_dir, regime={"name": "leave_one_out", "targets": ["sst2"], "pretrain_steps": 12,
                                                  "finetune_steps": 2})
    out = regimes.run(experiment_from_dict(cfg), progress=False)
    pre, fine = out.stages["loo/sst2/pretrain"], out.stages["loo/sst2/finetune"]
    # what the pre-training stage's sampler actually drew: every other group, never the target
    assert sum(pre.drawn.values()) == 12
    assert set(pre.drawn) == {"nli/en", "nli/de", "lm/en"} and all(n > 0 for n in pre.drawn.values())
    assert fine.drawn == {"sst2/en": 2}
    assert pre.metrics == {}  # a pre-training stage is not evaluated
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initialised from")]
    source = tmp_path / "run" / "loo" / "sst2" / "pretrain" / "checkpoint-12"
    assert len(started) == 1 and str(source) in started[0]
    # every tensor but the target's new head came from the pre-training stage; its other heads were left
    pre_keys = torch.load(source / "model.pt", weights_only=True).keys()
    fine_keys = torch.load(tmp_path / "run" / "loo" / "sst2" / "finetune" / "checkpoint-2" / "model.pt",
                           weights_only=True).keys()
    new, unused = [k for k in fine_keys if k not in pre_keys], [k for k in pre_keys if k not in fine_keys]
    assert new and all(k.startswith("heads.sst2.") for k in new)
    assert unused and all(k.startswith(("heads.nli.", "heads.lm.")) for k in unused)
    assert f"({len(new)} new tensors, {len(unused)} unused)" in started[0]
    # the regime's row is the fine-tuning stage's final score, its compute both stages together
    (row,) = out.rows
    assert row.scores == {"sst2/en/accuracy": fine.metrics["eval/sst2/en/accuracy"]}
    assert (row.steps, row.tokens) == (14, pre.tokens + fine.tokens)
    assert pre.tokens > 0 and fine.tokens > 0
    done = json.loads((tmp_path / "run" / "loo" / "sst2" / "finetune" / regimes.DONE_FILE).read_text())
    assert done["steps"] == 2 and done["checkpoint"] == "checkpoint-2"


def test_mlm_pretraining_with_the_real_family(tmp_path, data_dir, monkeypatch, caplog):
    """mlm_pretrain and supervised_pretrain with the `mlm` family itself: what each stage draws, the weights the
    fine-tuning stage starts from, and a table of the supervised task alone."""
    from mtl.trainer import Trainer

    caplog.set_level("INFO", logger="mtl.trainer")
    cfg = three_tasks(tmp_path, data_dir)
    cfg["tasks"] = {
        "sst2": cfg["tasks"]["sst2"],
        # masked LM on other GLUE text (RTE's sentence pairs), with a dev split the regimes must never score
        "glue_text": {"family": "mlm", "datasets": [
            {"language": "en", "train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv", "max_examples": 24,
             "fields": {"text": "sentence1", "text_pair": "sentence2"}}]},
    }
    cfg["regime"] = {"pretrain_steps": 3, "finetune_steps": 2}
    cfg["compare"] = ["supervised_pretrain", "mlm_pretrain"]
    started: dict[str, dict[str, torch.Tensor]] = {}
    setup = Trainer._setup

    def spying_setup(self):
        setup(self)
        tags = self.exp.tracking.tags
        state = self.engine.unwrap().state_dict()
        started[f"{tags['mtl.regime']}/{tags['mtl.stage']}"] = {k: v.clone() for k, v in state.items()}

    monkeypatch.setattr(Trainer, "_setup", spying_setup)
    out = regimes.run(experiment_from_dict(cfg), progress=False)
    assert list(out.stages) == ["supervised_pretrain/supervised", "supervised_pretrain/finetune/sst2",
                                "mlm_pretrain/mlm", "mlm_pretrain/finetune/sst2"]
    # what each stage's sampler drew: the mlm stage masked LM only, supervised pre-training never
    assert out.stages["mlm_pretrain/mlm"].drawn == {"glue_text/en": 3}
    assert out.stages["supervised_pretrain/supervised"].drawn == {"sst2/en": 3}
    assert all(out.stages[k].drawn == {"sst2/en": 2} for k in out.stages if "/finetune/" in k)
    assert out.stages["mlm_pretrain/mlm"].metrics == {} and out.stages["mlm_pretrain/mlm"].tokens > 0
    # the mlm checkpoint: its decoder is the encoder's input embeddings, trained by the mlm stage
    root = tmp_path / "run"
    mlm_ckpt = root / "mlm_pretrain" / "mlm" / "checkpoint-3"
    trained = torch.load(mlm_ckpt / "model.pt", weights_only=True)
    embeddings = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(trained["heads.glue_text.lm.decoder.weight"], trained[embeddings])
    sup_start = started["supervised_pretrain/supervised"]  # the encoder as built from its config, untrained
    encoder_keys = [k for k in trained if k.startswith("encoder.")]
    assert encoder_keys and not torch.equal(trained[embeddings], sup_start[embeddings])
    # fine-tuning starts from every encoder tensor of the mlm stage's final checkpoint, the mlm head left behind
    ft_start = started["mlm_pretrain/finetune/sst2"]
    assert all(torch.equal(ft_start[k], trained[k]) for k in encoder_keys)
    assert not any(k.startswith("heads.glue_text.") for k in ft_start)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"initialised from {mlm_ckpt}")]
    unused = [k for k in trained if k not in ft_start]
    assert unused and all(k.startswith("heads.glue_text.") for k in unused) and f"{len(unused)} unused" in line
    # supervised pre-training never built the mlm head
    sup_ckpt = torch.load(root / "supervised_pretrain" / "supervised" / "checkpoint-3" / "model.pt", weights_only=True)
    assert not any(k.startswith("heads.glue_text.") for k in sup_ckpt)
    # the table: the supervised task's primary metric, from each regime's fine-tuning stage, and nothing of mlm
    rows = {r.regime: r for r in out.rows}
    for regime in cfg["compare"]:
        fine = out.stages[f"{regime}/finetune/sst2"]
        assert set(fine.metrics) >= {"eval/sst2/en/accuracy"} and not any("glue_text" in k for k in fine.metrics)
        assert rows[regime].scores == {"sst2/en/accuracy": fine.metrics["eval/sst2/en/accuracy"]}
        assert (rows[regime].stages, rows[regime].steps) == (2, 5)
    assert "glue_text" not in out.text


class Killed(BaseException):
    """Stands for the process dying: nothing catches it on the way out."""


def _glue_compare(tmp_path: Path, data_dir: Path, folder: str, experiment: str, plots: bool = True) -> dict:
    cfg = three_tasks(tmp_path, data_dir, cap=32)
    cfg["tasks"] = {
        "sst2": cfg["tasks"]["sst2"],
        "rte": {"family": "classification", "datasets": [
            {"language": "en", "train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv", "max_examples": 24,
             "fields": {"text": "sentence1", "text_pair": "sentence2", "label": "label"}}]},
    }
    cfg["regime"] = {"pretrain_steps": 4, "finetune_steps": 2}
    cfg["compare"] = ["multi_task", "mt_finetune"]
    cfg["train"].update(output_dir=str(tmp_path / folder), checkpoint_every=2, keep_checkpoints=5)
    cfg["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "experiment": experiment,
                       "log_model": False, "log_plots": plots}
    return cfg


def test_compare_killed_in_a_stage_resumes_to_the_same_table(tmp_path, data_dir, monkeypatch, capsys):
    import mlflow

    from launch.cli import main
    from mtl.trainer import Trainer

    # Uninterrupted.
    full_cfg = _glue_compare(tmp_path, data_dir, "full", "regimes-full")
    full = regimes.run(experiment_from_dict(full_cfg), progress=False)
    printed = capsys.readouterr().out
    assert full.text in printed and len(full.rows) == 2
    assert [r.steps for r in full.rows] == [4, 4 + 2 + 2]

    # mt_finetune/mt trains what multi_task/mt trains: trained once, reused.
    assert full.rows[1].reused == {"mt_finetune/mt": "multi_task/mt"}
    # Killed after the last checkpoint of mt_finetune/finetune/sst2 (2 steps), before its stage.json.
    cfg = _glue_compare(tmp_path, data_dir, "killed", "regimes-killed", plots=False)
    save = Trainer._save

    def dying_save(self, folder=None, keep=None):
        path = save(self, folder, keep)
        if self.exp.tracking.tags.get("mtl.stage") == "finetune/sst2" and self.step == 2:
            raise Killed
        return path

    monkeypatch.setattr(Trainer, "_save", dying_save)
    with pytest.raises(Killed):
        regimes.run(experiment_from_dict(cfg), progress=False)
    monkeypatch.setattr(Trainer, "_save", save)
    killed_dir = tmp_path / "killed"
    first_done = killed_dir / "multi_task" / "mt" / regimes.DONE_FILE
    assert first_done.exists() and not (killed_dir / "mt_finetune" / "mt").exists()
    assert not (killed_dir / "mt_finetune" / "finetune" / "sst2" / regimes.DONE_FILE).exists()
    first_mtime = first_done.stat().st_mtime_ns

    started: list[tuple[str, int]] = []
    setup = Trainer._setup

    def spying_setup(self):
        setup(self)
        started.append((f"{self.exp.tracking.tags['mtl.regime']}/{self.exp.tracking.tags['mtl.stage']}", self.step))

    monkeypatch.setattr(Trainer, "_setup", spying_setup)
    resumed = regimes.run(experiment_from_dict(cfg), resume=True, progress=False)
    # No finished stage ran again; the one it died in went on from its checkpoint at step 2.
    assert started == [("mt_finetune/finetune/sst2", 2), ("mt_finetune/finetune/rte", 0)]
    assert first_done.stat().st_mtime_ns == first_mtime
    assert resumed.text == full.text
    assert [(r.steps, r.tokens, r.scores) for r in resumed.rows] == [(r.steps, r.tokens, r.scores) for r in full.rows]
    capsys.readouterr()

    # MLflow: a compare run above one run per regime, each above one run per stage, with the table.
    client = mlflow.MlflowClient(tracking_uri=full_cfg["tracking"]["uri"])
    for name, expected in (("regimes-full", full), ("regimes-killed", resumed)):
        exp_id = client.get_experiment_by_name(name).experiment_id
        runs = client.search_runs([exp_id])
        by_id = {r.info.run_id: r for r in runs}
        (top,) = [r for r in runs if r.data.tags.get("mtl.role") == "compare"]
        assert top.info.status == "FINISHED"
        parents = {r.data.tags["mtl.regime"]: r for r in runs if r.data.tags.get("mtl.role") == "regime"}
        assert set(parents) == {"multi_task", "mt_finetune"}
        assert all(p.data.tags["mlflow.parentRunId"] == top.info.run_id and p.info.status == "FINISHED"
                   for p in parents.values())
        children = {}
        for r in runs:
            if r.data.tags.get("mtl.role") == "stage":
                parent = by_id[r.data.tags["mlflow.parentRunId"]].data.tags["mtl.regime"]
                children.setdefault(parent, []).append((r.info.run_name, r.info.status))
        assert sorted(children["multi_task"]) == [("mt", "FINISHED")]
        # the killed stage's run was resumed, not started twice
        assert sorted(children["mt_finetune"]) == [("finetune/rte", "FINISHED"), ("finetune/sst2", "FINISHED")]
        ft = next(r for r in runs if r.info.run_name == "finetune/rte")  # a stage's own params
        assert ft.data.params["train.steps"] == "2" and not any(k.startswith("tasks.sst2") for k in ft.data.params)
        top_files = {a.path for a in client.list_artifacts(top.info.run_id, "compare")}
        assert top_files == {"compare/table.csv", "compare/table.md"}
        if expected is full:
            assert "plots/table.png" in {a.path for a in client.list_artifacts(top.info.run_id, "plots")}
        local = client.download_artifacts(top.info.run_id, "compare/table.csv", str(tmp_path / name))
        rows = {r["regime"]: r for r in csv.DictReader(open(local))}
        for row in expected.rows:
            assert int(rows[row.regime]["tokens"]) == row.tokens
            for key, value in row.scores.items():
                assert float(rows[row.regime][key]) == value
        mt = parents["mt_finetune"].data.metrics
        assert mt["regime/steps"] == 8 and mt["score/rte/en/accuracy"] == expected.rows[1].scores["rte/en/accuracy"]

        # `mtl compare` prints the same table from the tracking store alone, by run id and by experiment file
        assert main(["compare", top.info.run_id, "--tracking-uri", full_cfg["tracking"]["uri"]]) == 0
        by_run = capsys.readouterr().out
        assert regimes.table_text(expected.rows) in by_run
    cfg_file = tmp_path / "full.yaml"
    cfg_file.write_text(yaml.safe_dump(full_cfg))
    assert main(["compare", str(cfg_file)]) == 0
    assert regimes.table_text(full.rows) in capsys.readouterr().out


def test_transfer_matrix(tmp_path, data_dir, capsys):
    def ud(name: str, lang: str, train: bool = True) -> dict:
        ds = {"language": lang, "name": name, "dev": f"ud/{name}/dev.conllu", "max_examples": 16}
        if train:
            ds["train"] = f"ud/{name}/train.conllu"
        return ds

    cfg = three_tasks(tmp_path, data_dir)
    cfg["tasks"] = {"ud": {"family": "ud", "options": {"heads": ["upos"]},
                           "datasets": [ud("en_ewt", "en"), ud("fr_sequoia", "fr"), ud("de_gsd", "de", train=False)]}}
    cfg["regime"] = {"name": "transfer", "finetune_steps": 3}
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg["tracking"] = {"uri": uri, "log_model": False, "log_plots": False}
    out = regimes.run(experiment_from_dict(cfg), progress=False)
    m = out.matrix
    assert m is not None and not out.rows
    assert (m.task, m.metric, m.sources) == ("ud", "UPOS", ["en", "fr"])
    assert m.targets == [["en_ewt", "en"], ["fr_sequoia", "fr"], ["de_gsd", "de"]]
    assert m.in_language == [[True, False, False], [False, True, False]]
    # each cell is its stage's own final metric, in the role the trainer gave it
    en, fr = out.stages["transfer/en"].metrics, out.stages["transfer/fr"].metrics
    assert m.values == [[en["eval/ud/en_ewt/UPOS"], en["zeroshot/ud/fr_sequoia/UPOS"], en["zeroshot/ud/de_gsd/UPOS"]],
                        [fr["zeroshot/ud/en_ewt/UPOS"], fr["eval/ud/fr_sequoia/UPOS"], fr["zeroshot/ud/de_gsd/UPOS"]]]
    assert (m.steps, out.stages["transfer/fr"].drawn) == (6, {"ud/fr_sequoia": 3})
    root = tmp_path / "run"
    rows = list(csv.reader(open(root / "transfer.csv")))
    assert rows[0] == ["source", "en_ewt", "fr_sequoia", "de_gsd"] and rows[1][1:] == ["en", "fr", "de"]
    assert [float(v) for v in rows[3][1:]] == m.values[1]
    assert "fr_sequoia (fr)" in (root / "transfer.md").read_text()
    # the matrix from the tracking store alone
    import mlflow

    from launch.cli import main

    (run,) = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("regimes").experiment_id],
        filter_string="tags.`mtl.role` = 'regime'")
    assert run.data.metrics["transfer/fr/ud/de_gsd/UPOS"] == m.values[1][2]
    capsys.readouterr()
    assert main(["compare", run.info.run_id, "--tracking-uri", uri]) == 0
    assert regimes.matrix_text(m) in capsys.readouterr().out


def test_transfer_heatmap(tmp_path):
    m = regimes.Matrix("ud", "LAS", ["en", "en+fr"], [["en_ewt", "en"], ["de_gsd", "de"]], [[80.0, None], [79.5, 40.1]],
                       [[True, False], [True, False]], 6, 1000)
    from mtl import plots

    assert plots.plot_transfer(m, tmp_path / "t.png").stat().st_size > 1000
    row = regimes.Row("single", 2, 10, 500, {"a/en/accuracy": 50.0, "b/de/f1": 20.0}, {"b/de/f1"})
    assert plots.plot_regimes([row], tmp_path / "r.png").stat().st_size > 1000


def test_benchmark_experiments_load_and_plan(tmp_path, data_dir):
    """benchmarks/regimes.py: each part's experiment is valid and has the stages its report reads."""
    from benchmarks import _common as common
    from benchmarks import regimes as bench

    p = common.parser(bench.__doc__, bench.DEFAULTS, "data")
    bench.add_args(p)
    args = p.parse_args(["--quick", "--data", str(data_dir)])
    plan = common.budget(args, bench.DEFAULTS)
    glue = experiment_from_dict(bench.glue_experiment(args, plan, tmp_path, with_mlm=False))
    assert glue.compare == ["single", "multi_task", "mt_finetune", "leave_one_out"]
    assert [s.key for s in regimes.plan(glue) if s.regime == "leave_one_out"] == [
        "leave_one_out/loo/rte/pretrain", "leave_one_out/loo/rte/finetune",
        "leave_one_out/loo/mrpc/pretrain", "leave_one_out/loo/mrpc/finetune"]
    with_mlm = experiment_from_dict(bench.glue_experiment(args, plan, tmp_path, with_mlm=True))
    assert with_mlm.compare[4:] == ["supervised_pretrain", "mlm_pretrain"]
    by_key = {s.key: s for s in regimes.plan(with_mlm)}
    assert by_key["mlm_pretrain/mlm"].train == {"sst2_text": ["en"]}
    assert "sst2_text" in by_key["mt_finetune/mt"].train
    assert "sst2_text" not in by_key["supervised_pretrain/supervised"].train
    assert not any(t == "sst2_text" for s in by_key.values() for t, _ in s.reports)
    sources = [s for _, lang in bench.LOW_RESOURCE for s in ([lang], ["en", lang])]
    ud = experiment_from_dict(bench.ud_experiment(args, plan, tmp_path, "ud", bench._ud_datasets(
        plan, (bench.HIGH_RESOURCE, *bench.LOW_RESOURCE), bench.LOW_RESOURCE), sources))
    stages = regimes.plan(ud)
    assert [s.key for s in stages] == ["transfer/mr", "transfer/en+mr", "transfer/cy", "transfer/en+cy",
                                       "transfer/fo", "transfer/en+fo"]
    assert stages[1].train == {"ud": ["en_ewt-train", "mr_ufal-train"]}
    assert stages[1].evaluate == {"ud": {"mr_ufal": "eval", "cy_ccg": "zero-shot", "fo_farpahc": "zero-shot"}}


def test_table_marks_zero_shot_and_means_only_complete_rows():
    rows = [regimes.Row("single", 2, 10, 1500, {"a/en/accuracy": 50.0, "b/de/f1": 21.0}),
            regimes.Row("leave_one_language_out", 1, 5, 700, {"b/de/f1": 12.5}, {"b/de/f1"})]
    lines = regimes.table_text(rows).splitlines()
    assert lines[0].split() == ["regime", "stages", "steps", "tokens", "a/en/accuracy", "b/de/f1", "mean"]
    assert lines[2].split() == ["single", "2", "10", "1,500", "50.00", "21.00", "35.50"]
    assert lines[3].split() == ["leave_one_language_out", "1", "5", "700", "—", "12.50*", "—"]
    parsed = list(csv.DictReader(regimes.table_csv(rows).splitlines()))
    assert parsed[0]["mean"] == "35.5" and parsed[1]["b/de/f1"] == "12.5" and parsed[1]["zero_shot"] == "b/de/f1"
    assert "| leave_one_language_out | 1 | 5 | 700 | — | 12.50* | — |" in regimes.table_markdown(rows)


# ------------------------------------------------------------------ sequential (one module: mtl/regimes/sequential.py)


def test_the_registry_finds_every_regime_module():
    """A regime is one module of mtl/regimes/: the registry (and so the door, the planner and `mtl compare`)
    finds it with no list to edit; a declaration reading a key the schema does not type is refused."""
    from mtl.regimes.base import Regime, register

    assert regimes.regime_names() == ["single", "multi_task", "mt_finetune", "leave_one_out", "supervised_pretrain",
                                      "mlm_pretrain", "leave_one_language_out", "transfer", "sequential"]
    assert regimes.get_regime("transfer").shape == "matrix" and regimes.get_regime("multi_task").plain
    assert regimes.get_regime("sequential").reads == {"finetune_steps", "finetune_epochs"}
    with pytest.raises(ValueError, match="not keys of RegimeConfig"):
        register(Regime("bogus", lambda p: [], order=99, keys=("target",)))
    with pytest.raises(ConfigError, match=r"unknown regime 'sequentail' \(did you mean sequential\?\)"):
        regimes.get_regime("sequentail")


def test_sequential_stage_graph(tmp_path, data_dir):
    data = three_tasks(tmp_path, data_dir, regime={"name": "sequential", "finetune_steps": 3})
    stages = regimes.plan(experiment_from_dict(data))
    # the tasks in the file's order, each from the one before; the masked LM is a link that scores nothing
    assert [(s.key, s.init_from, s.train, s.evaluate) for s in stages] == [
        ("sequential/sst2", None, *FT["sst2"]),
        ("sequential/nli", "sequential/sst2", *FT["nli"]),
        ("sequential/lm", "sequential/nli", {"lm": ["en"]}, {}),
    ]
    assert {s.key: s.reports for s in stages} == {
        "sequential/sst2": [("sst2", "en")], "sequential/nli": [("nli", "en"), ("nli", "de"), ("nli", "zh")],
        "sequential/lm": []}
    assert all((s.budget, s.steps) == ("finetune", 3) for s in stages)
    # under compare the keys are qualified once, and the chain with them
    data["regime"] = {"finetune_steps": 3}
    data["compare"] = ["single", "sequential"]
    chain = [(s.key, s.init_from) for s in regimes.plan(experiment_from_dict(data)) if s.regime == "sequential"]
    assert chain == [("sequential/sst2", None), ("sequential/nli", "sequential/sst2"),
                     ("sequential/lm", "sequential/nli")]


@pytest.mark.parametrize("regime, fragments", [
    ({"name": "sequential", "pretrain_steps": 3}, ["regime.pretrain_steps", "not by sequential"]),
    ({"name": "seqential"}, ["regime.name", "(did you mean sequential?)"]),
])
def test_sequential_keys_are_checked_at_the_door(tmp_path, data_dir, regime, fragments):
    data = three_tasks(tmp_path, data_dir)
    data["regime"] = regime
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    data["tasks"] = {"sst2": data["tasks"]["sst2"]}
    data["regime"] = "sequential"
    with pytest.raises(ConfigError, match=r"regime\.name: sequential trains the tasks one after another"):
        _load(tmp_path, data)


def test_sequential_each_stage_starts_from_the_previous_checkpoint(tmp_path, data_dir, monkeypatch, caplog):
    from mtl.trainer import Trainer

    caplog.set_level("INFO", logger="mtl.trainer")
    cfg = _glue_compare(tmp_path, data_dir, "run", "unused")
    cfg.pop("compare")
    cfg["regime"] = {"name": "sequential", "finetune_steps": 2}
    cfg["tracking"] = {"enabled": False}
    started: dict[str, dict[str, torch.Tensor]] = {}
    setup = Trainer._setup

    def spying_setup(self):
        setup(self)
        state = self.engine.unwrap().state_dict()
        started[self.exp.tracking.tags["mtl.stage"]] = {k: v.clone() for k, v in state.items()}

    monkeypatch.setattr(Trainer, "_setup", spying_setup)
    out = regimes.run(experiment_from_dict(cfg), progress=False)
    first, second = out.stages["sequential/sst2"], out.stages["sequential/rte"]
    assert list(out.stages) == ["sequential/sst2", "sequential/rte"]
    assert (first.drawn, second.drawn) == ({"sst2/en": 2}, {"rte/en": 2})
    # the second stage starts from the first one's final checkpoint: every encoder tensor, not its sst2 head
    source = tmp_path / "run" / "sequential" / "sst2" / "checkpoint-2"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("initialised from")]
    assert str(source) in line
    trained = torch.load(source / "model.pt", weights_only=True)
    encoder = [k for k in trained if k.startswith("encoder.")]
    assert encoder and all(torch.equal(started["sequential/rte"][k], trained[k]) for k in encoder)
    assert not all(torch.equal(started["sequential/sst2"][k], trained[k]) for k in encoder)  # it did train
    assert not any(k.startswith("heads.sst2.") for k in started["sequential/rte"])
    # each task scored by its own stage, right after it trained; the compute is the chain's
    (row,) = out.rows
    assert row.scores == {"sst2/en/accuracy": first.metrics["eval/sst2/en/accuracy"],
                          "rte/en/accuracy": second.metrics["eval/rte/en/accuracy"]}
    assert (row.stages, row.steps, row.tokens) == (2, 4, first.tokens + second.tokens)
