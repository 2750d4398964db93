"""Helpers shared by the benchmark scripts: paths, one fresh process per measured run, peak memory, tables,
the train → reload → evaluate-dev-sets scaffolding of the single-model benchmarks, and the harness of the
benchmarks that set mtl against the Hugging Face `Trainer` (qa_vs_hf, ner_vs_hf, glue_vs_hf).

Each configuration runs in its own Python process, so its peak resident memory is its own
and no warm cache (allocator pools, imported modules, tokenised data) carries over to the next.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "multilingual-e5-small-q4"
CHILD_FLAG = "--child"


def offline_env(hf_home: Path) -> dict[str, str]:
    """Environment for measured runs: no hub access, no tokenizer threads competing with torch, caches kept apart.

    OpenMP threads sleep rather than spin while waiting (unless OMP_WAIT_POLICY is already set): on a CPU
    shared with other jobs, spinning threads that get descheduled made a training step up to 7× slower.
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HOME": str(hf_home),
            "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def apply_offline_env(hf_home: Path) -> None:
    """The same environment, for runs made inside this process (smoke mode)."""
    os.environ.update({k: v for k, v in offline_env(hf_home).items() if k != "PYTHONPATH"})


def setdefault_env() -> None:
    """For the scripts run in-process: no hub access, no tokenizer threads; the user's own settings win.

    OpenMP threads sleep rather than spin while waiting: on a CPU shared with other jobs, spinning
    threads that get descheduled made each training step about twice as slow (torch reads this when it loads).
    """
    for key, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(key, value)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fresh(
    script: Path, spec: dict[str, Any], workdir: Path, name: str, env: dict[str, str], reuse: bool = False
) -> dict[str, Any]:
    """Run `script --child SPEC` in a new interpreter and return the JSON result it writes.

    The child's own output goes to `<workdir>/<name>.log`; a failure raises with the end of that log.
    With `reuse`, a run already finished in `workdir` with the same spec is read back instead of
    repeated, so an interrupted benchmark continues where it stopped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{name}.spec.json"
    result_path = workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    text = json.dumps({**spec, "result": str(result_path)}, indent=1)
    if reuse and result_path.exists() and spec_path.exists() and spec_path.read_text(encoding="utf-8") == text:
        result = json.loads(result_path.read_text(encoding="utf-8"))
        result.setdefault("reused", True)
        return result
    result_path.unlink(missing_ok=True)
    spec_path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            [sys.executable, str(script), CHILD_FLAG, str(spec_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"run {name} failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["process_seconds"] = wall
    result_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:KEY=VALUE,KEY=VALUE` (a `--variant` flag) → (NAME, ["KEY=VALUE", ...]).

    A value may not contain a comma; give such settings with one `--variant` per key instead.
    """
    name, sep, body = text.partition(":")
    name = name.strip()
    overrides = [part.strip() for part in body.split(",") if part.strip()]
    if not sep or not name or not overrides or any("=" not in o for o in overrides):
        raise ValueError(
            f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...], e.g. mix-scalar:encoder.mix=scalar"
        )
    return name, overrides


def mean_spread(values: Sequence[float], digits: int = 2) -> str:
    """`mean` for one value, `mean ±sd` (sample standard deviation) for several; `-` for none."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ±{statistics.stdev(values):,.{digits}f}"


def optimizer_label(optimizer: Any) -> str:
    """`AdamW(fused=True)`: the optimiser a trainer built, looked up through accelerate's wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return f"{type(inner).__name__}(fused={inner.defaults.get('fused')})"


@dataclass(frozen=True)
class Defaults:
    """A benchmark's budget defaults, each (full run, --quick smoke run) where it is a pair."""

    unit: str  # what a dev set counts: "sentences", "questions"
    steps: tuple[int, int]
    dev_cap: tuple[int, int]  # first N examples of every dev set
    batch: tuple[int, int]
    batch_help: str
    quick_train_cap: int  # a --quick run reads the first N training examples of each file
    lrs: tuple[float, float]  # encoder, head
    threads: int = 0


THREADS_HELP = "torch threads (default: torch's choice, one per core)"


