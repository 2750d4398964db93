"""Long inputs read in windows (classification `long_inputs: windows`): the encoder sees the windows of a batch
at most a batch's worth of rows at a time, the head pools them afterwards, and the result is the one the
whole batch in one pass gives; so one huge input (real SQuAD text) costs no more memory than an ordinary batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_encoder
from test_trainer import glue_experiment

from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.experiment import experiment_from_dict
from mtl.model import build_model


def squad_text(data_dir: Path, chars: int) -> str:
    """The first `chars` characters of the SQuAD dev paragraphs, one after another."""
    squad = json.loads((data_dir / "squad/dev.json").read_text(encoding="utf-8"))
    paragraphs = [p["context"].replace("\n", " ").replace("\t", " ") for a in squad["data"] for p in a["paragraphs"]]
    return " ".join(paragraphs)[:chars]


def long_config(tmp_path: Path, data_dir: Path, chars: int, pool: str = "mean", batch_size: int = 4,
                eval_batch_size: int = 8, encoder: dict | None = None) -> dict:
    """A classification task on a short row, one `chars`-long row of real text and another short row
    (train and dev), windows over the long one; no dropout anywhere, so training passes can be compared."""
    rows = [("a short one", "0"), (squad_text(data_dir, chars), "1"), ("another short one", "0")]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
    cfg = glue_experiment(tmp_path, data_dir, steps=2, eval_batch_size=eval_batch_size)
    enc = encoder or cfg["encoder"]
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg["encoder"] = enc
    cfg["sampling"] = {"batch_size": batch_size}
    cfg["tracking"] = {"enabled": False}
    cfg["tasks"] = {"doc": {"family": "classification", "options": {"long_inputs": "windows", "pool": pool},
                            "datasets": [{"language": "en", "train": str(path), "dev": str(path),
                                          "fields": {"text": "text", "label": "label"}}]}}
    return cfg


def count_rows(module: torch.nn.Module, training: list[bool] | None = None) -> list[int]:
    """The number of rows of every forward pass of `module` (the encoder is called with keywords), and in
    `training` whether it was training then."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        seen.append(int((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]))
        if training is not None:
            training.append(module.training)

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_windows_in_passes_of_a_batch_give_the_all_at_once_logits_and_gradients(tmp_path, data_dir, pool):
    exp = experiment_from_dict(long_config(tmp_path, data_dir, 20_000, pool=pool))
    tok = load_tokenizer(exp.encoder)
    families = build_families(exp, tok)
    (split,) = load_splits(exp, families, ["dev"])
    family = families["doc"]
    batch = family.collate(split.features)
    rows = batch["input_ids"].shape[0]
    windows = len(split.features[1]["window_lengths"])
    assert rows == windows + 2 and windows > 3 * exp.train.eval_batch_size  # many more rows than a batch
    torch.manual_seed(0)
    model = build_model(exp, families, tok)
    passes = count_rows(model.encoder)

    def run(train: bool, limit: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.train(train)
        model.zero_grad()
        if train:
            model.train_rows = limit
            out = model("doc", batch)
            out["loss"].backward()
        else:
            model.eval_rows = limit
            with torch.no_grad():
                out = model("doc", batch)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out["logits"].detach(), grads

    whole, _ = run(False, None)
    assert passes == [rows]
    passes.clear()
    parts, _ = run(False, exp.train.eval_batch_size)
    assert passes == [min(exp.train.eval_batch_size, rows - s) for s in range(0, rows, exp.train.eval_batch_size)]
    assert whole.shape == parts.shape == (3, 2)
    torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5)
    assert family.decode({"logits": parts}, batch) == family.decode({"logits": whole}, batch)

    # training: the same loss and gradients through every pass (dropout is off in this experiment)
    passes.clear()
    whole_train, whole_grads = run(True, None)
    parts_train, parts_grads = run(True, exp.sampling.batch_size)
    assert passes[0] == rows and max(passes[1:]) == exp.sampling.batch_size
    assert len(passes) == 1 + math.ceil(rows / exp.sampling.batch_size)
    torch.testing.assert_close(parts_train, whole_train, rtol=1e-4, atol=1e-5)
    assert parts_grads.keys() == whole_grads.keys() and any(n.startswith("encoder.") for n in parts_grads)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(parts_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)
    assert parts_grads["encoder.embeddings.word_embeddings.weight"].abs().sum() > 0

    # an ordinary batch (no windows) larger than the limit, as a token budget makes, keeps its one pass
    short = family.collate([split.features[0], split.features[2]] * 8)
    assert "window_example" not in short and short["input_ids"].shape[0] == 16 > exp.sampling.batch_size
    passes.clear()
    model.train()
    model("doc", short)
    assert passes == [16]

    # under DeepSpeed ZeRO-3 (its parameters carry a ds_id) every rank must run the same passes: one per batch
    next(model.encoder.parameters()).ds_id = 0
    passes.clear()
    run(False, exp.train.eval_batch_size)
    assert passes == [rows]


