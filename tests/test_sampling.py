"""Group weights against hand-worked numbers; the batch sampler's coverage, budget, resume and sharding."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from sampling import MultiTaskBatchSampler, SamplingConfig, exponent_at, group_weights, rates_table

# --------------------------------------------------------------------------- real length distributions


def _tsv_lengths(path: Path, columns: list[str]) -> list[int]:
    """Whitespace token counts of the given columns (summed), one per data row."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    idx = [header.index(c) for c in columns]
    return [sum(len(row.split("\t")[i].split()) for i in idx) for row in lines[1:]]


@pytest.fixture(scope="module")
def glue_lengths(data_dir: Path) -> dict[tuple[str, str], list[int]]:
    return {
        ("sst2", "en"): _tsv_lengths(data_dir / "glue" / "SST-2" / "train.tsv", ["sentence"]),
        ("rte", "en"): _tsv_lengths(data_dir / "glue" / "RTE" / "train.tsv", ["sentence1", "sentence2"]),
    }


def _padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of padded positions when each batch is padded to its longest example."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded


# --------------------------------------------------------------------------- group weights


def test_smoothed_ratio_is_size_ratio_to_the_power_s():
    # 1000 : 1 examples at S = 0.7 → weights 1000^0.7 = 10^2.1 = 125.89 : 1.
    p = group_weights({("a", "en"): 1000, ("a", "sw"): 1}, SamplingConfig(strategy="smoothed", smoothing=0.7))
    assert p[("a", "en")] / p[("a", "sw")] == pytest.approx(125.8925, rel=1e-5)
    assert p[("a", "sw")] == pytest.approx(1 / 126.8925, rel=1e-5)
    assert sum(p.values()) == pytest.approx(1.0)


def test_proportional_uniform_and_capped():
    sizes = {("a", "x"): 600, ("a", "y"): 300, ("b", "z"): 100}
    prop = group_weights(sizes, SamplingConfig(strategy="proportional"))
    assert [prop[g] for g in sizes] == pytest.approx([0.6, 0.3, 0.1])
    uni = group_weights(sizes, SamplingConfig(strategy="uniform"))
    assert [uni[g] for g in sizes] == pytest.approx([1 / 3] * 3)
    # T5 capping at K = 200: min(n, K) = 200, 200, 100 → 0.4, 0.4, 0.2.
    cap = group_weights(sizes, SamplingConfig(strategy="capped", cap=200))
    assert [cap[g] for g in sizes] == pytest.approx([0.4, 0.4, 0.2])


def test_empty_group_gets_zero_even_when_uniform():
    # 0^0 would be 1; an empty group must never be drawn.
    p = group_weights({("a", "x"): 1000, ("a", "y"): 10, ("a", "z"): 0}, SamplingConfig(strategy="uniform"))
    assert p == pytest.approx({("a", "x"): 0.5, ("a", "y"): 0.5, ("a", "z"): 0.0})


def test_annealed_moves_from_anneal_from_to_smoothing():
    cfg = SamplingConfig(strategy="annealed", anneal_from=1.0, smoothing=0.0)
    sizes = {("a", "big"): 900, ("a", "small"): 100}
    # progress 0: S = 1 → 0.9 / 0.1; progress 0.5: S = 0.5 → 30 : 10 → 0.75 / 0.25; progress 1: S = 0 → 0.5 / 0.5.
    for progress, small in [(0.0, 0.1), (0.5, 0.25), (1.0, 0.5), (3.0, 0.5)]:
        assert group_weights(sizes, cfg, progress)[("a", "small")] == pytest.approx(small)
    assert exponent_at(cfg, 0.25) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="progress"):
        group_weights(sizes, cfg, -0.1)