def parser(doc: str, defaults: Defaults, data_help: str, threads_help: str = THREADS_HELP) -> argparse.ArgumentParser:
    """The command line every single-model benchmark shares; scripts add their own options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    d = defaults
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=data_help)
    p.add_argument("--model", type=str, default=str(DEFAULT_MODEL), help="pretrained encoder (folder or hub name)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {d.steps[0]}; --quick {d.steps[1]})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"the first N {d.unit} of every dev set (default {d.dev_cap[0]}; --quick {d.dev_cap[1]}; "
                        "0: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"{d.batch_help} (default {d.batch[0]}; --quick {d.batch[1]})")
    p.add_argument("--encoder-lr", type=float, default=d.lrs[0])
    p.add_argument("--head-lr", type=float, default=d.lrs[1])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=d.threads, help=threads_help)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {d.steps[1]} steps on the first {d.quick_train_cap} {d.unit} of each training "
                        f"file, the first {d.dev_cap[1]} of each dev set")
    p.add_argument("--keep", type=Path, default=None, help="write the run (checkpoint, predictions) here instead "
                                                            "of a temporary folder that is removed at the end")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment setting, as `mtl train --set` (repeatable)")
    return p


@dataclass
class Budget:
    steps: int
    dev_cap: int | None  # first N examples of every dev set; None: all
    batch_size: int
    train_cap: int | None = None  # first N examples of every training file (smoke runs); None: all


def budget(args: argparse.Namespace, defaults: Defaults) -> Budget:
    """Steps, dev cap and batch size from the command line, else the full or --quick defaults (cap 0: none)."""
    pick = 1 if args.quick else 0
    n = args.steps if args.steps is not None else defaults.steps[pick]
    cap = args.dev_cap if args.dev_cap is not None else defaults.dev_cap[pick]
    train_cap = defaults.quick_train_cap if args.quick else None
    return Budget(n, cap or None, args.batch_size or defaults.batch[pick], train_cap)


def model_name(model: str) -> str:
    """A local folder as an absolute path (the checkpoint records it); anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def experiment_dict(
    name: str,
    args: argparse.Namespace,
    out_dir: Path,
    steps: int,
    encoder: dict[str, Any],
    tasks: dict[str, Any],
    sampling: dict[str, Any],
    train: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A benchmark's experiment: the command line's data, model, seed and learning rates, CPU, no tracking;
    then the command line's `--set KEY=VALUE` overrides."""
    from mtl.core.overrides import set_override

    experiment = {
        "name": name,
        "data_root": str(args.data.expanduser().resolve()),
        "encoder": {"name": model_name(args.model), **encoder},
        "tasks": tasks,
        "sampling": sampling,
        "train": {"seed": args.seed, "steps": steps, "encoder_lr": args.encoder_lr, "head_lr": args.head_lr,
                  "warmup": 0.1, "precision": "fp32", "keep_checkpoints": 1, "output_dir": str(out_dir / "run"),
                  **(train or {})},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }
    for assignment in getattr(args, "set", None) or []:  # e.g. tasks.ud.options.word_pooling=mean
        set_override(experiment, assignment)
    return experiment


def train(experiment: dict[str, Any]) -> tuple[Any, Any]:
    """Train the experiment; the trainer (sampler, splits) and its outcome, which must hold a checkpoint."""
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import Trainer

    trainer = Trainer(experiment_from_dict(experiment))
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint under {outcome.output_dir}")
    return trainer, outcome


@dataclass
class DevRun:
    results: list[Any]
    splits: list[Any]
    seconds: float  # predict + finalize + score, all dev sets
    load_seconds: float  # checkpoint load, read and tokenise the dev sets

    @property
    def examples(self) -> int:
        return sum(len(s.examples) for s in self.splits)

    @property
    def features(self) -> int:
        return sum(len(s.features) for s in self.splits)

    @property
    def subwords(self) -> int:
        return sum(len(f["input_ids"]) for s in self.splits for f in s.features)


def speed_lines(training: str, evaluation: str, dev: DevRun) -> str:
    """The speed report: a training line, an evaluation line ("what: …"), and the load time left out of it."""
    after = evaluation.index(":") + 1
    indent = " " * (len(evaluation) - len(evaluation[after:].lstrip()))  # under the evaluation line's text
    note = f"(loading the checkpoint and tokenising the dev sets, not counted: {dev.load_seconds:.1f} s)"
    return "\n".join([training, evaluation, indent + note])


def evaluate_dev_sets(checkpoint: Path, experiment: dict[str, Any]) -> DevRun:
    """Reload the checkpoint as a user would and evaluate the experiment's dev sets, timing the evaluation alone."""
    from mtl.data import load_splits
    from mtl.evaluate import evaluate
    from mtl.experiment import experiment_from_dict
    from mtl.inference import load
    from mtl.runtime import Runtime

    t0 = time.perf_counter()
    loaded = load(checkpoint, device="cpu")
    exp = experiment_from_dict(experiment)
    splits = load_splits(exp, loaded.families, ["dev"], fit=False, cache_dir=None)
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = evaluate(loaded.model, loaded.families, splits, exp.train.eval_batch_size,
                       Runtime.local(loaded.device), progress=False)
    return DevRun(results, splits, time.perf_counter() - t1, load_seconds)


@dataclass(frozen=True)
class Benchmark:
    """One model trained, its checkpoint reloaded as a user would, its dev sets evaluated and reported."""

    doc: str  # the script's docstring: its first paragraph is the --help description
    defaults: Defaults
    data_help: str
    prefix: str  # of the temporary run folder
    experiment: Callable[[argparse.Namespace, Budget, Path, bool], dict[str, Any]]  # (…, train) → experiment
    banner: Callable[[argparse.Namespace, Budget, str], str]  # (…, dev cap in words); {threads}: torch threads
    report: Callable[[Any, Any, DevRun, Any, str], list[str]]  # (trainer, outcome, dev run, timing value, cap)
    add_args: Callable[[argparse.ArgumentParser], None] | None = None  # the script's own options
    threads_help: str = THREADS_HELP
    timing: Callable[[], Any] = contextlib.nullcontext  # a context around the dev-set evaluation


def run_benchmark(bench: Benchmark, args: argparse.Namespace, out_dir: Path) -> str:
    """Train, reload, evaluate the dev sets (inside `bench.timing()`) and print the banner and the report."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = budget(args, bench.defaults)
    unit = bench.defaults.unit
    cap = f"first {plan.dev_cap} {unit} of each" if plan.dev_cap else f"all {unit}"
    print(bench.banner(args, plan, cap).format(threads=torch.get_num_threads()), flush=True)
    trainer, outcome = train(bench.experiment(args, plan, out_dir, True))
    with bench.timing() as timer:
        dev = evaluate_dev_sets(outcome.checkpoint, bench.experiment(args, plan, out_dir, False))
    text = "\n\n".join(bench.report(trainer, outcome, dev, timer, cap))
    print("\n" + text, flush=True)
    return text


def run_in_folder(args: argparse.Namespace, prefix: str, body: Callable[[argparse.Namespace, Path], Any]) -> None:
    """Run `body(args, folder)` in `--keep` or in a temporary folder removed afterwards, with mtl's and
    tasks' logs on, and print the wall time."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mtl", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        body(args, args.keep.resolve())
    else:
        out_dir = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            body(args, out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


def main(bench: Benchmark, argv: list[str] | None = None) -> None:
    """Parse the command line (shared options, then the script's own) and run the benchmark (`run_in_folder`)."""
    p = parser(bench.doc, bench.defaults, bench.data_help, bench.threads_help)
    if bench.add_args is not None:
        bench.add_args(p)
    args = p.parse_args(argv)
    run_in_folder(args, bench.prefix, lambda a, folder: run_benchmark(bench, a, folder))


# --------------------------------------------------------------------------- HF Trainer against mtl
# The parity benchmarks (qa_vs_hf, ner_vs_hf, glue_vs_hf) train the same encoder with the Hugging Face
# `Trainer` and with mtl under the same hyper-parameters, a `ParityHParams`.


@dataclass(frozen=True)
class ParityHParams:
    """The settings both systems share; a benchmark subclasses it for its own values and settings."""

    lr: float = 5e-5
    batch_size: int = 32
    epochs: int = 1
    warmup: float = 0.1  # share of the steps; both sides warm up for ceil(warmup × steps) steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    eval_batch_size: int = 64


@dataclass(frozen=True)
class Caps:
    """How many examples a parity benchmark reads: training examples per run, and per --quick run training and
    dev examples (a full run reads every dev example)."""

    full_train: int
    quick_train: int
    quick_dev: int


def mtl_train_block(hp: ParityHParams, seed: int, workdir: Path, name: str, log_every: int = 100,
                    **extra: Any) -> dict[str, Any]:
    """The mtl experiment's `train:` block with the hyper-parameters the HF side uses, plus `extra`."""
    return {
        "seed": seed,
        **extra,
        "encoder_lr": hp.lr,
        "head_lr": hp.lr,
        "weight_decay": hp.weight_decay,
        "warmup": hp.warmup,
        "schedule": "linear",
        "max_grad_norm": hp.max_grad_norm,
        "precision": "fp32",
        "eval_batch_size": hp.eval_batch_size,
        "output_dir": str(workdir / name),
        "cache_dir": str(workdir / "feature-cache"),
        "log_every": log_every,
        "keep_checkpoints": 1,
    }


def mtl_experiment(spec: dict[str, Any], hp: ParityHParams, tasks: dict[str, Any],
                   overrides: list[str]) -> dict[str, Any]:
    """A parity run's mtl experiment: the spec's name, data, encoder and seed, `tasks`, hp.epochs epochs with `hp`
    (batches of hp.batch_size), on the CPU, no tracking; then `overrides` (KEY=VALUE, as `mtl train --set`)."""
    from mtl.core.overrides import set_override

    raw: dict[str, Any] = {
        "name": spec["name"],
        "data_root": spec["data"],
        "encoder": {"name": spec["model"], "max_length": hp.max_length},
        "tasks": tasks,
        "sampling": {"batch_size": hp.batch_size},
        "train": mtl_train_block(hp, spec["seed"], Path(spec["workdir"]), spec["name"], epochs=hp.epochs),
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }
    for assignment in overrides:
        set_override(raw, assignment)
    return raw


def train_mtl_like_trainer(exp: Any, threads: int) -> tuple[Any, Any]:
    """Train `exp` with mtl's Trainer, warming up for ceil(share × steps) steps as the HF Trainer does (mtl
    itself rounds a share down), on `threads` torch threads (0: torch's choice); the trainer and its outcome."""
    import torch

    from mtl.data import build_families, load_splits, resolve_steps
    from mtl.encoder import load_tokenizer
    from mtl.trainer import Trainer

    families = build_families(exp, load_tokenizer(exp.encoder))
    train_splits = load_splits(exp, families, ["train"], cache_dir=Path(exp.train.cache_dir))
    total = resolve_steps(exp, train_splits)
    if 0 < exp.train.warmup < 1:
        warmup = float(max(1, math.ceil(exp.train.warmup * total)))
        exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, warmup=warmup))
    if threads:
        torch.set_num_threads(threads)
    trainer = Trainer(exp, progress=False)
    return trainer, trainer.fit()