def test_training_and_evaluation_never_pass_more_rows_than_a_batch(tmp_path, data_dir, monkeypatch):
    """A real run (2 steps, then the final evaluation): the largest encoder pass is sampling.batch_size rows
    in training and train.eval_batch_size in evaluation, while the batch holding the long input has more."""
    import mtl.trainer
    from mtl.trainer import train

    cfg = long_config(tmp_path, data_dir, 20_000, batch_size=4, eval_batch_size=8)
    built: list[tuple[list[int], list[bool], list[tuple[bool, int]]]] = []

    def counting_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        batches: list[tuple[bool, int]] = []
        model.register_forward_pre_hook(lambda m, a: batches.append((m.training, int(a[1]["input_ids"].shape[0]))))
        modes: list[bool] = []
        built.append((count_rows(model.encoder, modes), modes, batches))
        return model

    monkeypatch.setattr(mtl.trainer, "build_model", counting_build_model)
    out = train(experiment_from_dict(cfg), progress=False)
    assert out.steps == 2 and "eval/doc/en/accuracy" in out.metrics
    ((passes, modes, batches),) = built
    for training, limit in ((True, 4), (False, 8)):
        rows = [n for t, n in batches if t == training]
        seen = [n for t, n in zip(modes, passes, strict=True) if t == training]
        assert rows and max(rows) > limit  # a batch that holds the long input's windows …
        assert max(seen) <= limit and sum(seen) == sum(rows)  # … reaches the encoder in passes of a batch
        assert len(seen) == sum(math.ceil(n / limit) for n in rows)


_MEASURE = r"""
import gc, json, sys
sys.path.insert(0, {repo!r})
import torch
from mtl.data import build_families, load_splits
from mtl.encoder import load_tokenizer
from mtl.evaluate import predict_features
from mtl.experiment import experiment_from_dict
from mtl.model import build_model
from mtl.runtime import Runtime

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

def growth(run):
    # peak resident memory during run() above what was resident before it (Linux: clear_refs 5 resets the peak)
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    run()
    return status("VmHWM") - before

torch.manual_seed(0)
exp = experiment_from_dict(json.loads(sys.argv[1]))
tok = load_tokenizer(exp.encoder)
families = build_families(exp, tok)
(split,) = load_splits(exp, families, ["dev"])
fam, huge = families["doc"], split.features[1]
model = build_model(exp, families, tok).eval()
size = exp.train.eval_batch_size
ends = [sum(huge["window_lengths"][: k + 1]) for k in range(len(huge["window_lengths"]))]
# an ordinary batch at its largest: eval_batch_size rows of full windows (the long input's first ones)
ordinary = [dict(input_ids=huge["input_ids"][e - n : e], label=1) for e, n in zip(ends, huge["window_lengths"])][:size]
assert len(ordinary) == size and all(len(f["input_ids"]) == exp.encoder.max_length for f in ordinary)
evaluate = lambda feats: predict_features(model, fam, "doc", feats, size, Runtime.local("cpu"))
evaluate(split.features[:1])  # warm-up: lazy initialisation is not counted
out = dict(windows=len(huge["window_lengths"]), ordinary=growth(lambda: evaluate(ordinary)),
           long=growth(lambda: evaluate([huge])))
model.eval_rows = None  # the whole batch in one pass, as before windows went through in passes
out["all_at_once"] = growth(lambda: evaluate([huge]))
print(json.dumps(out))
"""


def test_a_huge_input_needs_no_more_memory_than_an_ordinary_batch(tmp_path, data_dir):
    """A 1 MB row of SQuAD text evaluated (64 windows of 512 tokens, eval_batch_size 8) in a fresh process: the
    peak memory of its evaluation above what was resident before stays within that of one ordinary batch of
    8 full windows (plus a little); the whole batch in one pass needs several times as much."""
    enc = tiny_encoder(hidden=256, layers=2, heads=4)
    enc.update({"max_length": 512, "layer_dropout": 0.0, "dropout": 0.0})
    cfg = long_config(tmp_path, data_dir, 1_000_000, eval_batch_size=8, encoder=enc)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2",
           "MALLOC_MMAP_THRESHOLD_": "131072"}  # a fixed threshold: large blocks are returned when freed
    done = subprocess.run([sys.executable, "-c", _MEASURE.format(repo=str(REPO)), json.dumps(cfg)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    mib = {k: v / 2**20 for k, v in got.items() if k != "windows"}
    print(f"windows={got['windows']}, peak growth MiB: {json.dumps({k: round(v, 1) for k, v in mib.items()})}")
    assert got["windows"] == 64
    assert mib["ordinary"] > 30  # large enough to be measured well above the allocator's noise
    assert mib["all_at_once"] > 3 * mib["ordinary"]  # the bound below is one that the old way does not meet
    assert mib["long"] <= 1.25 * mib["ordinary"] + 16