def test_hierarchical_hand_worked():
    # Task A has groups of 100 and 1 examples, task B one group of 10; S = 0.5 at both levels.
    # Tasks: sqrt(101) = 10.04988, sqrt(10) = 3.16228, sum 13.21216 → P(A) = 0.760653, P(B) = 0.239347.
    # Inside A: sqrt(100) = 10, sqrt(1) = 1 → 10/11 and 1/11 → 0.691503 and 0.069150.
    sizes = {("A", "x"): 100, ("A", "y"): 1, ("B", "z"): 10}
    p = group_weights(sizes, SamplingConfig(strategy="smoothed", smoothing=0.5, hierarchical=True))
    assert p[("A", "x")] == pytest.approx(0.691503, abs=1e-6)
    assert p[("A", "y")] == pytest.approx(0.069150, abs=1e-6)
    assert p[("B", "z")] == pytest.approx(0.239347, abs=1e-6)
    # Uniform over tasks (task_smoothing 0): A and B get 1/2 each; A splits it 10 : 1.
    p0 = group_weights(
        sizes, SamplingConfig(strategy="smoothed", smoothing=0.5, hierarchical=True, task_smoothing=0.0)
    )
    assert [p0[g] for g in sizes] == pytest.approx([5 / 11, 0.5 / 11, 0.5])
    # Flat weighting for comparison: 10 : 1 : 3.16228 → the small group of A gets 1/14.16228.
    flat = group_weights(sizes, SamplingConfig(strategy="smoothed", smoothing=0.5))
    assert flat[("A", "y")] == pytest.approx(1 / 14.16228, rel=1e-6)


def test_task_weights_multiply_task_mass():
    sizes = {("a", "x"): 100, ("b", "y"): 100}
    p = group_weights(sizes, SamplingConfig(strategy="proportional"), task_weights={"a": 3.0})
    assert p == pytest.approx({("a", "x"): 0.75, ("b", "y"): 0.25})
    hier = SamplingConfig(strategy="proportional", hierarchical=True)
    sizes3 = {("a", "x"): 100, ("a", "w"): 300, ("b", "y"): 100}
    # Task masses 400 × 0.5 = 200 and 100 × 2 = 200 → 1/2 each; a splits 1 : 3.
    p = group_weights(sizes3, hier, task_weights={"a": 0.5, "b": 2.0})
    assert [p[g] for g in sizes3] == pytest.approx([0.125, 0.375, 0.5])
    p = group_weights(sizes3, hier, task_weights={"b": 0.0})
    assert p[("b", "y")] == 0.0


@pytest.mark.parametrize(
    ("sizes", "cfg", "kwargs", "match"),
    [
        ({("a", "x"): 0, ("b", "y"): 0}, SamplingConfig(), {}, "every group is empty"),
        ({}, SamplingConfig(), {}, "no groups"),
        ({("a", "x"): -3}, SamplingConfig(), {}, "a/x: size must be"),
        ({("a", "x"): 5}, SamplingConfig(strategy="capped"), {}, "cap K"),
        ({("a", "x"): 5}, SamplingConfig(strategy="softmax"), {}, "unknown sampling strategy"),  # type: ignore[arg-type]
        ({("a", "x"): 5}, SamplingConfig(smoothing=-1.0), {}, "smoothing"),
        ({("a", "x"): 5}, SamplingConfig(), {"task_weights": {"a": 0.0}}, "task weight 0"),
        ({("a", "x"): 5}, SamplingConfig(), {"task_weights": {"a": -1.0}}, "weight must be"),
        ({"a/x": 5}, SamplingConfig(), {}, "pairs"),
    ],
)
def test_bad_inputs_raise_clear_errors(sizes, cfg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_weights(sizes, cfg, **kwargs)


def test_rates_table_columns():
    sizes = {("sst2", "en"): 300, ("sst2", "de"): 100}
    probs = {("sst2", "en"): 0.6, ("sst2", "de"): 0.4}
    table = rates_table(sizes, probs, realised={("sst2", "en"): 45, ("sst2", "de"): 5})
    print(table)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "examples", "data", "%", "sampled", "%", "realised", "%", "batches"]
    assert lines[2].split() == ["sst2/en", "300", "75.00", "60.00", "90.00", "45"]
    assert lines[3].split() == ["sst2/de", "100", "25.00", "40.00", "10.00", "5"]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert "realised" not in rates_table(sizes, probs)


# --------------------------------------------------------------------------- the batch sampler


