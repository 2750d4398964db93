"""Experiment files: every bad input gives one clear message naming the file, line and key."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from mtl.core.config import flatten
from mtl.core.errors import ConfigError
from mtl.core.overrides import set_override
from mtl.experiment import load_experiment

GOOD = """\
name: demo
encoder:
  name: {e5}
  max_length: 64
tasks:
  sst2:
    family: classification
    datasets:
      - language: en
        train: glue/SST-2/train.tsv
        dev: glue/SST-2/dev.tsv
        fields: {{text: sentence, label: label}}
train:
  encoder_lr: 3e-5
  steps: 10
data_root: {data}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def good(tmp_path, data_dir, e5_path) -> Path:
    return write(tmp_path, GOOD.format(e5=e5_path, data=data_dir))


def test_good_file_loads_typed(good, data_dir):
    exp = load_experiment(good)
    assert exp.train.encoder_lr == pytest.approx(3e-5)  # "3e-5" is a string in YAML 1.1; still a float here
    assert exp.encoder.max_length == 64
    ds = exp.tasks["sst2"].datasets[0]
    assert Path(ds.train) == (data_dir / "glue/SST-2/train.tsv").resolve()
    assert ds.name == "en"
    assert exp.sampling.strategy == "smoothed" and exp.sampling.smoothing == 0.7
    # The dump keeps paths as written so a checkpoint's config travels to another data_root.
    assert exp.to_dict()["tasks"]["sst2"]["datasets"][0]["train"] == "glue/SST-2/train.tsv"


def expect_error(path: Path, *fragments: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_unknown_key_names_file_line_and_key(good):
    text = good.read_text().replace("  max_length: 64", "  max_lenght: 64")
    good.write_text(text)
    expect_error(good, f"{good}:4:", "encoder.max_lenght", "unknown key (did you mean max_length?)")


def test_wrong_type(good):
    good.write_text(good.read_text().replace("steps: 10", "steps: ten"))
    expect_error(good, f"{good}:15:", "train.steps", "expected an integer")


def test_an_adaptive_floor_that_leaves_nothing_to_adapt_is_refused_at_its_line(good):
    good.write_text(good.read_text().replace("train:\n", "sampling:\n  strategy: adaptive\n  floor: 1.5\ntrain:\n"))
    expect_error(good, "sampling.floor", "must be a probability in [0, 1)")
    fields = "        fields: {text: sentence, label: label}\n"
    second = "      - {language: de, train: glue/SST-2/train.tsv, fields: {text: sentence, label: label}}\n"
    good.write_text(good.read_text().replace("floor: 1.5", "floor: 0.6").replace(fields, fields + second))
    expect_error(good, f"{good}:", "sampling.floor: 0.6 × 2 training groups = 1.2 leaves no probability")


def test_bad_choice(good):
    good.write_text(good.read_text().replace("train:\n", "sampling:\n  strategy: smooth\ntrain:\n"))
    expect_error(good, "sampling.strategy", "'smoothed'", "'smooth'")


def test_missing_file(good):
    good.write_text(good.read_text().replace("SST-2/dev.tsv", "SST-2/nope.tsv"))
    expect_error(good, f"{good}:11:", "tasks.sst2.datasets.0.dev", "file not found", "nope.tsv")


def test_unknown_family(good):
    good.write_text(good.read_text().replace("family: classification", "family: clasification"))
    expect_error(good, f"{good}:7:", "tasks.sst2.family", "unknown task family 'clasification' (did you mean "
                 "classification?)")


def test_a_wrong_choice_suggests_the_closest_and_only_a_close_one(good):
    msg = expect_error(good, "sampling.strategy", "got 'smothed' (did you mean smoothed?)",
                       overrides=["sampling.strategy=smothed"])
    assert "did you mean" not in expect_error(good, "sampling.strategy", overrides=["sampling.strategy=zzz"])
    assert msg.count("did you mean") == 1


def test_unknown_family_option(good):
    good.write_text(
        good.read_text().replace("family: classification", "family: classification\n    options: {colour: red}")
    )
    expect_error(good, "tasks.sst2.options.colour", "unknown key")


def test_no_datasets(good):
    text = good.read_text()
    start = text.index("    datasets:")
    end = text.index("train:\n")
    good.write_text(text[:start] + "    datasets: []\n" + text[end:])
    expect_error(good, "tasks.sst2.datasets", "at least one dataset")


def test_missing_required_key(good):
    good.write_text(good.read_text().replace("      - language: en\n", "      - name: x\n"))
    expect_error(good, "tasks.sst2.datasets.0", "missing required key 'language'")


def test_invalid_yaml(tmp_path):
    p = write(tmp_path, "name: [unclosed\n")
    expect_error(p, str(p), "not valid YAML")


def test_overrides(good):
    exp = load_experiment(
        good, ["train.encoder_lr=5e-5", "sampling.smoothing=0.3", "tasks.sst2.datasets.0.language=de"]
    )
    assert exp.train.encoder_lr == pytest.approx(5e-5)
    assert exp.sampling.smoothing == 0.3
    assert exp.tasks["sst2"].datasets[0].language == "de"
    expect_error(good, "expected KEY=VALUE", overrides=["train.encoder_lr"])
    expect_error(good, "train.encoder_lr", "expected a number", overrides=["train.encoder_lr=fast"])


def test_an_error_in_a_set_value_names_the_set_argument_not_a_line_of_the_file(good):
    msg = expect_error(good, overrides=["train.steps=ten"])
    assert msg.startswith("--set train.steps=ten: train.steps: expected an integer"), msg
    assert str(good) not in msg  # the file's `train:` line is not where the mistake was typed
    # A regime given on the command line is reported there too, with the key the check is about.
    msg = expect_error(good, "needs at least two tasks", overrides=["regime=leave_one_out"])
    assert msg.startswith("--set regime=leave_one_out: regime.name:"), msg
    # Keys the --set did not touch keep their file line.
    good.write_text(good.read_text().replace("steps: 10", "steps: zehn"))
    expect_error(good, f"{good}:15:", "train.steps", overrides=["train.encoder_lr=1e-5"])


def test_an_error_found_after_validation_names_the_set_argument(good):
    from mtl.model import check_positions

    class Config:
        max_position_embeddings, model_type = 512, "bert"

    exp = load_experiment(good, ["encoder.max_length=1200"])
    with pytest.raises(ConfigError, match=r"^--set encoder.max_length=1200: encoder.max_length: 1200 is more "):
        check_positions(exp, Config())
    exp = load_experiment(good)
    exp = dataclasses.replace(exp, encoder=dataclasses.replace(exp.encoder, max_length=1200))
    with pytest.raises(ConfigError, match=rf"^{good}:4: encoder.max_length"):
        check_positions(exp, Config())


def test_set_override_creates_nested_keys():
    data: dict = {}
    set_override(data, "tracking.tags.team=nlp")
    assert data == {"tracking": {"tags": {"team": "nlp"}}}


def test_data_root_override_from_cwd(tmp_path, data_dir, e5_path, monkeypatch):
    p = write(tmp_path, GOOD.format(e5=e5_path, data="/does/not/exist"))
    expect_error(p, "data_root", "folder not found")
    monkeypatch.chdir(data_dir.parent)
    exp = load_experiment(p, ["data_root=data"])
    assert Path(exp.data_root) == data_dir.resolve()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [{"d": 2}]}, "e": [1, 2]}) == {"a.b": 1, "a.c.0.d": 2, "e": [1, 2]}


