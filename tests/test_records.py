"""A finished run as a complete MLflow record: data digests, environment, plots, a servable model,
and `mtl rerun` / `mtl compare` working from the tracking store alone."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import E5, REPO

from launch.cli import main as mtl_main
from mtl import records
from mtl.core.config import DatasetConfig
from mtl.data import build_families, read_split
from mtl.encoder import load_tokenizer
from mtl.experiment import load_experiment
from mtl.trainer import train

TINY = "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"


def quickstart_overrides(root: Path, uri: str, steps: int = 6) -> list[str]:
    """examples/quickstart.yaml on a copy of its data, with a tiny random encoder and a short schedule."""
    return [
        f"data_root={root}",
        f"encoder.name={E5}",
        f"encoder.from_config={TINY}",
        "encoder.max_length=64",
        f"train.steps={steps}",
        "train.eval_every=null",
        "train.log_every=2",
        f"train.output_dir={root / 'run'}",
        f"train.cache_dir={root / 'cache'}",
        f"tracking.uri={uri}",
    ]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    shutil.copytree(REPO / "examples" / "data", root / "data")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    exp = load_experiment(REPO / "examples" / "quickstart.yaml", quickstart_overrides(root, uri))
    out = train(exp)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    return {"root": root, "uri": uri, "exp": exp, "out": out, "run": run, "client": client}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_changes_with_one_byte(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_bytes(b"sentence\tlabel\nnice\tpositive\n")
    before = records.split_fingerprint(DatasetConfig(language="en", train=str(f)), "train")
    assert before["digest"] == sha256(f) and before["source"] == str(f.resolve())
    f.write_bytes(b"sentence\tlabel\nnicE\tpositive\n")  # same size, one byte changed
    assert records.split_fingerprint(DatasetConfig(language="en", train=str(f)), "train")["digest"] != before["digest"]


def test_reader_counts_skipped_rows(tmp_path):
    f = tmp_path / "ocnli.tsv"
    f.write_text("sentence\tlabel\na\tyes\nb\t-\nc\tno\nd\t-\n", encoding="utf-8")
    exp_cfg = {"language": "zh", "name": "zh", "train": str(f)}
    from mtl.experiment import experiment_from_dict

    exp = experiment_from_dict(
        {
            "name": "skip",
            "encoder": {"name": str(E5)},
            "tasks": {"nli": {"family": "classification", "options": {"skip_labels": ["-"]}, "datasets": [exp_cfg]}},
        }
    )
    family = build_families(exp, load_tokenizer(exp.encoder))["nli"]
    examples = read_split(family, exp.tasks["nli"].datasets[0], "train")
    assert len(examples) == 2
    assert family.read_counts[("zh", "train")] == {"skipped": 2, "repaired": 0}


def test_run_holds_inputs_environment_plots_and_model(quickstart_run, tmp_path):
    run, client, root = quickstart_run["run"], quickstart_run["client"], quickstart_run["root"]
    # One MLflow input per split read, with the SHA-256 of the file's bytes and the example counts.
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    expected = {f"{t}/{lang}/{role}" for t, langs in (("sentiment", "en de"), ("nli", "en fr")) for lang in
                langs.split() for role in ("train", "dev")}
    assert set(inputs) == expected
    folder = {"sentiment": "sentiment", "nli": "pairs"}
    for name, inp in inputs.items():
        task, lang, role = name.split("/")
        path = root / "data" / folder[task] / lang / f"{role}.tsv"
        tags = {t.key: t.value for t in inp.tags}
        assert tags["mlflow.data.context"] == role
        assert tags["mtl.sha256"] == sha256(path) and inp.dataset.digest == sha256(path)[:32]
        assert str(path.resolve()) in inp.dataset.source
        rows = len(path.read_text(encoding="utf-8").strip().splitlines()) - 1
        limit = 120 if lang in ("de", "fr") and role == "train" else None
        assert int(tags["mtl.examples_read"]) == min(rows, limit or rows)
        assert tags["mtl.examples_skipped"] == "0"
    # Environment tags: the versions actually imported, the commit of the code that ran.
    tags = run.data.tags
    assert tags["mtl.version.torch"] == torch.__version__
    assert tags["mtl.version.python"].count(".") == 2
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert tags["mtl.git.commit"] == head.strip()
    assert tags["mtl.git.dirty"] in ("true", "false")
    assert tags["mtl.world_size"] == "1" and tags["mtl.launch.profile"] == "single"
    assert tags["mtl.encoder.tokenizer_resolved"] == "sha256:" + records.folder_digest(E5)
    assert tags["mtl.encoder.encoder_resolved"].startswith("from_config:")
    # Plots as PNG artifacts.
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert arts == {"plots/sampling_rates.png", "plots/learning_curves.png"}
    png = Path(client.download_artifacts(run.info.run_id, "plots/sampling_rates.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_model_predicts_like_mtl_predict(quickstart_run, tmp_path):
    import mlflow
    import pandas as pd

    run, out, root = quickstart_run["run"], quickstart_run["out"], quickstart_run["root"]
    mlflow.set_tracking_uri(quickstart_run["uri"])
    models = {m.name: m for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list")}
    assert set(models) == {"sentiment", "nli"}
    assert all(m.source_run_id == run.info.run_id for m in models.values())
    model = mlflow.pyfunc.load_model(models["nli"].model_uri)
    assert model.metadata.get_input_schema().input_names() == ["text", "text_pair"]
    dev = root / "data" / "pairs" / "fr" / "dev.tsv"
    frame = pd.read_csv(dev, sep="\t").rename(columns={"sentence1": "text", "sentence2": "text_pair"})
    pyfunc_labels = list(model.predict(frame[["text", "text_pair"]]))
    written = tmp_path / "pred.tsv"
    code = mtl_main(["predict", str(out.checkpoint), "--task", "nli", "--input", str(dev), "--output", str(written),
                     "--device", "cpu"])
    assert code == 0
    cli_labels = list(pd.read_csv(written, sep="\t")["prediction"])
    assert len(pyfunc_labels) == len(frame) == 60
    assert pyfunc_labels == cli_labels
    assert set(cli_labels) <= {"entailment", "neutral", "contradiction"}
    # The Model Registry takes it as it is.
    version = mlflow.register_model(models["nli"].model_uri, "quickstart-nli")
    assert str(version.version) == "1" and version.run_id == run.info.run_id


def test_rerun_is_bit_identical_and_warns_on_changed_data(quickstart_run, capsys):
    import mlflow

    run, client, root, uri = (quickstart_run[k] for k in ("run", "client", "root", "uri"))
    shutil.rmtree(root / "run")  # nothing but the tracking store is needed
    assert mtl_main(["rerun", run.info.run_id, "--tracking-uri", uri]) == 0
    said = capsys.readouterr()
    assert "same data, code and versions" in said.out and "all evaluation metrics are identical" in said.out
    runs = mlflow.search_runs(
        experiment_names=["quickstart"], filter_string=f"tags.`mtl.reproduces` = '{run.info.run_id}'",
        output_format="list")
    assert len(runs) == 1
    again = runs[0]
    evals = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    assert evals and {k: again.data.metrics[k] for k in evals} == evals  # bit-identical floats
    first_loss = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert first_loss == [(m.step, m.value) for m in client.get_metric_history(again.info.run_id, "train/loss")]

    # One byte of a dev file changes: the check names it.
    dev = root / "data" / "sentiment" / "de" / "dev.tsv"
    data = bytearray(dev.read_bytes())
    data[-3] = ord("X") if data[-3] != ord("X") else ord("Y")
    dev.write_bytes(bytes(data))
    assert mtl_main(["rerun", run.info.run_id, "--tracking-uri", uri, "--check"]) == 0
    said = capsys.readouterr()
    warnings = [ln for ln in said.err.splitlines() if ln.startswith("mtl: warning:")]
    assert len(warnings) == 1 and "sentiment/de/dev" in warnings[0] and str(dev.resolve()) in warnings[0]

    # compare: the two runs side by side, their metrics identical, their timings not.
    assert mtl_main(["compare", run.info.run_id, again.info.run_id, "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert "train/seconds" in text and "eval/nli/fr/accuracy" not in text
    assert "(same data)" in text


def test_two_process_runs_with_one_seed_agree(tmp_path):
    """Same experiment and seed under torchrun with 2 processes, twice: bit-identical weights and metrics."""
    import os
    import sys

    import mlflow

    from mtl.checkpoint import latest

    shutil.copytree(REPO / "examples" / "data", tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MTL_LOG_LEVEL": "WARNING"}
    env["TQDM_DISABLE"] = "1"
    for name in ("a", "b"):
        sets = quickstart_overrides(tmp_path, uri, steps=4)
        sets = [s.replace(str(tmp_path / "run"), str(tmp_path / name)) for s in sets]
        sets += ["tracking.log_model=false", "tracking.log_plots=false", f"tracking.run_name={name}"]
        args = [sys.executable, "-m", "launch.cli", "train", str(REPO / "examples" / "quickstart.yaml"), "--nproc", "2"]
        proc = subprocess.run(args + [x for s in sets for x in ("--set", s)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r.info.run_name: r for r in mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("quickstart").experiment_id])}
    assert runs["a"].data.tags["mtl.world_size"] == runs["b"].data.tags["mtl.world_size"] == "2"
    metrics = [{k: v for k, v in runs[n].data.metrics.items() if k.startswith(("eval/", "train/loss"))} for n in "ab"]
    assert metrics[0] and metrics[0] == metrics[1]
    states = [torch.load(latest(tmp_path / n).path / "model.pt", weights_only=True) for n in "ab"]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_sampling_plot_numbers_match_the_sampler(tmp_path):
    from mtl.core.sampling_config import SamplingConfig
    from mtl.plots import plot_sampling, sampling_rates
    from sampling import MultiTaskBatchSampler, group_weights

    sizes = {("a", "en"): 400, ("a", "de"): 50, ("b", "fr"): 100}
    cfg = SamplingConfig(strategy="annealed", temperature=0.0, anneal_from=1.0, batch_size=4)
    sampler = MultiTaskBatchSampler({g: [5] * n for g, n in sizes.items()}, cfg, total_steps=300, seed=3)
    for _ in range(300):
        next(sampler)
    _, realised, planned = sampling_rates(sampler)
    counts = sampler.realised_counts()
    for g, n in counts.items():
        assert realised[f"{g[0]}/{g[1]}"][-1] == pytest.approx(n / 300)
    start, end = group_weights(sizes, cfg, 0.0), group_weights(sizes, cfg, 299 / 300)
    for g in sizes:
        assert planned["values"][f"{g[0]}/{g[1]}"][0] == pytest.approx(start[g])
        assert planned["values"][f"{g[0]}/{g[1]}"][-1] == pytest.approx(end[g])
    assert plot_sampling(sampler, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_differences_name_data_versions_and_commit():
    before = {
        "datasets": [{"task": "t", "dataset": "en", "role": "train", "digest": "a" * 64, "source": "/d/train.tsv"}],
        "environment": {"version.torch": "2.13.0", "git.commit": "abc", "platform": "x"},
    }
    now = {
        "datasets": [{"task": "t", "dataset": "en", "role": "train", "digest": "b" * 64, "source": "/d/train.tsv"}],
        "environment": {"version.torch": "2.14.0", "git.commit": "abc", "platform": "y"},
    }
    found = records.differences(before, now)
    assert len(found) == 2
    assert found[0].startswith("data t/en/train: digest aaaaaaaaaaaa → bbbbbbbbbbbb")
    assert found[1] == "version.torch: 2.13.0 → 2.14.0"
    assert records.differences(before, before) == []


def test_reader_counts_repaired_sentences(data_dir):
    """Weibo NER has ill-formed IOB2 runs; the count is of sentences, checked against the raw tags."""
    from test_ner import dataset, family

    from tasks.base import counting_reads

    path = data_dir / "ner" / "weibo" / "train.txt"
    with counting_reads() as counts:
        sentences = family().read(dataset(path, "weibo", language="zh"), "train")
    bad = 0
    for ex in sentences:
        tags = [row[-1] for row in ex.rows]
        bad += any(t.startswith("I-") and (i == 0 or tags[i - 1][2:] != t[2:] or tags[i - 1] == "O")
                   for i, t in enumerate(tags))
    assert counts == {"skipped": 0, "repaired": bad} and 0 < bad <= 10


def test_deterministic_switch_sets_the_torch_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    try:
        records.use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_rerun_keeps_the_recorded_number_of_processes(tmp_path):
    from mtl.core.config import dump_experiment
    from mtl.reproduce import RecordedRun, rebuild

    shutil.copytree(REPO / "examples" / "data", tmp_path / "data")
    exp = load_experiment(REPO / "examples" / "quickstart.yaml", [f"data_root={tmp_path}"])
    recorded = RecordedRun(
        run_id="0123456789abcdef" * 2, name="quick", tracking_uri="sqlite:///x.db",
        experiment_yaml=dump_experiment(exp), record={"environment": {"world_size": "2"}}, metrics={},
    )
    again = rebuild(recorded)
    assert again.launch.nproc_per_node == 2
    assert again.tracking.tags["mtl.reproduces"] == recorded.run_id and again.tracking.uri == "sqlite:///x.db"
    assert again.train.output_dir.endswith("-rerun-01234567")
    assert rebuild(recorded, ["launch.nproc_per_node=1"]).launch.nproc_per_node == 1