def _run(sampler: MultiTaskBatchSampler, steps: int) -> list[tuple[tuple[str, str], list[int]]]:
    return [next(sampler) for _ in range(steps)]


def test_realised_frequencies_match_target():
    # The hierarchical example above: 0.691503, 0.069150, 0.239347.
    lengths = {("A", "x"): [5] * 100, ("A", "y"): [5], ("B", "z"): [5] * 10}
    cfg = SamplingConfig(strategy="smoothed", smoothing=0.5, hierarchical=True, batch_size=4)
    n = 20_000
    sampler = MultiTaskBatchSampler(lengths, cfg, total_steps=n, seed=3)
    drawn = Counter(g for g, _ in _run(sampler, n))
    assert sampler.realised_counts() == dict(drawn)
    for g, p in {("A", "x"): 0.691503, ("A", "y"): 0.069150, ("B", "z"): 0.239347}.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(drawn[g] - n * p) < 4 * sd, (g, drawn[g], n * p, sd)
    print(sampler.rates_table())


def test_annealed_sampler_uses_step_over_total_steps():
    lengths = {("a", "big"): [5] * 900, ("a", "small"): [5] * 100}
    cfg = SamplingConfig(strategy="annealed", anneal_from=1.0, smoothing=0.0, batch_size=8)
    total = 4000
    sampler = MultiTaskBatchSampler(lengths, cfg, total_steps=total, seed=0)

    def p_small(t: int) -> float:  # S(t) = 1 - t / total; weights 100^S : 900^S
        s = 1 - min(t / total, 1.0)
        return 100**s / (100**s + 900**s)

    for lo, hi in [(0, 800), (3200, 4000), (4000, 4800)]:
        got = sum(sampler.group_at(t) == ("a", "small") for t in range(lo, hi))
        mean = sum(p_small(t) for t in range(lo, hi))
        sd = math.sqrt(sum(p_small(t) * (1 - p_small(t)) for t in range(lo, hi)))
        assert abs(got - mean) < 4 * sd, (lo, got, mean)
    assert sampler.progress == 0.0
    _run(sampler, 1000)
    assert sampler.progress == 0.25


def test_same_seed_same_sequence_other_seed_differs(glue_lengths):
    cfg = SamplingConfig(batch_size=16)
    a = _run(MultiTaskBatchSampler(glue_lengths, cfg, total_steps=300, seed=5), 300)
    b = _run(MultiTaskBatchSampler(dict(reversed(glue_lengths.items())), cfg, total_steps=300, seed=5), 300)
    c = _run(MultiTaskBatchSampler(glue_lengths, cfg, total_steps=300, seed=6), 300)
    assert a == b  # the mapping's order does not matter
    assert a != c


@pytest.mark.parametrize("strategy", ["smoothed", "annealed"])
def test_resume_mid_epoch_gives_the_uninterrupted_sequence(glue_lengths, strategy):
    lengths = {**glue_lengths, ("tiny", "xx"): [3, 9, 4, 7, 2]}
    cfg = SamplingConfig(strategy=strategy, anneal_from=0.3, smoothing=0.0, batch_size=16, max_tokens=400)
    make = lambda: MultiTaskBatchSampler(lengths, cfg, total_steps=500, seed=11)  # noqa: E731
    whole = make()
    expected = _run(whole, 600)
    first = make()
    assert _run(first, 237) == expected[:237]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert any(0 < g["position"] for g in state["groups"])  # mid-epoch
    assert any(g["epoch"] > 0 for g in state["groups"])  # and the tiny group has wrapped
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.realised_counts() == first.realised_counts()
    assert _run(resumed, 363) == expected[237:]
    assert resumed.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="seed"):
        MultiTaskBatchSampler(lengths, cfg, total_steps=500, seed=12).load_state_dict(state)
    with pytest.raises(ValueError, match="groups"):
        MultiTaskBatchSampler(glue_lengths, cfg, total_steps=500, seed=11).load_state_dict(state)