def mtl_figures(exp: Any, trainer: Any, outcome: Any, unit: str) -> dict[str, Any]:
    """An mtl run's training figures (its one training split): windows, `unit` (examples), steps, warm-up
    steps, tokens, seconds and tokens/s of the training loop, optimiser."""
    from mtl.trainer import warmup_steps

    (split,) = trainer.train_splits
    stats = outcome.train_stats
    return {
        "windows": len(split.features),
        unit: len(split.examples),
        "steps": outcome.steps,
        "warmup_steps": warmup_steps(trainer.exp, trainer.total_steps),  # as trained (train_mtl_like_trainer)
        "tokens": sum(split.lengths),
        "train_seconds": stats["train/seconds"],
        "tokens_per_second": stats["train/tokens_per_second"],
        "optimizer": optimizer_label(trainer.optimizer),
    }


def hf_training_args(hp: ParityHParams, out_dir: Path, seed: int, **extra: Any) -> Any:
    """`TrainingArguments` for hp.epochs epochs on the CPU with `hp`, nothing saved, logged or evaluated; plus
    `extra`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=hp.batch_size,
        learning_rate=hp.lr,
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup,  # transformers 5: a float < 1 is a share of the steps (rounded up)
        lr_scheduler_type="linear",
        max_grad_norm=hp.max_grad_norm,
        num_train_epochs=hp.epochs,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        **extra,
    )


def hf_fit(model: Any, args: Any, train_dataset: Any, data_collator: Any) -> tuple[Any, float]:
    """Train with the HF `Trainer`; the trainer and the seconds from on_train_begin to on_train_end."""
    from transformers import Trainer, TrainerCallback

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            clock["end"] = time.perf_counter()

    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                      callbacks=[Clock()])
    trainer.train()
    return trainer, clock["end"] - clock["start"]


def hf_figures(trainer: Any, seconds: float, windows: int, unit: str, examples: int, tokens: int) -> dict[str, Any]:
    """An HF run's training figures, as `mtl_figures` gives them; `tokens`: the non-padding tokens of one epoch."""
    steps = trainer.state.global_step
    return {
        "windows": windows,
        unit: examples,
        "steps": steps,
        "warmup_steps": trainer.args.get_warmup_steps(steps),
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens * trainer.args.num_train_epochs / seconds,
        "optimizer": optimizer_label(trainer.optimizer),
    }


