"""`mtl evaluate RUN --dataset TASK:LANG=PATH`: a trained run scored on data its experiment does not
name, read and scored as the task's own datasets are, with in-language and zero-shot marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_encoder

from launch.cli import main
from mtl.core.errors import ConfigError
from mtl.extra_eval import parse_spec


def _first_sentences(src: Path, n: int, dst: Path) -> Path:
    """The first n sentences of a CoNLL-U file (as the shared data cuts its sets: the first N)."""
    blocks = src.read_text(encoding="utf-8").split("\n\n")
    dst.write_text("\n\n".join(blocks[:n]) + "\n\n", encoding="utf-8")
    return dst


def _first_articles(src: Path, n: int, dst: Path) -> Path:
    data = json.loads(src.read_text(encoding="utf-8"))
    dst.write_text(json.dumps({**data, "data": data["data"][:n]}, ensure_ascii=False), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def cut(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Real dev sets cut to their first sentences or articles, so that each evaluation takes a moment."""
    tmp = tmp_path_factory.mktemp("cut")
    return {
        "fo": _first_sentences(data_dir / "ud/fo_farpahc/dev.conllu", 60, tmp / "fo.conllu"),
        "cy": _first_sentences(data_dir / "ud/cy_ccg/dev.conllu", 60, tmp / "cy.conllu"),
        "drcd": _first_articles(data_dir / "drcd/dev.json", 3, tmp / "drcd.json"),
        "mr": data_dir / "ud/mr_ufal/dev.conllu",  # 46 sentences, whole
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, cut):
    """A tiny multi-task run (UD on Marathi, SST-2, QA on English), evaluated by the trainer on Marathi
    (in-language), Faroese UD and Chinese DRCD (zero-shot)."""
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import train

    tmp = tmp_path_factory.mktemp("extra")
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"layer_dropout": 0.0, "dropout": 0.0})
    cfg = {
        "name": "extra-eval",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "ud": {
                "family": "ud",
                "options": {"skip_invalid": True, "arc_mlp": 32, "label_mlp": 16},
                "datasets": [
                    {"language": "mr", "train": "ud/mr_ufal/train.conllu", "dev": str(cut["mr"]),
                     "max_examples": 48},
                    {"language": "fo", "dev": str(cut["fo"])},
                ],
            },
            "sst2": {
                "family": "classification",
                "datasets": [{"language": "en", "train": "glue/SST-2/train.tsv",
                              "fields": {"text": "sentence", "label": "label"}, "max_examples": 32}],
            },
            "qa": {
                "family": "qa",
                "datasets": [
                    {"language": "en", "train": "xquad/xquad.en.sample.json", "max_examples": 16},
                    {"language": "zh-TW", "dev": str(cut["drcd"])},
                ],
            },
        },
        "sampling": {"batch_size": 8},
        "train": {"steps": 6, "head_lr": 1e-3, "encoder_lr": 1e-3, "output_dir": str(tmp / "run"),
                  "eval_batch_size": 32, "log_every": 3},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", "log_model": False, "log_plots": False,
                     "log_predictions": False},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp / "hf_home"))
        outcome = train(experiment_from_dict(cfg))
    return outcome, cfg["tracking"]["uri"]