def test_ranks_take_disjoint_parts_of_the_same_global_batch(glue_lengths):
    cfg = SamplingConfig(batch_size=12, max_tokens=600)
    world = 3
    single = _run(MultiTaskBatchSampler(glue_lengths, cfg, total_steps=200, seed=2), 200)
    ranks = [
        _run(MultiTaskBatchSampler(glue_lengths, cfg, total_steps=200, seed=2, rank=r, world_size=world), 200)
        for r in range(world)
    ]
    for t, (group, batch) in enumerate(single):
        parts = [ranks[r][t] for r in range(world)]
        assert {g for g, _ in parts} == {group}
        assert all(idx for _, idx in parts)  # no rank idles
        if len(batch) >= world:
            assert sorted(i for _, idx in parts for i in idx) == sorted(batch)  # disjoint, union = the batch
        else:  # topped up by repeating its own examples
            assert {i for _, idx in parts for i in idx} == set(batch)


def test_small_batches_are_topped_up_for_every_rank():
    lengths = {("a", "x"): [4, 5], ("a", "y"): [1, 2, 3, 4, 5, 6, 7]}
    cfg = SamplingConfig(strategy="uniform", batch_size=3, group_by_length=False)
    for rank in range(3):
        sampler = MultiTaskBatchSampler(lengths, cfg, total_steps=50, seed=0, rank=rank, world_size=3)
        for g, idx in _run(sampler, 50):
            assert len(idx) == 1
            assert 0 <= idx[0] < len(lengths[g])
    with pytest.raises(ValueError, match="global"):
        MultiTaskBatchSampler(lengths, cfg, total_steps=5, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        MultiTaskBatchSampler(lengths, cfg, total_steps=5, seed=0, rank=3, world_size=3)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_token_budget_is_never_exceeded_except_by_single_examples(glue_lengths, group_by_length):
    budget = 40  # shorter than the longest SST-2 sentences (51 words), so some stand alone
    cfg = SamplingConfig(batch_size=1000, max_tokens=budget, group_by_length=group_by_length, length_window=4)
    sampler = MultiTaskBatchSampler(glue_lengths, cfg, total_steps=10, seed=0)
    for g, lengths in glue_lengths.items():
        batches = sampler.epoch_batches(g, 0)
        for b in batches:
            assert max(lengths[i] for i in b) * len(b) <= budget or len(b) == 1
        singles_over = [b for b in batches if lengths[b[0]] > budget]
        assert all(len(b) == 1 for b in singles_over)
        assert singles_over, "expected some over-long examples in this data"
    capped = SamplingConfig(batch_size=7, max_tokens=10_000)
    batches = MultiTaskBatchSampler(glue_lengths, capped, total_steps=10, seed=0).epoch_batches(("sst2", "en"), 0)
    assert max(len(b) for b in batches) == 7  # batch_size bounds the examples per batch


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(batch_size=32),
        SamplingConfig(batch_size=32, group_by_length=False),
        SamplingConfig(batch_size=64, max_tokens=800),
        SamplingConfig(batch_size=64, max_tokens=800, group_by_length=False),
    ],
)
def test_each_epoch_covers_every_example_once(glue_lengths, cfg):
    sampler = MultiTaskBatchSampler(glue_lengths, cfg, total_steps=10, seed=4)
    for g, lengths in glue_lengths.items():
        e0, e1 = sampler.epoch_batches(g, 0), sampler.epoch_batches(g, 1)
        assert sorted(i for b in e0 for i in b) == list(range(len(lengths)))
        assert sorted(i for b in e1 for i in b) == list(range(len(lengths)))
        assert e0 != e1  # a fresh order every epoch


def test_iteration_walks_one_epoch_then_the_next():
    lengths = {("only", "en"): list(range(1, 101))}
    sampler = MultiTaskBatchSampler(lengths, SamplingConfig(batch_size=8), total_steps=30, seed=0)
    assert len(sampler) == 30
    built = []
    real_build = sampler._build_epoch
    sampler._build_epoch = lambda g, e: built.append(e) or real_build(g, e)  # count epoch builds
    first = _run(sampler, 13)  # 100 examples / 8 → 13 batches
    assert sorted(i for _, b in first for i in b) == list(range(100))
    assert sampler.state_dict()["groups"][0]["epoch"] == 1
    second = _run(sampler, 13)
    assert sorted(i for _, b in second for i in b) == list(range(100))
    assert built == [0, 1]  # each epoch is computed once, lazily
    _run(sampler, 10)  # beyond total_steps is allowed
    assert sampler.step == 36


