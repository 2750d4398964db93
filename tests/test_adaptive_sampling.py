"""The adaptive strategy (sampling/adaptive.py): the update by hand, exact resume of the sampler, and on real
UD data a group with shuffled tags, whose loss cannot fall, drawing rate from one that learns; the trainer's
metrics and plot of the rates; a killed-and-resumed run repeating them; the dry-run table of both new strategies."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_encoder

from sampling import MultiTaskBatchSampler, SamplingConfig, group_weights, mean_weights

A, B = ("t", "a"), ("t", "b")


# --------------------------------------------------------------------------- the update, by hand


def test_update_hand_worked():
    from sampling.adaptive import AdaptiveRates

    # Prior 1/2, 1/2; floor 0.05 (so rates = 0.05 + 0.9 α); η = 1; a block is 10 draws.
    rates = AdaptiveRates([A, B], {A: 0.5, B: 0.5}, floor=0.05, every=10, rate=1.0)
    assert rates.current().tolist() == pytest.approx([0.5, 0.5])
    for _ in range(3):
        rates.observe(A, 2.0)
    rates.observe(B, 4.0)
    assert not rates.advance(9)  # still block 0
    # Block 0 ends: the first losses are the starting ones (A 2.0, B 4.0): both ratios 1, log α both + 1: unchanged.
    assert rates.advance(10)
    assert rates.current().tolist() == pytest.approx([0.5, 0.5])
    # Block 1: A's mean loss 1.0 (ratio 1.0 / 2.0 = 0.5), B's 4.0 (ratio 1). log α_A = log ½ + 1 + 0.5,
    # log α_B = log ½ + 1 + 1, so α_B = e^0.5 / (1 + e^0.5) = 0.622459, α_A = 0.377541;
    # rates 0.05 + 0.9 × 0.377541 = 0.389787 and 0.05 + 0.9 × 0.622459 = 0.610213.
    rates.observe(A, 0.5)
    rates.observe(A, 1.5)
    rates.observe(B, 4.0)
    assert rates.advance(20)
    assert rates.current().tolist() == pytest.approx([0.389787, 0.610213], abs=1e-6)
    assert rates.ratios() == pytest.approx({A: 0.5, B: 1.0})
    # Block 2: B not drawn keeps its ratio 1; A at 0.5 again: α_B / α_A = e^(0.5 + 0.5) = e → 0.731059.
    rates.observe(A, 1.0)
    assert rates.advance(30)
    assert rates.current()[1] == pytest.approx(0.05 + 0.9 * math.e / (1 + math.e), abs=1e-9)
    assert [s for s, _ in rates.history()] == [0, 10, 20, 30]
    assert rates.at(15).tolist() == pytest.approx([0.5, 0.5]) and rates.at(25)[0] == pytest.approx(0.389787, abs=1e-6)
    # The floor holds however far the weights run: B's ratio 1 against A's 0 for many blocks.
    for block in range(4, 60):
        rates.observe(A, 1e-9)
        rates.observe(B, 4.0)
        rates.advance(10 * block)
    assert rates.current()[0] == pytest.approx(0.05) and rates.current().sum() == pytest.approx(1.0)


def test_floor_leaves_room_to_adapt():
    from sampling.adaptive import AdaptiveRates

    with pytest.raises(ValueError, match=r"floor 0\.5 × 2 groups"):
        AdaptiveRates([A, B], {A: 0.5, B: 0.5}, floor=0.5, every=10, rate=1.0)
    # Default floor: a tenth of the uniform share; the starting rates are the smoothed ones lifted to the floor.
    sizes = {A: 900, B: 100, ("t", "empty"): 0}
    start = group_weights(sizes, SamplingConfig(strategy="adaptive", smoothing=1.0))
    assert start == pytest.approx({A: 0.05 + 0.9 * 0.9, B: 0.05 + 0.9 * 0.1, ("t", "empty"): 0.0})
    assert mean_weights(sizes, SamplingConfig(strategy="adaptive", smoothing=1.0), steps=500) == pytest.approx(start)


# --------------------------------------------------------------------------- the sampler


def _loss(group: tuple[str, str], step: int) -> float:
    """A learnable group (a: its loss halves every 50 draws) and one that does not learn (b)."""
    return 2.0 * 0.5 ** (step / 50) if group == A else 3.0 + 0.1 * math.sin(step)


def _train(sampler: MultiTaskBatchSampler, steps: int) -> list:
    out = []
    for _ in range(steps):
        group, idx = next(sampler)
        out.append((group, idx))
        sampler.observe(group, _loss(group, sampler.step))
    return out


def _adaptive_cfg(**over) -> SamplingConfig:
    return SamplingConfig(**{"strategy": "adaptive", "batch_size": 4, "adapt_every": 20, "floor": 0.05, **over})


def test_sampler_moves_rate_to_the_group_that_does_not_learn():
    lengths = {A: [5] * 400, B: [5] * 400}
    sampler = MultiTaskBatchSampler(lengths, _adaptive_cfg(), total_steps=400, seed=0)
    assert sampler.probabilities() == pytest.approx({A: 0.5, B: 0.5})
    _train(sampler, 400)
    history = sampler.rate_history()
    assert len(history) == 20  # start + updates at 20, 40, …, 380
    assert history[-1][1][B] > 0.9 and history[-1][1][A] == pytest.approx(0.05, abs=0.01)
    assert sampler.rate_metrics() == pytest.approx({"sampling/rate/t/a": history[-1][1][A],
                                                     "sampling/rate/t/b": history[-1][1][B]})
    table = sampler.rates_table()
    assert "adaptive: rates move every 20 draws" in table and "19 update(s)" in table
    drawn = sampler.realised_counts()
    assert drawn[B] > 2 * drawn[A]


def test_sampler_resumes_mid_block_to_the_same_draws_and_rates():
    lengths = {A: [5] * 400, B: list(range(1, 301)), ("u", "c"): [3] * 50}
    cfg = _adaptive_cfg(max_tokens=200)
    make = lambda: MultiTaskBatchSampler(lengths, cfg, total_steps=300, seed=7)  # noqa: E731
    whole = make()
    expected = _train(whole, 300)
    first = make()
    assert _train(first, 131) == expected[:131]  # 131: mid-block, with losses of draws 120 … 130 pending
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert sum(state["adaptive"]["counts"]) == 11
    resumed = make()
    resumed.load_state_dict(state)
    assert _train(resumed, 169) == expected[131:]
    assert resumed.rate_history() == whole.rate_history()  # to the bit: floats compare exactly
    assert resumed.state_dict() == whole.state_dict()
    assert len({tuple(r.values()) for _, r in whole.rate_history()}) > 5  # the rates did move
    # Without the pending losses of the block the rates would differ: the state is what makes resume exact.
    lossy = make()
    state["adaptive"]["sums"] = [0.0] * 3
    state["adaptive"]["counts"] = [0] * 3
    lossy.load_state_dict(state)
    _train(lossy, 169)
    assert lossy.rate_history() != whole.rate_history()


def test_ranks_draw_the_same_groups_under_adaptive_rates():
    lengths = {A: [5] * 400, B: [5] * 400}
    runs = [MultiTaskBatchSampler(lengths, _adaptive_cfg(), total_steps=200, seed=3, rank=r, world_size=2)
            for r in range(2)]
    a, b = _train(runs[0], 200), _train(runs[1], 200)
    assert [g for g, _ in a] == [g for g, _ in b]
    assert all(set(x).isdisjoint(y) for (_, x), (_, y) in zip(a, b))
    assert runs[0].rate_history() == runs[1].rate_history()


# --------------------------------------------------------------------------- the trainer, on real UD data


def _shuffled_tags(source: Path, target: Path, sentences: int, seed: int = 0) -> Path:
    """The first `sentences` of a CoNLL-U file with its UPOS column permuted over all words: real text, tags
    that no model can predict better than their overall frequencies."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")[:sentences]
    rows = [[line.split("\t") for line in b.splitlines()] for b in blocks]
    words = [r for block in rows for r in block if len(r) == 10 and r[0].isdigit()]
    tags = [r[3] for r in words]
    for r, tag in zip(words, np.random.default_rng(seed).permutation(tags)):
        r[3] = str(tag)
    target.write_text("\n\n".join("\n".join("\t".join(r) for r in block) for block in rows) + "\n\n",
                      encoding="utf-8")
    return target


