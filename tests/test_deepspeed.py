"""The deepspeed launch profile on CPU with two processes (gloo): ZeRO 1, 2 and 3 end where one process
ends with the same global batch, in a multi-task run whose heads are idle on some steps; ZeRO-3 resumes
from its shards; checkpoints switch profile both ways; a ZeRO-3 checkpoint predicts without DeepSpeed; a
diverging run stops at the same step on every process.

All DeepSpeed runs share one torchrun launch (tests/deepspeed_plan.py), so the processes start and
import DeepSpeed once. DeepSpeed compiles its CPU communication op on first use (about 35 s); it is
kept in .cache/torch_extensions of the repository for the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_encoder

from mtl import checkpoint as ckpt
from mtl.core.errors import ConfigError
from mtl.deepspeed_config import deepspeed_config
from mtl.experiment import experiment_from_dict, load_experiment
from mtl.trainer import Trainer, train

STEPS, EVERY = 8, 4


def experiment(tmp_path: Path, data_dir: Path) -> dict:
    """sst2 (classification) and squad (QA): losses that are means over examples, so a global batch split
    over two processes gives the same gradient as one process (a token-level loss would weigh ranks apart).
    The sst2 dev set has 33 rows: evaluation under ZeRO-3 then runs 2 batches on one rank and 1 on the other."""
    enc = tiny_encoder(hidden=33, layers=2, heads=3)  # tensors of odd sizes: padded ZeRO partitions
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    enc.update(max_length=96, layer_dropout=0.0, dropout=0.0)
    return {
        "name": "ds-mini",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "sst2": {"family": "classification", "datasets": [{
                "language": "en", "train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv",
                "fields": {"text": "sentence", "label": "label"}, "max_examples": 33}]},
            "squad": {"family": "qa", "options": {"max_length": 96, "doc_stride": 32}, "datasets": [{
                "language": "en", "train": "squad/train.json", "dev": "squad/dev.json", "max_examples": 6}]},
        },
        "sampling": {"batch_size": 2},
        "train": {"steps": STEPS, "grad_accum": 2, "checkpoint_every": EVERY, "keep_checkpoints": 5, "seed": 11,
                  "head_lr": 3e-3, "encoder_lr": 1e-3, "warmup": 0.25, "eval_batch_size": 16, "log_every": 4,
                  "output_dir": str(tmp_path / "single")},
        "tracking": {"enabled": False},
    }


def mlm_experiment(tmp_path: Path, data_dir: Path) -> dict:
    """Classification with masked language modelling on the same text: the LM decoder is tied to the encoder's
    input embeddings (one parameter in two modules), and with two examples per process some micro-batches of
    one process have no masked token. Masks are drawn per process, so this run is compared with DDP."""
    cfg = experiment(tmp_path, data_dir)
    sst2 = cfg["tasks"]["sst2"]["datasets"][0]
    cfg["tasks"] = {"sst2": cfg["tasks"]["sst2"], "mlm": {"family": "mlm", "datasets": [{
        "language": "en", "name": "sst2_text", "train": sst2["train"], "dev": sst2["dev"],
        "fields": {"text": "sentence"}, "max_examples": 33}]}}
    cfg["encoder"]["max_length"] = 64
    cfg["sampling"]["batch_size"] = 4
    cfg["train"].update(steps=6, checkpoint_every=None)
    return cfg


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))}


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return torch.load(run / f"checkpoint-{step}" / "model.pt", map_location="cpu", weights_only=True)


# The QA projection's bias shifts every start (end) logit alike, which a softmax ignores: its gradient is zero
# but for float round-off, which Adam scales up to steps of about the learning rate, differently for a sum
# split over two processes. It is compared apart, against how far a step can move it.
NOISE_ONLY = "heads.squad.proj.bias"


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    assert float((a[NOISE_ONLY] - b[NOISE_ONLY]).abs().max()) <= 3e-3 * STEPS
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k != NOISE_ONLY)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> dict:
    tmp = tmp_path_factory.mktemp("ds")
    cfg = experiment(tmp, data_dir)
    trainer = Trainer(experiment_from_dict(cfg), progress=False)
    single = trainer.fit()  # the reference: one process, same global batch
    tasks = [trainer.sampler.group_at(i)[0] for i in range(2 * STEPS)]  # two micro-batches a step
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the tasks' order decides the heads' initialisation
    mlm = tmp / "mlm.yaml"
    mlm.write_text(yaml.safe_dump(mlm_experiment(tmp, data_dir), sort_keys=False))
    ds = ["launch.profile=deepspeed"]
    merged = {"zero_optimization": {"contiguous_gradients": False}, "gradient_clipping": 1.0}
    plan = [
        {"config": str(path), "set": [*ds, "launch.zero_stage=1", f"train.output_dir={tmp / 'zero1'}"]},
        {"config": str(path), "set": [*ds, "launch.zero_stage=2", f"train.output_dir={tmp / 'zero2'}",
                                      f"launch.deepspeed_config={json.dumps(merged)}",
                                      "tracking.enabled=true", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                                      "tracking.log_model=false", "tracking.log_plots=false"]},
        {"config": str(path), "set": [*ds, "launch.zero_stage=3", f"train.output_dir={tmp / 'zero3'}"]},
        # killed after its checkpoint at step 4 (the same files on disk), and resumed
        {"config": str(path), "set": [*ds, "launch.zero_stage=3", f"train.output_dir={tmp / 'zero3-resumed'}"],
         "resume": True, "seed": str(tmp / "zero3" / f"checkpoint-{EVERY}")},
        # a single-process checkpoint resumed under ZeRO-2 and ZeRO-3
        *({"config": str(path), "set": [*ds, f"launch.zero_stage={n}", f"train.output_dir={tmp / f'single-zero{n}'}"],
           "resume": True, "seed": str(tmp / "single" / f"checkpoint-{EVERY}")} for n in (2, 3)),
        {"config": str(mlm), "set": ["launch.profile=torchrun", f"train.output_dir={tmp / 'mlm-ddp'}"]},
        {"config": str(mlm), "set": [*ds, "launch.zero_stage=3", f"train.output_dir={tmp / 'mlm-zero3'}"]},
        # diverging, last: every process stops at the same step
        *({"config": str(path), "set": [*launch, *DIVERGE, f"train.output_dir={tmp / f'diverge-{name}'}"],
           "expect": 1} for name, launch in (("ddp", ["launch.profile=torchrun"]),
                                            ("zero2", [*ds, "launch.zero_stage=2"]))),
    ]
    (tmp / "plan.json").write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(REPO / "tests" / "deepspeed_plan.py"), str(tmp / "plan.json")]
    proc = subprocess.run(cmd, cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("plan:")))
    return {"tmp": tmp, "cfg": cfg, "single": single, "log": proc.stdout + proc.stderr, "tasks": tasks}


DIVERGE = ("train.encoder_lr=1e30", "train.head_lr=1e30", "train.warmup=0")


@pytest.mark.slow
def test_every_process_stops_a_diverging_run_at_the_same_step(runs):
    """The two diverging runs (DDP, then ZeRO-2) are the plan's last: each process of each says one error at the
    same step (the plan went on, so no process waited alone in a collective), and no checkpoint of non-finite
    weights was written."""
    steps = re.findall(r"mtl: error: step (\d+): the training loss", runs["log"])  # a bar may share the line
    assert len(steps) == 4 and steps[0] == steps[1] and steps[2] == steps[3], steps
    for name in ("ddp", "zero2"):
        assert not list((runs["tmp"] / f"diverge-{name}").glob("checkpoint-*"))


@pytest.mark.slow
def test_zero_stages_end_where_one_process_ends(runs):
    tmp = runs["tmp"]
    reference = _weights(tmp / "single")
    moved = _worst(reference, _weights(tmp / "single", EVERY))
    # each head sat idle for whole steps, and some steps trained both heads
    steps = [set(runs["tasks"][i : i + 2]) for i in range(0, 2 * STEPS, 2)]
    assert {"sst2"} in steps and {"squad"} in steps and {"sst2", "squad"} in steps, runs["tasks"]
    for stage in (1, 2, 3):
        assert ckpt.latest(tmp / f"zero{stage}").state()["engine"]["zero_stage"] == stage
        worst = _worst(reference, _weights(tmp / f"zero{stage}"))
        assert worst < 2e-5 and moved > 1e-3, (stage, worst, moved)
    # the final evaluation (under ZeRO-3 in lock-step over uneven shards: 17 and 16 sst2 rows) wrote the
    # predictions of one process
    for stage in (1, 2, 3):
        written = sorted((tmp / f"zero{stage}" / "predictions").iterdir())
        assert [p.name for p in written] == sorted(p.name for p in (tmp / "single" / "predictions").iterdir())
        for p in written:
            assert p.read_text() == (tmp / "single" / "predictions" / p.name).read_text(), (stage, p.name)


@pytest.mark.slow
def test_zero3_with_a_tied_lm_head_ends_where_ddp_ends(runs):
    tmp = runs["tmp"]
    ddp, zero3 = _weights(tmp / "mlm-ddp", 6), _weights(tmp / "mlm-zero3", 6)
    assert ddp.keys() == zero3.keys()
    assert max(float((ddp[k] - zero3[k]).abs().max()) for k in ddp) < 2e-5
    # the tied decoder is the embedding matrix in the consolidated weights too
    assert torch.equal(zero3["heads.mlm.lm.decoder.weight"], zero3["encoder.embeddings.word_embeddings.weight"])
    for p in sorted((tmp / "mlm-ddp" / "predictions").iterdir()):
        assert p.read_text() == (tmp / "mlm-zero3" / "predictions" / p.name).read_text(), p.name


@pytest.mark.slow
def test_zero3_resumes_from_its_shards_to_the_same_end(runs):
    tmp = runs["tmp"]
    assert "optimizer state from its ZeRO shards" in runs["log"]
    assert _worst(_weights(tmp / "zero3"), _weights(tmp / "zero3-resumed")) < 1e-6
    assert sorted(p.name for p in (tmp / "zero3-resumed" / f"checkpoint-{STEPS}" / "zero").iterdir()) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.mark.slow
def test_checkpoints_switch_profile_both_ways(runs):
    tmp = runs["tmp"]
    reference = _weights(tmp / "single")
    # one process → ZeRO-2 and ZeRO-3 (two processes), from the plain optimizer.pt
    assert "optimizer state from optimizer.pt" in runs["log"]
    for stage in (2, 3):
        assert _worst(reference, _weights(tmp / f"single-zero{stage}")) < 2e-5, stage
    # ZeRO-2 → one process: the consolidated optimizer.pt is torch AdamW's own, idle heads without state
    for step in (EVERY, STEPS):
        a = torch.load(tmp / "single" / f"checkpoint-{step}" / "optimizer.pt", weights_only=False)
        b = torch.load(tmp / "zero2" / f"checkpoint-{step}" / "optimizer.pt", weights_only=False)
        assert a["state"].keys() == b["state"].keys()
        assert [{k: v for k, v in g.items() if k != "lr"} for g in a["param_groups"]] == [
            {k: v for k, v in g.items() if k != "lr"} for g in b["param_groups"]]
        for i, s in a["state"].items():
            assert float(s["step"]) == float(b["state"][i]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(s[key], b["state"][i][key], rtol=1e-3, atol=1e-7), (step, i, key)
    out = tmp / "zero2-single"
    out.mkdir()
    shutil.copytree(tmp / "zero2" / f"checkpoint-{EVERY}", out / f"checkpoint-{EVERY}")
    cfg = dict(runs["cfg"], train={**runs["cfg"]["train"], "output_dir": str(out)})
    resumed = train(experiment_from_dict(cfg), resume=True)
    assert resumed.steps == STEPS
    assert _worst(reference, _weights(out)) < 2e-5
    # without optimizer.pt, shards of another layout cannot be resumed: said, not guessed
    bare = tmp / "bare"
    shutil.copytree(tmp / "zero2" / f"checkpoint-{EVERY}", bare / f"checkpoint-{EVERY}")
    (bare / f"checkpoint-{EVERY}" / "optimizer.pt").unlink()
    ckpt.write_manifest(bare / f"checkpoint-{EVERY}")  # as if written without it (else: a damaged checkpoint)
    cfg = dict(runs["cfg"], train={**runs["cfg"]["train"], "output_dir": str(bare)})
    with pytest.raises(ConfigError, match=r"no optimizer\.pt.*'zero_stage': 2.*same launch profile, ZeRO stage"):
        train(experiment_from_dict(cfg), resume=True)


@pytest.mark.slow
def test_zero3_checkpoint_predicts_on_one_process_without_deepspeed(runs, data_dir):
    tmp = runs["tmp"]
    found = tmp / "zero3" / f"checkpoint-{STEPS}"
    assert load_experiment(found / "experiment.yaml").launch.profile == "deepspeed"
    code = ("import sys; sys.modules['deepspeed'] = None\n"  # any import of DeepSpeed would fail
            "from launch.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp / "pred.tsv"
    args = ["predict", str(found), "--task", "sst2", "--input", str(data_dir / "glue/SST-2/dev.tsv"),
            "--output", str(out), "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp, env=_env(tmp), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(out.read_text().strip().splitlines()) == 872 + 1
    metrics = tmp / "m.json"
    proc = subprocess.run([sys.executable, "-c", code, "evaluate", str(found), "--device", "cpu", "--output",
                           str(metrics)], cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the one-process evaluation of the ZeRO-3 weights agrees with the one-process run's final evaluation
    assert json.loads(metrics.read_text()) == pytest.approx(runs["single"].metrics, abs=1e-6)


@pytest.mark.slow
def test_merged_deepspeed_config_is_logged(runs):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['tmp'] / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ds-mini").experiment_id])
    params = run.data.params
    assert params["deepspeed.zero_optimization.stage"] == "2"  # from launch.zero_stage
    assert params["deepspeed.zero_optimization.contiguous_gradients"] == "False"  # from launch.deepspeed_config
    assert params["deepspeed.gradient_accumulation_steps"] == "2" and params["deepspeed.train_batch_size"] == "4"
    local = client.download_artifacts(run.info.run_id, "config/deepspeed.json", str(runs["tmp"] / "art"))
    logged = json.loads(Path(local).read_text())
    assert logged["zero_optimization"] == {"stage": 2, "contiguous_gradients": False}
    assert run.data.tags["mtl.world_size"] == "2"


# --------------------------------------------------------------------------- the config, without DeepSpeed


def _exp(tmp_path, data_dir, launch: dict, **train) -> object:
    cfg = experiment(tmp_path, data_dir)
    cfg["launch"] = launch
    cfg["train"].update(train)
    return experiment_from_dict(cfg)


def test_generated_config_follows_the_experiment(tmp_path, data_dir):
    exp = _exp(tmp_path, data_dir, {"profile": "deepspeed", "offload_optimizer": True,
                                    "deepspeed_config": {"zero_optimization": {"overlap_comm": True}}},
               precision="bf16", max_grad_norm=0.5, grad_accum=1)
    cfg = deepspeed_config(exp, world=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 1 and cfg["train_batch_size"] == 2
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}, "overlap_comm": True}
    # a user file may set the stage when the experiment does not
    exp = _exp(tmp_path, data_dir, {"profile": "deepspeed", "deepspeed_config": {"zero_optimization": {"stage": 3}}})
    assert deepspeed_config(exp, world=4)["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("user, message", [
    ({"optimizer": {"type": "Adam"}}, "'optimizer' is not taken"),
    ({"scheduler": {"type": "WarmupLR"}}, "'scheduler' is not taken"),
    ({"gradient_accumulation_steps": 4}, "set train.grad_accum instead"),
    ({"bf16": {"enabled": True}}, "set train.precision instead"),
    ({"zero_optimization": {"stage": 0}}, "must be 1, 2 or 3"),
    ({"zero_optimization": {"offload_param": {"device": "cpu"}}}, "offload_param needs ZeRO stage 3"),
])
def test_deepspeed_config_may_not_override_what_the_experiment_owns(tmp_path, data_dir, user, message):
    exp = _exp(tmp_path, data_dir, {"profile": "deepspeed", "deepspeed_config": user})
    with pytest.raises(ConfigError, match=message):
        deepspeed_config(exp, world=2)


def test_zero_stage_conflict_names_the_experiment_key(tmp_path, data_dir):
    exp = _exp(tmp_path, data_dir, {"profile": "deepspeed", "zero_stage": 2,
                                    "deepspeed_config": {"zero_optimization": {"stage": 3}}})
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage = 3 differs from 2.*launch\.zero_stage"):
        deepspeed_config(exp, world=2)


def _launch_error(tmp_path: Path, data_dir: Path, block: str, *fragments: str) -> None:
    cfg = experiment(tmp_path, data_dir)
    text = yaml.safe_dump(cfg, sort_keys=False) + block
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    for frag in fragments:
        assert frag in str(info.value), str(info.value)


def test_launch_keys_are_checked_where_they_are_written(tmp_path, data_dir):
    n = len(yaml.safe_dump(experiment(tmp_path, data_dir), sort_keys=False).splitlines())
    _launch_error(tmp_path, data_dir, "launch:\n  zero_stage: 3\n", f":{n + 2}:", "launch.zero_stage",
                  "only by launch.profile: deepspeed")
    _launch_error(tmp_path, data_dir, "launch:\n  profile: deepspeed\n  zero_stage: 4\n", "launch.zero_stage",
                  "1 | 2 | 3", "got 4")
    _launch_error(tmp_path, data_dir, "launch:\n  profile: deepspeed\n  zero_stage: 2\n  offload_params: true\n",
                  f":{n + 4}:", "launch.offload_params", "ZeRO stage 3")
    _launch_error(tmp_path, data_dir, "launch:\n  profile: deepspeed\n  offload_optimizer: true\n",
                  "launch.offload_optimizer", "grad_accum")  # two tasks, grad_accum 2
    _launch_error(tmp_path, data_dir, "launch:\n  profile: deepspeed\n  deepspeed_config: nowhere.json\n",
                  "launch.deepspeed_config", "file not found", "nowhere.json")
    (tmp_path / "bad.json").write_text('{"zero_optimization":\n  {"stage": 2,}}')
    _launch_error(tmp_path, data_dir, "launch:\n  profile: deepspeed\n  deepspeed_config: bad.json\n",
                  "launch.deepspeed_config", "bad.json:2: not valid JSON")


def test_deepspeed_config_file_travels_with_the_experiment(tmp_path, data_dir):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"reduce_bucket_size": 500000}}')
    cfg = experiment(tmp_path, data_dir)
    cfg["launch"] = {"profile": "deepspeed", "deepspeed_config": "ds.json"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)  # relative to the experiment file
    assert exp.launch.deepspeed_config == {"zero_optimization": {"reduce_bucket_size": 500000}}
    assert exp.to_dict()["launch"]["deepspeed_config"] == {"zero_optimization": {"reduce_bucket_size": 500000}}
    assert deepspeed_config(exp, 2)["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 500000}


def test_a_checkpoint_left_half_written_with_shards_is_not_listed(tmp_path):
    """A kill while the ranks write their shards: the hidden folder is never listed, and the next save clears it."""
    class Tok:
        def save_pretrained(self, path):
            Path(path).mkdir()

    def save(step: int, started: Path | None = None) -> Path:
        return ckpt.save(tmp_path, step, model_state={"w": torch.zeros(2)}, optimizer_state=None,
                         scheduler_state=None, trainer_state={"step": step}, vocab={}, experiment_yaml="name: x\n",
                         tokenizer=Tok(), encoder_config=Tok(), rng_states=[], keep=3, started=started)

    save(4)
    half = ckpt.start(tmp_path, 8)
    (half / "zero").mkdir()
    (half / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"PK" * 10)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [4]
    started = ckpt.start(tmp_path, 8)
    assert not half.exists() or half == started
    (started / "zero").mkdir()
    assert save(8, started) == tmp_path / "checkpoint-8"
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [4, 8]
    assert (tmp_path / "checkpoint-8" / "zero").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