def test_length_grouping_reduces_padding(glue_lengths):
    g = ("sst2", "en")
    lengths = glue_lengths[g]
    shares = {}
    for grouped in (False, True):
        cfg = SamplingConfig(batch_size=32, group_by_length=grouped, length_window=50)
        batches = MultiTaskBatchSampler({g: lengths}, cfg, total_steps=1, seed=0).epoch_batches(g, 0)
        shares[grouped] = _padding_share(batches, lengths)
    print(f"SST-2 padding share, batch 32: random {shares[False]:.1%}, length-grouped {shares[True]:.1%}")
    assert shares[True] < 0.25 * shares[False]
    assert shares[False] > 0.3  # the real distribution is skewed enough for this to matter


# --------------------------------------------------------------------------- UniMax (Chung et al., ICLR 2023)

UNIMAX_SIZES = {("t", "a"): 10, ("t", "b"): 30, ("t", "c"): 200, ("t", "d"): 1000}  # batches per epoch


def test_unimax_hand_worked():
    from sampling import unimax_allocation, unimax_rates

    # Budget 600 batches, N = 1, smallest first:
    #   a: 600 / 4 = 150 > 1 × 10   → 10,  left 590
    #   b: 590 / 3 = 196.67 > 30    → 30,  left 560
    #   c: 560 / 2 = 280 > 200      → 200, left 360
    #   d: 360 / 1 = 360 < 1000     → 360, left 0
    # rates 10/600, 30/600, 200/600, 360/600 = 0.016667, 0.05, 0.333333, 0.6
    alloc = unimax_allocation(UNIMAX_SIZES, 600, max_epochs=1)
    assert [alloc[g] for g in UNIMAX_SIZES] == pytest.approx([10, 30, 200, 360])
    rates = unimax_rates(UNIMAX_SIZES, 600, max_epochs=1)
    assert [rates[g] for g in UNIMAX_SIZES] == pytest.approx([0.016667, 0.05, 0.333333, 0.6], abs=1e-6)
    # N = 2 (caps 20, 60, 400, 2000): a 150 > 20 → 20, left 580; b 193.33 > 60 → 60, left 520;
    # c 260 < 400 → 260, left 260; d 260 → 260. Rates 20/600, 60/600, 260/600, 260/600.
    alloc2 = unimax_allocation(UNIMAX_SIZES, 600, max_epochs=2)
    assert [alloc2[g] for g in UNIMAX_SIZES] == pytest.approx([20, 60, 260, 260])
    # mean_weights (the dry run) counts examples in batches of batch_size: 100 examples / 10 = 10 batches
    examples = {g: 10 * n for g, n in UNIMAX_SIZES.items()}
    cfg = SamplingConfig(strategy="unimax", batch_size=10)
    from sampling import mean_weights

    planned = mean_weights(examples, cfg, steps=600)
    assert [planned[g] for g in UNIMAX_SIZES] == pytest.approx([0.016667, 0.05, 0.333333, 0.6], abs=1e-6)
    with pytest.raises(ValueError, match="budget"):
        group_weights(examples, cfg)