def _run_metrics(uri: str, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    return dict(run.data.metrics), dict(run.data.tags)


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(task, lang) → the cells of each row of the extra-datasets table."""
    part = out.split("Extra datasets", 1)[1].splitlines()[2:]
    return {(cells[0], cells[2]): cells for cells in (line.split() for line in part) if len(cells) > 4}


def test_extra_datasets_score_as_the_trainer_does(run, cut, tmp_path, capsys):
    outcome, uri = run
    mr, fo, drcd = cut["mr"], cut["fo"], cut["drcd"]
    out_json = tmp_path / "metrics.json"
    rc = main(["evaluate", str(outcome.output_dir), "--dataset", f"ud:mr={mr}", "--dataset", f"ud:fo={fo}",
               "--dataset", f"qa:zh-TW={drcd}", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out_json.read_text())
    # The same files, read through the experiment by the trainer and through --dataset here: the same numbers.
    pairs = {("ud", "mr", "eval"): "ud/mr", ("ud", "fo", "zeroshot"): "ud/fo", ("qa", "zh-TW", "zeroshot"): "qa/zh-TW"}
    for (task, lang, prefix), name in pairs.items():
        trained = {k.rsplit("/", 1)[1]: v for k, v in outcome.metrics.items() if k.startswith(f"{prefix}/{name}/")}
        assert trained, name
        extra = {k.rsplit("/", 1)[1]: v for k, v in got.items() if k.startswith(f"extra/{task}/{lang}/")}
        assert extra == trained, name
    assert got["extra/ud/mr/LAS"] == outcome.metrics["eval/ud/mr/LAS"]
    assert got["extra/qa/zh-TW/f1"] == outcome.metrics["zeroshot/qa/zh-TW/f1"]
    # The experiment's own evaluation still runs and is written beside the extras.
    assert got["eval/ud/mr/LAS"] == outcome.metrics["eval/ud/mr/LAS"]
    rows = _rows(printed)
    assert rows[("ud", "mr")][3] == "eval" and rows[("ud", "mr")][1] == str(mr)
    assert rows[("ud", "fo")][3] == "zero-shot"
    assert rows[("qa", "zh-TW")][3] == "zero-shot" and rows[("qa", "zh-TW")][4] == "42"
    # No --log: nothing is added to the run.
    logged, _ = _run_metrics(uri, _run_id(outcome))
    assert not [k for k in logged if k.startswith("extra/")]


def _run_id(outcome) -> str:
    return json.loads((outcome.checkpoint / "trainer_state.json").read_text())["mlflow_run_id"]


def test_only_extra_marks_languages_and_logs_on_request(run, cut, data_dir, tmp_path, capsys):
    outcome, uri = run
    cy, mr = cut["cy"], cut["mr"]
    out_json = tmp_path / "m.json"
    rc = main(["evaluate", str(outcome.checkpoint), "--only-extra", "--log", "--json", str(out_json),
               "--dataset", f"ud:cy={cy}", "--dataset", f"ud:mr={mr}@conllu",
               "--dataset", f"qa:en={data_dir / 'xquad/xquad.en.sample.json'}"])
    printed = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out_json.read_text())
    assert not [k for k in got if not k.startswith("extra/")]  # --only-extra: the experiment's data is not scored
    rows = _rows(printed)
    assert rows[("ud", "cy")][3] == "zero-shot"  # Welsh: no dataset of the task had it
    assert rows[("qa", "en")][3] == "eval"  # English: the task trained on it, from another file
    assert rows[("ud", "mr")][3] == "eval"
    assert got["extra/ud/mr/LAS"] == outcome.metrics["eval/ud/mr/LAS"]  # the explicit format reads the same
    assert {"extra/ud/cy/LAS", "extra/qa/en/f1", "extra/qa/en/exact_match"} <= set(got)
    logged, tags = _run_metrics(uri, _run_id(outcome))
    extra = {k: v for k, v in logged.items() if k.startswith("extra/")}
    assert extra == pytest.approx(got)
    assert tags["mtl.extra.ud.cy"] == f"zero-shot: {cy}"
    assert tags["mtl.extra.qa.en"].startswith("in-language: ")


def _error(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ud-mr=x.conllu", "no TASK:LANG= before the path; expected TASK:LANG=PATH"),
        ("ud:mr=", "no path after '='"),
        ("ud:m r=x", "'m r' is not a language code"),
        ("qa:de=hub:google/xquad", "a hub dataset needs its name and split"),
    ],
)
def test_malformed_specs_are_refused_before_loading(spec, expected, tmp_path, capsys):
    err = _error(["evaluate", str(tmp_path / "no-such-run"), "--dataset", spec], capsys)
    assert err.startswith(f"mtl: error: --dataset {spec!r}: ") and expected in err


def test_errors_name_what_is_wrong(run, data_dir, tmp_path, capsys):
    outcome, _ = run
    ckpt = str(outcome.checkpoint)
    mr = data_dir / "ud/mr_ufal/dev.conllu"

    err = _error(["evaluate", ckpt, "--only-extra", "--dataset", f"pos:de={mr}"], capsys)
    assert "unknown task 'pos' (this run's tasks: ud, sst2, qa)" in err

    missing = tmp_path / "nowhere" / "dev.conllu"
    err = _error(["evaluate", ckpt, "--only-extra", "--dataset", f"ud:de={missing}"], capsys)
    assert err.endswith(f"file not found: {missing}")

    err = _error(["evaluate", ckpt, "--only-extra", "--dataset", f"ud:mr={mr}@nosuch"], capsys)
    assert "unknown ud format 'nosuch'" in err and "conllu" in err

    bad = tmp_path / "sst.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\nnot sure\t2\n", encoding="utf-8")
    err = _error(["evaluate", ckpt, "--only-extra", "--dataset", f"sst2:en={bad}"], capsys)
    assert f"{bad}:3: label '2' is not among the labels of the training data (0, 1)" in err

    err = _error(["evaluate", ckpt, "--dataset", f"ud:mr={mr}", "--dataset", f"ud:mr={mr}@conllu"], capsys)
    assert "ud:mr is given twice" in err

    err = _error(["evaluate", ckpt, "--only-extra"], capsys)
    assert "--only-extra and --log need a --dataset TASK:LANG=PATH" in err

    # --log finds the run before anything is scored: a store that is not there, a run never tracked.
    gone = tmp_path / "elsewhere" / "mlflow.db"
    err = _error(["evaluate", ckpt, "--only-extra", "--log", "--tracking-uri", f"sqlite:///{gone}",
                  "--dataset", f"ud:mr={mr}"], capsys)
    assert f"tracking store sqlite:///{gone} does not exist; give the run's store with --tracking-uri" in err
    untracked = tmp_path / "untracked"
    untracked.mkdir()
    for item in outcome.checkpoint.iterdir():
        if item.name != "trainer_state.json":
            (untracked / item.name).symlink_to(item)
    state = json.loads((outcome.checkpoint / "trainer_state.json").read_text())
    (untracked / "trainer_state.json").write_text(json.dumps({**state, "mlflow_run_id": None}))
    rc = main(["evaluate", str(untracked), "--only-extra", "--log", "--dataset", f"ud:mr={mr}"])
    captured = capsys.readouterr()
    assert rc == 2 and "Extra datasets" not in captured.out
    assert captured.err.strip() == (f"mtl: error: {untracked / 'trainer_state.json'}: no MLflow run id (the run was "
                                    f"trained without tracking); --log has no run to log into")

    # A hub split reads as the family reads the hub; offline, that is the hub's one clear message.
    err = _error(["evaluate", ckpt, "--only-extra", "--dataset", "qa:de=hub:google/xquad:xquad.de@validation"], capsys)
    assert "dataset google/xquad/xquad.de not reachable: offline?" in err


def test_spec_forms():
    assert parse_spec("qa:zh-TW=data/drcd.json") == parse_spec("qa:zh-TW=data/drcd.json")
    spec = parse_spec("ner:de=data/de.txt@wikiann")
    assert (spec.task, spec.language, spec.path, spec.format, spec.hub) == ("ner", "de", "data/de.txt", "wikiann", None)
    spec = parse_spec("qa:de=hub:google/xquad:xquad.de@validation")
    assert (spec.hub, spec.hub_config, spec.hub_split, spec.path) == ("google/xquad", "xquad.de", "validation", None)
    assert spec.source == "hub:google/xquad:xquad.de@validation"
    spec = parse_spec("qa:en=hub:rajpurkar/squad@validation")
    assert (spec.hub, spec.hub_config, spec.hub_split) == ("rajpurkar/squad", None, "validation")
    with pytest.raises(ConfigError, match="no path or no format around '@'"):
        parse_spec("ud:de=de.conllu@")


def test_an_at_sign_in_an_existing_path_is_part_of_it(tmp_path):
    odd = tmp_path / "dev@v2.conllu"
    odd.write_text("", encoding="utf-8")
    spec = parse_spec(f"ud:de={odd}")
    assert (spec.path, spec.format) == (str(odd), None)
    assert Path(parse_spec(f"ud:de={tmp_path / 'x@conllu'}").path) == tmp_path / "x"