def run_child(spec_path: Path, runners: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """A fresh process's side of `run_fresh`: run the spec's kind and write its result and peak memory."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result = runners[spec["kind"]](spec)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(spec["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")


def add_parity_args(p: argparse.ArgumentParser, unit: str, dev_help: str, caps: Caps) -> None:
    """The options qa_vs_hf and ner_vs_hf share, after their own --data, --model (…); `unit`: "questions"."""
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run of every system per seed")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training data (both systems)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of encoder and head (both systems)")
    p.add_argument("--train-cap", type=int, default=None,
                   help=f"first N training {unit} (default {caps.full_train}; --quick {caps.quick_train})")
    p.add_argument("--dev-cap", type=int, default=None, help=f"{dev_help} (default: all; --quick {caps.quick_dev})")
    p.add_argument("--mtl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an mtl experiment override for every mtl row, e.g. encoder.mix=scalar (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="one more mtl row with these overrides, e.g. mix-scalar:encoder.mix=scalar (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: torch's choice)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where runs write, kept afterwards; a rerun with the same folder and settings reads "
                        "finished runs back (default: a temporary folder, removed at the end)")
    p.add_argument("--json", type=Path, default=None, help="also write every run's raw figures here")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: first {caps.quick_train} training and {caps.quick_dev} dev {unit}")


@dataclass
class System:
    """One row of a parity table: the HF reference or an mtl run with these experiment overrides."""

    name: str
    kind: str  # hf | mtl
    overrides: list[str]


def systems(args: argparse.Namespace, prog: str) -> list[System]:
    """The HF reference, mtl (with every --mtl-set), and one mtl row per --variant."""
    out = [System("HF Trainer", "hf", []), System("mtl", "mtl", list(args.mtl_set))]
    for text in args.variant:
        try:
            name, overrides = parse_variant(text)
        except ValueError as err:
            sys.exit(f"{prog}: {err}")
        out.append(System(f"mtl {name}", "mtl", list(args.mtl_set) + overrides))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        sys.exit(f"{prog}: two rows share a name: {names}")
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def in_seed_order(rows: list[System], k: int) -> list[System]:
    """The rows for the k-th seed: in order, then reversed, alternately."""
    return rows if k % 2 == 0 else list(reversed(rows))


class ParityRuns:
    """One invocation of a parity benchmark: its rows (`systems`), caps and settings, and its runs, each one
    system with one seed in a fresh process of `script`, on the command line's data and model."""

    def __init__(self, script: Path, args: argparse.Namespace, prog: str, caps: Caps, hp: ParityHParams,
                 base: list[str]):
        given = {k: getattr(args, k) for k in ("epochs", "lr") if getattr(args, k, None) is not None}
        if given.get("epochs", 1) < 1 or given.get("lr", 1.0) <= 0:
            sys.exit(f"{prog}: --epochs must be at least 1 and --lr above 0, got {given}")
        self.script, self.args, self.prog, self.base = script, args, prog, base
        self.hp = dataclasses.replace(hp, **given)
        self.rows = systems(args, prog)
        self.train_cap = args.train_cap or (caps.quick_train if args.quick else caps.full_train)
        dev_cap = args.dev_cap if args.dev_cap is not None else (caps.quick_dev if args.quick else None)
        self.dev_cap = dev_cap or None  # None: all
        self.workdir = Path()  # set by `session`

    @contextlib.contextmanager
    def session(self, setup: str, dev: str) -> Iterator[None]:
        """Print what is measured (`PROG: encoder NAME; SETUP, lr …; dev: DEV; seeds …`) and every mtl row's
        overrides, run the body in --workdir (kept) or a temporary folder (removed at the end), then print the
        wall time."""
        args, hp = self.args, self.hp
        self.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix=f"{self.prog}-"))).expanduser().resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            started = time.perf_counter()
            print(
                f"{self.prog}: encoder {args.model.name}; {setup}, lr {hp.lr:g}, warm-up {hp.warmup:.0%} (rounded up), "
                f"weight decay {hp.weight_decay}, fp32; dev: {dev}; seeds {args.seeds}; one fresh process per run; "
                f"logs in {self.workdir}",
                flush=True,
            )
            for s in self.rows[1:]:
                overrides = ", ".join(self.base + s.overrides) or "none (mtl defaults)"
                print(f"  {s.name}: overrides {overrides}", flush=True)
            yield
            print(f"\nwall time {time.perf_counter() - started:.0f} s", flush=True)
        finally:
            if args.workdir is None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, system: System, seed: int, name: str, **extra: Any) -> dict[str, Any]:
        """The run's result, with its seed; `extra` goes into the spec (after its name)."""
        spec = {
            "kind": system.kind,
            "name": name,
            **extra,
            "seed": seed,
            "data": str(self.args.data),
            "model": str(self.args.model),
            "train_cap": self.train_cap,
            "dev_cap": self.dev_cap,
            "hp": asdict(self.hp),
            "overrides": system.overrides,
            "threads": self.args.threads,
            "workdir": str(self.workdir),
        }
        env = offline_env(self.workdir / "hf_home")
        r = run_fresh(self.script, spec, self.workdir, name, env, reuse=self.args.workdir is not None)
        r["seed"] = seed
        return r

    def write_json(self, settings: dict[str, Any], runs: dict[str, Any]) -> None:
        """With --json: the settings (`hp`, then `settings`, then caps, seeds, rows, base) and every run."""
        if self.args.json:
            settings = {"hp": asdict(self.hp), **settings, "train_cap": self.train_cap, "dev_cap": self.dev_cap,
                        "seeds": self.args.seeds, "systems": [asdict(s) for s in self.rows], "mtl_base": self.base}
            self.args.json.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1), encoding="utf-8")


