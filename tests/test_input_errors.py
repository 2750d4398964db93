"""Bad input, one case at a time: invalid UTF-8, byte-order marks, repeated keys, deep nesting,
values that make no sense, refused keys, the sampling exponent, and an unreachable hub."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import DATA, REPO

from launch.cli import main
from mtl.core.config import DatasetConfig, TaskConfig
from mtl.core.errors import ConfigError, DataError
from mtl.experiment import load_experiment
from sampling import SamplingConfig, group_weights, mean_weights
from tasks._conllu_io import read_conllu
from tasks.formats import resolve_dataset
from tasks.ner import NerFamily
from tasks.qa import QAFamily
from tasks.readers import read_hub, read_table

BOM = b"\xef\xbb\xbf"

EXPERIMENT = """\
name: demo
encoder:
  name: bert-base-multilingual-cased
  max_length: 64
tasks:
  sst2:
    family: classification
    datasets:
      - language: en
        train: glue/SST-2/train.tsv
        dev: glue/SST-2/dev.tsv
      - language: de
        name: xnli_de
        train: xnli/de/dev.tsv
train:
  steps: 10
"""


def experiment(tmp_path: Path, text: str = EXPERIMENT, data: bytes | None = None) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_bytes(data if data is not None else textwrap.dedent(text).encode("utf-8"))
    return p


def config_error(path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path, check_files=False)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg
    return msg


def ner(fmt: str, path: Path, language: str = "en") -> list:
    fam = NerFamily(TaskConfig(family="ner", datasets=[], options=NerFamily.Options(), name="ner"), None, 128)
    ds = DatasetConfig(language=language, name=language, train=str(path), format=fmt)
    return fam.read(resolve_dataset(fam, ds), "train")


def qa(path: Path) -> list:
    fam = QAFamily(TaskConfig(family="qa", datasets=[], options=QAFamily.Options(), name="qa"), None, 128)
    return fam.read(resolve_dataset(fam, DatasetConfig(language="en", name="en", train=str(path))), "train")


def head(path: Path, n: int) -> bytes:
    return b"\n".join(path.read_bytes().split(b"\n")[:n]) + b"\n"


def squad_slice(questions: int = 3) -> dict:
    full = json.loads((DATA / "squad/dev.json").read_text(encoding="utf-8"))
    para = full["data"][0]["paragraphs"][0]
    return {"version": "1.1", "data": [{"title": full["data"][0]["title"],
                                        "paragraphs": [dict(para, qas=para["qas"][:questions])]}]}


# --------------------------------------------------------------------------- invalid UTF-8: file and line


@pytest.mark.parametrize("reader, source, suffix", [
    ("conllu", "ud/en_ewt/dev.conllu", ".conllu"),
    ("conll2003", "ner/conll2003/dev.txt", ".txt"),
    ("tsv", "glue/SST-2/dev.tsv", ".tsv"),
])
def test_invalid_utf8_names_the_line(tmp_path, reader, source, suffix):
    lines = head(DATA / source, 40).split(b"\n")
    lines[29] = lines[29][:3] + b"\xff\xfe" + lines[29][3:]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\n".join(lines))
    read = {"conllu": read_conllu, "conll2003": lambda p: ner("conll2003", p),
            "tsv": lambda p: read_table(p, {"text": "sentence", "label": "label"})}[reader]
    with pytest.raises(DataError, match=rf"{path}:30: not valid UTF-8"):
        read(path)


def test_invalid_utf8_in_squad_json_names_the_line(tmp_path):
    text = json.dumps(squad_slice(), indent=1).encode("utf-8")
    lines = text.split(b"\n")
    lines[6] = lines[6] + b"\xc3"
    path = tmp_path / "bad.json"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{path}:7: not valid UTF-8"):
        qa(path)


def test_invalid_utf8_in_experiment_names_the_line(tmp_path):
    data = textwrap.dedent(EXPERIMENT).encode().replace(b"name: demo", b"name: d\xe9mo")
    config_error(experiment(tmp_path, data=data), "exp.yaml:1: not valid UTF-8")


# --------------------------------------------------------------------------- byte-order marks are accepted


def test_bom_accepted_by_every_reader(tmp_path):
    def write(source: Path | bytes, name: str, bom: bool, n: int = 60) -> Path:
        path = tmp_path / (("bom-" if bom else "") + name)
        path.write_bytes((BOM if bom else b"") + (source if isinstance(source, bytes) else head(source, n)))
        return path

    conll = DATA / "ner/conll2003/dev.txt"
    with_bom, plain = ner("conll2003", write(conll, "c.txt", True)), ner("conll2003", write(conll, "c.txt", False))
    assert [ex.tokens for ex in with_bom] == [ex.tokens for ex in plain]  # no '\ufeff-DOCSTART-' sentence
    assert len(qa(write(json.dumps(squad_slice()).encode(), "s.json", True))) == 3
    ud = DATA / "ud/en_ewt/dev.conllu"
    assert len(read_conllu(write(ud, "u.conllu", True))) == len(read_conllu(write(ud, "u.conllu", False)))
    rows = read_table(write(DATA / "glue/SST-2/dev.tsv", "t.tsv", True, 5), {"text": "sentence", "label": "label"})
    assert len(rows) == 4
    assert ner("wikiann", write(DATA / "ner/wikiann/en/dev.txt", "w.txt", True))[0].tokens[0] == "Sioux"
    exp = load_experiment(experiment(tmp_path, data=BOM + textwrap.dedent(EXPERIMENT).encode()), check_files=False)
    assert exp.name == "demo"


# --------------------------------------------------------------------------- repeated keys never vanish


def test_squad_paragraph_with_qas_twice_is_refused_naming_both_lines(tmp_path):
    text = json.dumps(squad_slice(), indent=1)
    lines = text.split("\n")
    qas_at = next(i for i, line in enumerate(lines) if '"qas"' in line)
    lines.insert(qas_at, ' "qas": [],')  # a second "qas" key before the real one
    path = tmp_path / "dup.json"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:{qas_at + 2}: key 'qas' given twice in one object "
                                        rf"\(lines {qas_at + 1} and {qas_at + 2}\)"):
        qa(path)


def test_jsonl_record_with_a_key_twice_is_refused(tmp_path):
    lines = head(DATA / "ocnli/dev.sample.jsonl", 3).decode().split("\n")
    lines[1] = lines[1].replace('{"level"', '{"label":"contradiction","level"')
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: key 'label' given twice"):
        read_table(path, {"text": "sentence1", "label": "label"})


def test_task_block_written_twice_is_refused(tmp_path):
    again = "  sst2:\n    family: classification\n    datasets: []\n"
    text = EXPERIMENT.replace("train:\n  steps", again + "train:\n  steps")
    config_error(experiment(tmp_path, text), "exp.yaml:15:", "tasks.sst2", "given twice", "lines 6 and 15")


def test_repeated_key_is_refused(tmp_path):
    config_error(experiment(tmp_path, EXPERIMENT + "  steps: 20\n"), "exp.yaml:17:", "train.steps", "lines 16 and 17")


def test_deleted_dash_that_merges_two_datasets_is_refused(tmp_path):
    text = EXPERIMENT.replace("      - language: de\n", "        language: de\n")
    config_error(experiment(tmp_path, text), "tasks.sst2.datasets.0.language", "lines 9 and 12")


# --------------------------------------------------------------------------- deep nesting


def test_deeply_nested_json_is_a_data_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=rf"{path}: JSON nested too deeply"):
        qa(path)


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    config_error(experiment(tmp_path, "name: x\ntasks: " + "[" * 20_000 + "]" * 20_000 + "\n"), "exp.yaml")


# --------------------------------------------------------------------------- values that make no sense


@pytest.mark.parametrize("key, value, line, message", [
    ("encoder.max_length", "-5", 4, "must be at least"),
    ("train.epochs", "0", 17, "must be a number of passes > 0"),
    ("train.epochs", "-1", 17, "must be a number of passes > 0"),
    ("train.encoder_lr", "-1e-5", 17, "≥ 0"),
    ("train.mix_lr", "-0.01", 17, "≥ 0"),
    ("encoder.dropout", "1.5", 4, "[0, 1)"),
    ("train.eval_every", "0", 17, "at least 1"),
    ("tasks.sst2.datasets.0.max_examples", "0", 9, "at least 1"),
])
def test_nonsense_values_are_refused_with_their_line(tmp_path, key, value, line, message):
    name = key.rsplit(".", 1)[1]
    dev = "        dev: glue/SST-2/dev.tsv\n"
    text = EXPERIMENT
    if key == "encoder.max_length":
        text = text.replace("max_length: 64", f"max_length: {value}")
    elif key == "encoder.dropout":
        text = text.replace("max_length: 64", f"max_length: 64\n  dropout: {value}")
        line = 5
    elif key.startswith("tasks"):
        text = text.replace(dev, f"{dev}        {name}: {value}\n")
        line = 12
    else:
        text = text.replace("  steps: 10\n", f"  steps: 10\n  {name}: {value}\n")
    config_error(experiment(tmp_path, text), f"exp.yaml:{line}:", key, message)


def test_field_that_is_not_a_column_is_refused_at_its_yaml_line(tmp_path):
    dev = "        dev: glue/SST-2/dev.tsv\n"
    text = EXPERIMENT.replace(dev, dev + "        fields: {text: 1.5}\n")
    config_error(experiment(tmp_path, text), "exp.yaml:12:", "tasks.sst2.datasets.0.fields.text", "1.5",
                 "neither a column name nor a column index")


def test_ud_without_heads_is_refused_at_its_yaml_line(tmp_path):
    text = EXPERIMENT.replace("    family: classification\n", "    family: ud\n    options:\n      heads: []\n")
    text = text.replace("glue/SST-2/train.tsv", "ud/en_ewt/train.conllu").replace("glue/SST-2/dev.tsv", "x.conllu")
    config_error(experiment(tmp_path, text), "exp.yaml:8:", "tasks.sst2.options", "heads must name at least one")


# --------------------------------------------------------------------------- keys that did nothing are refused


@pytest.mark.parametrize("block, line, message", [
    ("train:\n  num_workers: 4\n", "train.num_workers", "no loader workers"),
    ("launch:\n  nnodes: 2\n", "launch.nnodes", "torchrun on every node"),
])
def test_refused_keys(tmp_path, block, line, message):
    text = EXPERIMENT.replace("train:\n  steps: 10\n", "") + block
    config_error(experiment(tmp_path, text), f"exp.yaml:{text.count(chr(10))}:", line, message)


# --------------------------------------------------------------------------- the sampling exponent


def test_smoothing_is_the_exponent_and_temperature_an_alias(tmp_path):
    exp = load_experiment(experiment(tmp_path, EXPERIMENT + "sampling:\n  temperature: 0.5\n"), check_files=False)
    assert exp.sampling.smoothing == 0.5
    assert "temperature" not in exp.to_dict()["sampling"]  # saved under its own name
    sizes = {("t", "a"): 100, ("t", "b"): 1}
    assert group_weights(sizes, exp.sampling)[("t", "a")] == pytest.approx(10 / 11)


@pytest.mark.parametrize("key", ["smoothing", "temperature"])
def test_exponent_above_one_needs_to_be_asked_for(tmp_path, key):
    path = experiment(tmp_path, EXPERIMENT + f"sampling:\n  {key}: 5\n")
    config_error(path, "exp.yaml:18:", f"sampling.{key}", "n^5", "smoothing: 0.2", "allow_smoothing_above_one")
    path.write_text(path.read_text() + "  allow_smoothing_above_one: true\n")
    assert load_experiment(path, check_files=False).sampling.smoothing == 5


def test_smoothing_and_temperature_together_must_agree(tmp_path):
    config_error(experiment(tmp_path, EXPERIMENT + "sampling:\n  smoothing: 0.5\n  temperature: 0.3\n"),
                 "keep smoothing")
    with pytest.raises(ValueError, match="exponent S"):
        group_weights({("t", "a"): 1}, SamplingConfig(smoothing=2.0))


def test_annealed_plan_is_averaged_over_the_run():
    sizes = {("t", "big"): 900, ("t", "small"): 100}
    cfg = SamplingConfig(strategy="annealed", anneal_from=1.0, smoothing=0.0)
    mean = mean_weights(sizes, cfg, steps=1000)
    # p_big moves from 0.9 (S = 1) to 0.5 (S = 0); its mean lies strictly between and well below 0.9.
    assert 0.55 < mean[("t", "big")] < 0.75
    assert mean_weights(sizes, SamplingConfig(strategy="smoothed", smoothing=0.5)) == group_weights(
        sizes, SamplingConfig(strategy="smoothed", smoothing=0.5))


def test_realised_annealed_rates_match_the_averaged_plan_not_step_0():
    import math

    from sampling import MultiTaskBatchSampler

    lengths = {("t", "big"): [5] * 900, ("t", "small"): [5] * 100}
    cfg = SamplingConfig(strategy="annealed", anneal_from=1.0, smoothing=0.0, batch_size=8)
    total = 3000
    sampler = MultiTaskBatchSampler(lengths, cfg, total_steps=total, seed=0)
    drawn = sum(sampler.group_at(t) == ("t", "small") for t in range(total))
    planned = mean_weights({g: len(v) for g, v in lengths.items()}, cfg, steps=total)[("t", "small")]
    at_start = group_weights({g: len(v) for g, v in lengths.items()}, cfg, 0.0)[("t", "small")]
    sd = math.sqrt(total * planned * (1 - planned))
    assert abs(drawn - total * planned) < 4 * sd
    assert abs(drawn - total * at_start) > 10 * sd  # the step-0 rate would be far off


def test_every_example_experiment_still_loads():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        load_experiment(path, check_files=False)


# --------------------------------------------------------------------------- an unreachable hub


def _offline(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)")


@pytest.mark.parametrize("family", ["classification", "ner", "qa", "ud"])
def test_unreachable_hub_gives_one_message_for_every_family(monkeypatch, family):
    import datasets

    from tasks import get_family

    monkeypatch.setattr(datasets, "load_dataset", _offline)
    cls = get_family(family)
    fam = object.__new__(cls)
    task = TaskConfig(family=family, datasets=[], options=cls.Options(), name="t")
    fam.task, fam.tokenizer, fam.max_length, fam.options = task, None, 128, task.options
    fam.read_report, fam.vocab = {}, None
    fam.heads = ["upos"]
    ds = resolve_dataset(fam, DatasetConfig(language="en", name="en", hub="some/set", hub_config="cfg", train="train"))
    with pytest.raises(DataError, match=r"^dataset some/set/cfg not reachable: offline\? set data_root/local to use "
                                        r"files"):
        fam.read(ds, "train")


def test_other_hub_errors_name_the_dataset(monkeypatch):
    import datasets

    def broken(*args, **kwargs):
        raise KeyError("features")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match=r"dataset some/set \[train\]: could not load from the hub: KeyError"):
        read_hub(DatasetConfig(language="en", hub="some/set", train="train"), "train")


# --------------------------------------------------------------------------- the command line


def test_cli_turns_input_errors_into_one_line(tmp_path, capsys):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()  # a folder where a file is expected
    assert main(["train", str(folder)]) == 2
    assert "mtl: error:" in capsys.readouterr().err
    bad = experiment(tmp_path, data=b"name: \xff\ntasks: {}\n")
    assert main(["train", str(bad)]) == 2
    assert f"mtl: error: {bad}:1: not valid UTF-8" in capsys.readouterr().err


def test_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    """Unchecked files are still resolved, and a saved experiment without data_root keeps absolute paths."""
    import yaml

    from mtl.core.config import dump_experiment

    (tmp_path / "data").mkdir()
    path = experiment(tmp_path / "data", EXPERIMENT)
    monkeypatch.chdir(REPO)
    exp = load_experiment(path, check_files=False)
    ds = exp.tasks["sst2"].datasets[0]
    assert Path(ds.train) == tmp_path / "data" / "glue/SST-2/train.tsv"
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_experiment(exp))
    again = load_experiment(saved, check_files=False).tasks["sst2"].datasets[0]
    assert Path(again.train) == tmp_path / "data" / "glue/SST-2/train.tsv"
    rooted = yaml.safe_load(EXPERIMENT) | {"data_root": str(DATA)}
    saved.write_text(yaml.safe_dump(rooted))
    exp = load_experiment(saved, check_files=False)
    assert exp.to_dict()["tasks"]["sst2"]["datasets"][0]["train"] == "glue/SST-2/train.tsv"  # relative: travels
    assert Path(exp.tasks["sst2"].datasets[0].train) == DATA.resolve() / "glue/SST-2/train.tsv"


def test_override_value_that_is_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"--set 'train.steps=\[1': the value is not valid YAML"):
        load_experiment(experiment(tmp_path), ["train.steps=[1"], check_files=False)