def test_dataset_reader_options_checked_at_load(tmp_path, data_dir, e5_path):
    p = write(tmp_path, f"""\
        name: ner
        encoder: {{name: {e5_path}}}
        tasks:
          ner:
            family: ner
            datasets:
              - language: en
                train: ner/wikiann/en/train.txt
                options:
                  separatr: "\\t"
        data_root: {data_dir}
        """)
    expect_error(p, f"{p}:10:", "tasks.ner.datasets.0.options.separatr", "unknown key", "separator")


def test_local_block_replaces_hub_only_when_data_root_is_given(tmp_path, data_dir, e5_path):
    text = f"""\
        name: hubby
        encoder: {{name: {e5_path}}}
        tasks:
          rte:
            family: classification
            datasets:
              - language: en
                hub: nyu-mll/glue
                hub_config: rte
                train: train
                fields: {{text: sentence1, text_pair: sentence2, label: label}}
                local: {{train: glue/RTE/train.tsv}}
        """
    p = write(tmp_path, text)
    hub = load_experiment(p).tasks["rte"].datasets[0]
    assert (hub.hub, hub.train) == ("nyu-mll/glue", "train")
    local = load_experiment(p, [f"data_root={data_dir}"]).tasks["rte"].datasets[0]
    assert local.hub is None and Path(local.train) == (data_dir / "glue/RTE/train.tsv").resolve()
    # The saved config of a hub run stays a hub run when read back.
    again = tmp_path / "again.yaml"
    from mtl.core.config import dump_experiment

    again.write_text(dump_experiment(load_experiment(p)))
    assert load_experiment(again).tasks["rte"].datasets[0].hub == "nyu-mll/glue"


def test_an_encoder_that_does_not_load_is_named_at_its_line(tmp_path, monkeypatch):
    from mtl.core.config import EncoderConfig
    from mtl.encoder import load_tokenizer

    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\nencoder:\n  name: NAME\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_tokenizer(EncoderConfig(name="./models/my-bert"), str(exp))
    assert str(err.value) == (f"{exp}:3: encoder.name: ./models/my-bert: no such folder (a relative path is read "
                              f"from the working folder {tmp_path}, not from data_root)")
    with pytest.raises(ConfigError) as err:
        load_tokenizer(EncoderConfig(name="bert-base-multilingul-cased"), str(exp))
    assert str(err.value).startswith(f"{exp}:3: encoder.name: 'bert-base-multilingul-cased' is not a local folder, "
                                     "and not in the Hugging Face cache while offline")
    assert "hf download bert-base-multilingul-cased" in str(err.value)


def test_steps_and_epochs_together_say_which_one_counts(good, caplog):
    from mtl.data import resolve_steps

    exp = load_experiment(good, ["train.steps=5", "train.epochs=2"])
    assert resolve_steps(exp, []) == 5
    assert "train.steps is 5 and train.epochs is 2.0: the run trains 5 steps; epochs is not used" in caplog.text