def ud_experiment(tmp_path: Path, data_dir: Path, steps: int = 60, **train_over) -> dict:
    """Two UPOS tasks on the same 160 English sentences: `tags` with the real tags, `noise` with them shuffled."""
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"max_length": 64, "layer_dropout": 0.0, "dropout": 0.0})
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    noise = _shuffled_tags(data_dir / "ud/en_ewt/train.conllu", tmp_path / "shuffled.conllu", 160)
    ds = {"language": "en", "name": "en_ewt", "train": "ud/en_ewt/train.conllu", "max_examples": 160}
    return {
        "name": "adaptive-ud",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "tags": {"family": "ud", "options": {"heads": ["upos"]},
                     "datasets": [{**ds, "dev": "ud/en_ewt/dev.conllu"}]},
            "noise": {"family": "ud", "options": {"heads": ["upos"]}, "datasets": [{**ds, "train": str(noise)}]},
        },
        "sampling": {"strategy": "adaptive", "batch_size": 16, "adapt_every": 10, "smoothing": 0.0},
        "train": {"steps": steps, "head_lr": 3e-3, "encoder_lr": 3e-3, "output_dir": str(tmp_path / "run"),
                  "eval_batch_size": 64, "log_every": 5, "warmup": 0, **train_over},
        "tracking": {"enabled": False},
    }


def _sampler_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())["sampler"]


