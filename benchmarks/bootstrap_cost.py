"""What the paired bootstrap of `seeds:` costs after training: 1,000 resamples of a dev set's scoring, against
one scoring of the same set, for the families whose score is the slowest per example (UD's CoNLL 2018
evaluation, SQuAD's and classification's metrics) on real dev sets of ../shared/data.

Beside it, the baseline: the same resamples scored from scratch (the default `TaskFamily.sample_scorer`), timed
on the first `--baseline-resamples` and scaled, with a check that both give the same scores.

The predictions are the gold annotation with every fifth item changed (a head and a relation, a tag, an
answer, a label), so the scorer does the work a real model's output asks of it; no model is trained.

    python benchmarks/bootstrap_cost.py                    # 1,000 resamples, every dev set below
    python benchmarks/bootstrap_cost.py --resamples 200 --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()  # before torch loads

SETS = {  # name → (family, dataset block, options)
    "UD en_ewt dev": ("ud", {"language": "en", "dev": "ud/en_ewt/dev.conllu"},
                      {"heads": ["upos", "feats", "lemma", "deps"]}),
    "UD fr_gsd dev": ("ud", {"language": "fr", "dev": "ud/fr_gsd/dev.conllu"},
                      {"heads": ["upos", "feats", "lemma", "deps"]}),
    "SQuAD dev": ("qa", {"language": "en", "dev": "squad/dev.json"}, {}),
    "SST-2 dev": ("classification", {"language": "en", "dev": "glue/SST-2/dev.tsv",
                                     "fields": {"text": "sentence", "label": "label"}}, {}),
}


def _family(name: str, block: dict[str, Any], options: dict[str, Any], data: Path, cap: int | None) -> tuple:
    from transformers import AutoTokenizer

    from mtl.data import build_families
    from mtl.experiment import experiment_from_dict

    # an experiment must train something: the dev file is named as the train split too, and never read as one
    ds = dict(block, train=block["dev"], **({"max_examples": cap} if cap else {}))
    exp = experiment_from_dict({"name": "bootstrap-cost", "data_root": str(data), "encoder": {
        "name": str(common.DEFAULT_MODEL)}, "tasks": {"t": {"family": name, "options": options, "datasets": [ds]}},
        "tracking": {"enabled": False}})
    family = build_families(exp, AutoTokenizer.from_pretrained(common.DEFAULT_MODEL))["t"]
    dataset = exp.tasks["t"].datasets[0]
    examples = family.read(dataset, "dev")
    family.fit(examples)  # the label vocabularies the scorer reports by
    return family, dataset, examples


def _predictions(name: str, examples: list[Any], family: Any) -> list[Any]:
    """Gold with every fifth item changed."""
    if name == "ud":
        out = []
        for k, s in enumerate(examples):
            heads, rels = s.column("head"), s.column("deprel")
            out.append({"head": ["0" if (k + i) % 5 == 0 else h for i, h in enumerate(heads)],
                        "deprel": ["dep" if (k + i) % 5 == 0 else r for i, r in enumerate(rels)],
                        "upos": ["X" if (k + i) % 5 == 0 else u for i, u in enumerate(s.column("upos"))]})
        return out
    if name == "qa":
        return ["" if k % 5 == 0 else ex.answers[0].text for k, ex in enumerate(examples)]
    labels = sorted({ex.label for ex in examples}, key=str)
    return [labels[(labels.index(ex.label) + 1) % len(labels)] if k % 5 == 0 else ex.label
            for k, ex in enumerate(examples)]


def _rescorer(family: Any, examples: list[Any], predictions: list[Any], dataset: Any) -> Any:
    """Each resample scored from scratch: the family's `score` on the resampled examples (for span QA keyed by
    position, since its score keys questions by id and a question drawn twice must count twice)."""
    from tasks._squad_metrics import evaluate
    from tasks.base import TaskFamily

    if family.name != "qa":
        return TaskFamily.sample_scorer(family, examples, predictions, dataset)

    def score(indices: list[int]) -> dict[str, float]:
        golds = {str(n): [a.text for a in examples[i].answers] for n, i in enumerate(indices)}
        return evaluate({str(n): predictions[i] for n, i in enumerate(indices)}, golds, dataset.language)

    return score


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="the first 100 examples of each set")
    p.add_argument("--baseline-resamples", type=int, default=20,
                   help="resamples re-scored from scratch (the baseline), scaled to --resamples")
    args = p.parse_args(argv)
    from mtl.significance import replicates, resamples

    rows = []
    for label, (name, block, options) in SETS.items():
        family, dataset, examples = _family(name, block, options, args.data.resolve(), 100 if args.quick else None)
        predictions = _predictions(name, examples, family)
        t0 = time.perf_counter()
        scores = family.score(examples, predictions, dataset)
        once = time.perf_counter() - t0
        metric = family.primary_metric
        t0 = time.perf_counter()
        reps = replicates(family, examples, predictions, dataset, metric, args.resamples)
        total = time.perf_counter() - t0
        # the baseline: every resample scored from scratch (TaskFamily's own scorer), on the first draws
        fast = family.sample_scorer(examples, predictions, dataset)
        slow = _rescorer(family, examples, predictions, dataset)
        draws = [idx.tolist() for idx in resamples(len(examples), args.baseline_resamples)]
        t0 = time.perf_counter()
        rescored = [slow(idx)[metric] for idx in draws]
        rescore = (time.perf_counter() - t0) / len(draws) * args.resamples
        if any(abs(fast(idx)[metric] - r) > 1e-9 for idx, r in zip(draws, rescored, strict=True)):
            raise SystemExit(f"{label}: the family's resample scores differ from re-scoring")
        lo, hi = sorted(reps)[int(0.025 * len(reps))], sorted(reps)[int(0.975 * len(reps)) - 1]
        rows.append((label, f"{len(examples):,}", f"{scores[metric]:.2f}", f"[{lo:.2f}, {hi:.2f}]",
                     f"{once * 1000:.0f} ms", f"{rescore:.1f} s", f"{total:.1f} s", f"{rescore / total:.0f}×"))
        print(rows[-1], flush=True)
    print(f"\nPaired bootstrap cost: {args.resamples} resamples of each dev set's scoring (one process, "
          f"{__import__('torch').get_num_threads()} torch threads)")
    print(f"re-scored: {args.baseline_resamples} resamples scored from scratch, scaled to {args.resamples}; "
          "speed-up = re-scored / bootstrap")
    print(format_table(("dev set", "examples", "primary", "95% of resamples", "one scoring", "re-scored",
                        "bootstrap", "speed-up"), rows, left=1))


if __name__ == "__main__":
    main()