def parity_table(rows: list[System], runs: dict[str, list[dict[str, Any]]], headers: list[str],
                 scores: list[tuple[Callable[[dict[str, Any]], float], int]]) -> str:
    """One line per system: its training windows and steps (each distinct value), its `scores` (figure, digits)
    under `headers`, training seconds, tokens/s and peak memory; each figure the mean ±sd over the runs."""
    from mtl.core.table import format_table

    columns = [*scores, (lambda r: r["train_seconds"], 0), (lambda r: r["tokens_per_second"], 0),
               (lambda r: r["peak_rss_mib"], 0)]
    table = []
    for s in rows:
        rs = runs[s.name]
        windows = "/".join(sorted({f"{r['windows']:,}" for r in rs}))
        steps = "/".join(sorted({str(r["steps"]) for r in rs}))
        table.append([s.name, windows, steps] + [mean_spread([get(r) for r in rs], digits) for get, digits in columns])
    return format_table(["system", "windows", "steps", *headers, "train s", "tokens/s", "peak MiB"], table)


def ratios(runs: list[dict[str, Any]], reference: list[dict[str, Any]],
           figures: Sequence[tuple[str, Callable[[dict[str, Any]], float]]]) -> str:
    """`F1 1.012×, tokens/s 2.345×`: the mean of each figure over `runs` ÷ its mean over `reference`."""
    parts = []
    for label, get in figures:
        a = sum(get(r) for r in runs) / len(runs)
        b = sum(get(r) for r in reference) / len(reference)
        parts.append(f"{label} {a / b:.3f}×" if b > 0 else f"{label} -")
    return ", ".join(parts)


def run_line(seed: int, label: str, r: dict[str, Any], scores: str) -> str:
    """A finished run as the parity benchmarks list it: seed, what ran, training figures, then `scores`."""
    return (
        f"  seed {seed}  {label} {r['windows']:5d} windows {r['steps']:4d} steps "
        f"{r['train_seconds']:7.1f} s train {r['tokens_per_second']:6.0f} tokens/s  {scores}"
        + ("  (read back)" if r.get("reused") else "")
    )


def child_or_main(main: Callable[[], None], runners: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """A script's entry point: `--child SPEC` runs one spec (see `run_fresh`), anything else is its command line."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        run_child(Path(sys.argv[2]), runners)
    else:
        main()