def test_rates_move_to_the_group_whose_loss_stays_high(tmp_path, data_dir):
    """Shuffled tags can be fit no better than their frequencies, so `noise` keeps most of its starting loss while
    `tags` learns; DoReMi-style updates on the loss ratio predict that `noise` gains rate. The rates are logged as
    sampling/rate/<task>/<dataset> and drawn in plots/sampling_rates.png."""
    import mlflow

    from mtl.experiment import experiment_from_dict
    from mtl.trainer import train

    cfg = ud_experiment(tmp_path, data_dir, steps=60)
    cfg["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "log_model": False}
    out = train(experiment_from_dict(cfg), progress=False)
    state = _sampler_state(out.checkpoint)["adaptive"]
    noise, tags = ("noise", "en_ewt"), ("tags", "en_ewt")
    ratio = {g: r / s for g, r, s in zip([noise, tags], state["recent"], state["start"])}  # groups in sorted order
    assert ratio[noise] > 0.7 and ratio[tags] < 0.6, ratio  # what the method reacts to
    rates = [dict(zip([noise, tags], r)) for _, r in state["history"]]
    assert [s for s, _ in state["history"]] == [0, 10, 20, 30, 40, 50]
    assert rates[0] == {noise: 0.5, tags: 0.5}  # smoothing 0: uniform to start
    assert all(later[noise] >= earlier[noise] for earlier, later in itertools.pairwise(rates))
    assert rates[-1][noise] > 0.65 > 0.35 > rates[-1][tags]
    client = mlflow.MlflowClient(cfg["tracking"]["uri"])
    logged = client.get_metric_history(out.run_id, "sampling/rate/noise/en_ewt")
    assert [m.step for m in logged] == list(range(5, 61, 5))
    # a step's metric is the rate in force for its next draw: at step 25, the rates set at draw 20
    assert {m.step: m.value for m in logged}[25] == pytest.approx(rates[2][noise])
    assert "plots/sampling_rates.png" in {a.path for a in client.list_artifacts(out.run_id, "plots")}


def test_resumed_run_repeats_the_rates_of_the_uninterrupted_one(tmp_path, data_dir):
    """Stopped at step 25, half way through a block of 10 (its losses pending), and resumed from a copy of that
    checkpoint alone: the updates at 30 and 40 and the weights come out to the bit."""
    import torch
    from helpers import resume_from_copy

    from mtl.experiment import experiment_from_dict
    from mtl.trainer import train

    cfg = ud_experiment(tmp_path, data_dir, steps=45, checkpoint_every=25)
    full = train(experiment_from_dict(cfg), progress=False)
    at_25 = _sampler_state(tmp_path / "run" / "checkpoint-25")["adaptive"]
    assert sum(at_25["counts"]) == 5 and len(at_25["history"]) == 3  # rates of 0, 10, 20; draws 20 … 24 pending
    resumed, weights = resume_from_copy(cfg, tmp_path / "run", 25, tmp_path / "resumed")
    a, b = _sampler_state(full.checkpoint), _sampler_state(resumed.checkpoint)
    assert [s for s, _ in b["adaptive"]["history"]] == [0, 10, 20, 30, 40]
    assert b["adaptive"]["history"] == a["adaptive"]["history"]  # floats equal exactly
    assert b == a
    assert a["adaptive"]["history"][-1][1] != a["adaptive"]["history"][2][1]  # they moved after the stop
    expected = torch.load(full.checkpoint / "model.pt", weights_only=True)
    assert all(torch.equal(expected[k], weights[k]) for k in expected)


def test_dry_run_tables_of_unimax_and_adaptive(tmp_path, data_dir, capsys):
    import yaml

    from launch.cli import main

    cfg = ud_experiment(tmp_path, data_dir, steps=12)
    cfg["tasks"]["noise"]["datasets"][0]["max_examples"] = 40
    # 42 and 171 features (the dry run prints them) in batches of 16: 3 and 11 batches an epoch. UniMax over 12
    # steps: noise min(12 / 2, 3) = 3, tags min(9 / 1, 11) = 9, so 25 % and 75 %.
    # Adaptive starts from p ∝ n^0.7 = 13.686 : 36.568 (27.23 %, 72.77 %) lifted to the floor 0.05 (a tenth of ½):
    # 0.05 + 0.9 × 0.2723 = 29.51 %, 0.05 + 0.9 × 0.7277 = 70.49 %.
    expected = {"unimax": ("25.00", "75.00"), "adaptive": ("29.51", "70.49")}
    for strategy, (noise, tags) in expected.items():
        cfg["sampling"] = {"strategy": strategy, "batch_size": 16}
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"# sampling ({strategy}, 12 steps)" in out
        table = out.split("# sampling")[1].splitlines()
        rows = {line.split()[0]: line.split() for line in table if line.startswith(("noise/", "tags/"))}
        assert rows["noise/en_ewt"][1:] == ["42", "19.72", noise] and rows["tags/en_ewt"][1:] == ["171", "80.28", tags]
    assert not (tmp_path / "run").exists()