def test_unimax_edge_cases():
    from sampling import unimax_allocation, unimax_rates

    # Budget below the uniform share of the smallest group: 20 / 4 = 5 < 10, so every group gets 5: uniform.
    assert unimax_rates(UNIMAX_SIZES, 20) == pytest.approx(dict.fromkeys(UNIMAX_SIZES, 0.25))
    # Every group capped: 5000 > 1240 = Σ 1 × n, so each gets its size (10, 30, 200, 1000; 3760 left unspent)
    # and the rates are proportional: 10/1240, 30/1240, 200/1240, 1000/1240.
    alloc = unimax_allocation(UNIMAX_SIZES, 5000)
    assert [alloc[g] for g in UNIMAX_SIZES] == pytest.approx([10, 30, 200, 1000])
    assert unimax_rates(UNIMAX_SIZES, 5000)[("t", "d")] == pytest.approx(1000 / 1240)
    # An empty group gets nothing and passes its share on: 90 / 2 = 45 each for the two others.
    assert unimax_allocation({("t", "e"): 0, ("t", "x"): 100, ("t", "y"): 100}, 90) == pytest.approx(
        {("t", "e"): 0.0, ("t", "x"): 45.0, ("t", "y"): 45.0})
    # Task weights make the even split a weighted one: x weighs 2, y 1, both 100 batches; budget 150:
    # x first (100 / 2 < 100 / 1): 150 × 2/3 = 100 ≤ 100 → 100, left 50; y: 50. Budget 90: 60 and 30.
    sizes = {("x", "en"): 100, ("y", "en"): 100}
    w = {("x", "en"): 2.0}
    assert unimax_allocation(sizes, 150, weights=w) == pytest.approx({("x", "en"): 100, ("y", "en"): 50})
    assert unimax_allocation(sizes, 90, weights=w) == pytest.approx({("x", "en"): 60, ("y", "en"): 30})
    assert group_weights(sizes, SamplingConfig(strategy="unimax"), task_weights={"x": 2.0}, budget=90) == \
        pytest.approx({("x", "en"): 2 / 3, ("y", "en"): 1 / 3})
    with pytest.raises(ValueError, match="budget"):
        unimax_allocation(sizes, 0)


def test_unimax_sampler_spreads_its_steps_over_real_epochs(caplog):
    # 10, 30, 200, 1000 batches of 10 examples; 600 steps: a and b are drawn about once over, c and d share the rest.
    lengths = {g: [5] * (10 * n) for g, n in UNIMAX_SIZES.items()}
    sampler = MultiTaskBatchSampler(lengths, SamplingConfig(strategy="unimax", batch_size=10), total_steps=600, seed=1)
    assert [sampler.probabilities()[g] for g in UNIMAX_SIZES] == pytest.approx([1 / 60, 0.05, 1 / 3, 0.6])
    drawn = Counter(g for g, _ in _run(sampler, 600))
    for g, expected in zip(UNIMAX_SIZES, [10, 30, 200, 360]):
        p = expected / 600
        assert abs(drawn[g] - expected) < 4 * math.sqrt(600 * p * (1 - p)) + 1, (g, drawn[g])
    table = sampler.rates_table()
    assert "unimax: 600 draws" in table and "at that limit: t/a, t/b, t/c" in table
    # A token budget makes more, smaller batches: the epochs counted are the sampler's real ones.
    budgeted = SamplingConfig(strategy="unimax", batch_size=10, max_tokens=25)  # 5 examples of 5 tokens a batch
    real = MultiTaskBatchSampler(lengths, budgeted, total_steps=600, seed=1)
    assert len(real.epoch_batches(("t", "a"), 0)) == 20
    # 600 / 4 = 150 > 20 → 20; 580 / 3 > 60 → 60; 520 / 2 = 260 < 400 → 260; 260.
    assert [real.probabilities()[g] for g in UNIMAX_SIZES] == pytest.approx([20 / 600, 0.1, 260 / 600, 260 / 600])
    with caplog.at_level("WARNING", logger="sampling.batches"):
        MultiTaskBatchSampler(lengths, SamplingConfig(strategy="unimax", batch_size=10), total_steps=2480, seed=1)
    assert any("2.00 times over" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "smoothed", "max_epochs": 2}, "max_epochs is a setting of the unimax strategy"),
        ({"strategy": "unimax", "floor": 0.1}, "floor is a setting of the adaptive strategy"),
        ({"strategy": "unimax", "hierarchical": True}, "hierarchical does not apply to unimax"),
        ({"strategy": "unimax", "max_epochs": 0}, "max_epochs must be"),
        ({"strategy": "adaptive", "floor": 1.0}, "floor must be"),
        ({"strategy": "adaptive", "adapt_every": 0}, "adapt_every must be"),
        ({"strategy": "adaptive", "adapt_rate": -1.0}, "adapt_rate must be"),
    ],
)
def test_strategy_keys_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
