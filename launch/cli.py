"""The `mtl` command: train (on one or several nodes), evaluate, predict, write a SLURM job, list task families.

Heavy libraries (torch, transformers, mlflow) are imported inside the commands so that
`mtl --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _add_set(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `--set KEY=VALUE` config override of every command that reads an experiment."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl", description="Multi-task, multilingual training with one shared encoder.")
    # the `deepspeed` launcher passes --local_rank=N before the command (the rank is read from LOCAL_RANK)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an experiment (multi-task by default)")
    t.add_argument("config", type=Path, help="experiment YAML file")
    _add_set(t, "override a config value, e.g. --set train.encoder_lr=3e-5 (repeatable)")
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, dataset sizes and sampling table; do not train",
    )
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output folder")
    t.add_argument("--seeds", default=None, metavar="S,S,…",
                   help="train the regime (or comparison) once per seed, e.g. --seeds 1,2,3: tables show mean ± sd "
                        "(same as seeds: [1, 2, 3])")
    t.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: a key (or section) whose change since the checkpoint is meant, e.g. "
                        "train.steps; other changes are refused")
    t.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="processes on this node (starts torchrun when > 1; same as launch.nproc_per_node)",
    )
    _add_nodes(t)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on its experiment's eval data")
    e.add_argument(
        "checkpoint", type=Path, help="a checkpoint folder or a run folder (its best checkpoint, else its latest)"
    )
    e.add_argument("--split", default="dev", choices=["dev", "test"])
    _add_set(e, "e.g. --set data_root=/data to find the datasets on another machine")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    e.add_argument("--last", action="store_true", help="a run folder's last checkpoint, not its best")
    e.add_argument("--output", "--json", dest="output", type=Path, default=None, help="write metrics as JSON here")
    e.add_argument(
        "--dataset",
        dest="extra",
        action="append",
        default=[],
        metavar="TASK:LANG=PATH",
        help="also score this file (PATH@FORMAT for another reader; hub:NAME[:CONFIG]@SPLIT for the hub) with the "
        "task's reader and metric; a language the task never trained on is zero-shot (repeatable)",
    )
    e.add_argument(
        "--dataset-options",
        action="append",
        default=[],
        metavar="TASK:LANG=YAML",
        help="dataset keys for that --dataset, as in an experiment file, e.g. 'sst2:en={options: {label_map: "
        "{\"0\": negative, \"1\": positive}}}' (options, fields, format, max_examples; repeatable)",
    )
    e.add_argument("--only-extra", action="store_true", help="score only the --dataset data, not the experiment's")
    e.add_argument(
        "--log", action="store_true", help="add the --dataset metrics to the run's MLflow run (extra/TASK/LANG/METRIC)"
    )
    e.add_argument(
        "--tracking-uri", default=None, help="the run's tracking store for --log (default: its tracking.uri, else "
        "MLFLOW_TRACKING_URI, else mlruns/)"
    )

    r = sub.add_parser("predict", help="predict a file with one task of a checkpoint")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--task", required=True)
    r.add_argument("--input", required=True, type=Path)
    r.add_argument("--output", required=True, type=Path)
    r.add_argument("--language", default=None, help="language of the input (picks e.g. the QA metric)")
    r.add_argument("--format", default=None, help="reader format, if not the task's first dataset's")
    r.add_argument("--fields", default=None, help='column mapping as JSON, e.g. \'{"text": "sentence"}\'')
    r.add_argument("--device", default=None)
    r.add_argument("--last", action="store_true", help="a run folder's last checkpoint, not its best")

    rr = sub.add_parser(
        "rerun",
        help="train a recorded MLflow run again from its logged config; warn on what changed since",
    )
    rr.add_argument("run_id", help="the MLflow run to reproduce")
    _add_set(rr, "override a config value, e.g. --set data_root=/data (repeatable)")
    rr.add_argument("--tracking-uri", default=None, help="where the run is (default: MLFLOW_TRACKING_URI or mlruns/)")
    rr.add_argument("--check", action="store_true", help="only report the differences; do not train")
    rr.add_argument("--nproc", type=int, default=None, help="processes on this node (as for train)")

    c = sub.add_parser(
        "compare",
        help="runs side by side (metrics, data digests, environment), or the table of a regime comparison",
    )
    c.add_argument(
        "run_ids", nargs="+", metavar="RUN_ID",
        help="two or more MLflow run ids; or one experiment file, MLflow experiment name, or regime / compare run "
             "id: the regimes' table (steps, tokens, scores) from the tracking store",
    )
    c.add_argument("--tracking-uri", default=None, help="where the runs are (default: MLFLOW_TRACKING_URI or mlruns/)")
    _add_set(c, "with an experiment file: override a config value, e.g. --set tracking.uri=… (repeatable)")
    c.add_argument("--all", action="store_true", help="show identical rows too")

    sub.add_parser("families", help="list the registered task families")

    la = sub.add_parser("launch", help="write the job script of a cluster scheduler")
    profiles = la.add_subparsers(dest="profile", required=True)
    sl = profiles.add_parser("slurm", help="an sbatch script: torchrun on every node, c10d rendezvous")
    sl.add_argument("config", type=Path, help="experiment YAML file")
    sl.add_argument("--nodes", type=int, required=True)
    sl.add_argument("--gpus-per-node", type=int, required=True, help="also the processes per node (one per GPU)")
    sl.add_argument("--partition", default=None)
    sl.add_argument("--time", default=None, help="time limit, e.g. 12:00:00 or 2-00:00:00")
    sl.add_argument("--account", default=None)
    sl.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node (default: 8 per GPU)")
    sl.add_argument("--master-port", type=int, default=None,
                    help="rendezvous port on the first node (default: 20000 + job id mod 20000)")
    sl.add_argument("--output", type=Path, default=None, help="write the script here (default: print it)")
    _add_set(sl, "a config override the job passes to mtl train (repeatable)")

    y = sub.add_parser("sync-metrics", help="send what a run kept while the tracking server was down (metrics, "
                       "artifacts, model) and end the run as it ended")
    y.add_argument("file", type=Path, help="the run's unsent-metrics.jsonl")
    y.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or the local store)")
    return p


def _add_nodes(parser: argparse.ArgumentParser) -> None:
    """The flags of a run over several nodes: the same command on every node, with its own --node-rank."""
    g = parser.add_argument_group("several nodes (torchrun on every node)")
    g.add_argument("--nnodes", type=int, default=1, help="nodes in the run (default 1)")
    g.add_argument("--node-rank", type=int, default=None, help="this node's rank, 0 … nnodes-1")
    g.add_argument("--master-addr", default=None, help="host of node rank 0 (the rendezvous)")
    g.add_argument("--master-port", type=int, default=None, help="its port (default 29500)")
    g.add_argument("--rdzv-id", default=None,
                   help="c10d rendezvous with this id (e.g. the SLURM job id): nodes take ranks as they arrive")


def _nodes(args: argparse.Namespace, nproc: int):
    from launch.torchrun import DEFAULT_PORT, Nodes

    nodes = Nodes(nproc=nproc, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
                  master_port=args.master_port or DEFAULT_PORT, rdzv_id=args.rdzv_id)
    problems = nodes.problems()
    if problems:
        from mtl.core.errors import ConfigError

        raise ConfigError("; ".join(problems))
    return nodes


def _setup_logging() -> None:
    from mtl import console

    console.setup(os.environ.get("MTL_LOG_LEVEL", "INFO").upper())


LAUNCHER_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-id")


def _relaunch_torchrun(nodes) -> int:
    """Start this same command under torchrun, once per process on this node."""
    import subprocess

    from launch.torchrun import torchrun_command

    # torchrun's own parser would take `--nproc` for one of its options; the children need the
    # launcher's flags no more.
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in LAUNCHER_FLAGS:
            skip = True
        elif not a.startswith(tuple(f"{f}=" for f in LAUNCHER_FLAGS)):
            args.append(a)
    cmd = torchrun_command(nodes, ["launch.cli", *args])
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def cmd_train(args: argparse.Namespace) -> int:
    from mtl.experiment import load_experiment
    from mtl.runtime import Runtime

    overrides = list(args.overrides)
    if args.nproc is not None:
        overrides.append(f"launch.nproc_per_node={args.nproc}")
    if args.seeds is not None:
        overrides.append(f"seeds=[{args.seeds}]")
    exp = load_experiment(args.config, overrides)
    if args.dry_run:
        return _dry_run(exp)
    outcome = _launch(exp, Runtime.from_environment(), resume=args.resume,
                      nodes=_nodes(args, exp.launch.nproc_per_node), allow_changes=args.allow_change)
    return outcome if isinstance(outcome, int) else 0


def _launch(exp, runtime, resume: bool = False, nodes=None, allow_changes=()):
    """Train `exp` here (`runtime`: this process's place in the launch, made once from the launcher's
    variables), or start torchrun with this same command line when it asks for more processes (or nodes,
    or DeepSpeed, which needs a process group even for one process)."""
    from launch.torchrun import Nodes

    started = time.monotonic()
    nodes = nodes or Nodes(nproc=exp.launch.nproc_per_node)
    wants_many = exp.launch.profile in ("torchrun", "deepspeed") or nodes.distributed
    if wants_many and not runtime.launched:
        if exp.launch.profile == "deepspeed":  # a DeepSpeed config that cannot work stops here, not in N processes
            from mtl.engine import deepspeed_config

            deepspeed_config(exp, nodes.nproc * nodes.nnodes)
        return _relaunch_torchrun(nodes)
    if exp.launch.cpu or not _has_cuda():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # said, so DeepSpeed does not warn that it guessed
    from mtl import console, regimes
    from mtl.core.errors import ConfigError

    if allow_changes and not resume:
        raise ConfigError("--allow-change applies with --resume only")
    main_process = runtime.main
    if main_process:
        console.log_to(exp.output_dir)
    if not regimes.is_plain(exp):  # stages (and their own checkpoints) under the run folder
        if allow_changes:
            raise ConfigError("--allow-change applies to a plain run; a regime's stages compare their own "
                              "experiments on resume (see README, Regimes)")
        done = regimes.run(exp, resume=resume, runtime=runtime)
        if main_process:
            label = "comparison" if exp.compare else f"regime {exp.regime.name}"
            print("\n" + console.regime_summary(exp.name, label, done, time.monotonic() - started), flush=True)
        return done
    from mtl.trainer import train

    outcome = train(exp, resume=resume, allow_changes=allow_changes, runtime=runtime)
    if main_process:
        print("\n" + console.closing_summary(exp.name, outcome, time.monotonic() - started, outcome.run_id), flush=True)
    return outcome


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _dry_run(exp) -> int:
    from mtl.core.config import dump_experiment
    from mtl.core.table import format_table
    from mtl.data import build_families, feature_cache_dir, load_splits, resolve_steps
    from mtl.encoder import load_tokenizer
    from sampling import mean_weights, rates_table

    print("# resolved experiment\n" + dump_experiment(exp))
    tokenizer = load_tokenizer(exp.encoder, exp.source, exp.overrides)
    families = build_families(exp, tokenizer)
    # The training run's feature cache: a dry run fills it, and a warm one tokenises nothing.
    splits = load_splits(exp, families, ["train", exp.train.eval_split], cache_dir=feature_cache_dir(exp))
    rows = [(s.label, s.dataset.language, s.role, "zero-shot" if s.zero_shot else "", s.n_examples,
             s.size) for s in splits]
    print("# datasets\n" + format_table(("dataset", "lang", "role", "", "examples", "features"), rows, left=4))
    train = [s for s in splits if s.role == "train"]
    sizes = {s.group: s.size for s in train}
    steps = resolve_steps(exp, train)
    weights = {n: t.weight for n, t in exp.tasks.items()}
    probs = mean_weights(sizes, exp.sampling, task_weights=weights, steps=steps * exp.train.grad_accum)
    from mtl import regimes

    # Under a regime each stage has its own budget and groups: these are the rates of a stage that trains them all.
    span = f"{steps} steps" if regimes.is_plain(exp) else "every group together, as a multi-task stage draws them"
    print(f"\n# sampling ({exp.sampling.strategy}, {span})\n{rates_table(sizes, probs)}")
    if not regimes.is_plain(exp):
        print(f"\n# stages ({', '.join(regimes.regimes_of(exp))}; each stage samples its own groups)\n"
              f"{regimes.describe(regimes.plan(exp))}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mtl import extra_eval
    from mtl.core.errors import ConfigError
    from mtl.evaluate import summary, table
    from mtl.inference import evaluate_checkpoint, load

    specs = [extra_eval.parse_spec(text) for text in args.extra]
    if (args.only_extra or args.log) and not specs:
        raise ConfigError(f"--only-extra and --log need a --dataset {extra_eval.SPEC_FORM}")
    which = "last" if args.last else "best"
    # With --only-extra the experiment's own data need not be on this machine.
    loaded = load(args.checkpoint, device=args.device, overrides=args.overrides, check_files=not args.only_extra,
                  which=which)
    print(f"checkpoint: {loaded.checkpoint.path}")
    options = extra_eval.parse_options(args.dataset_options)
    extra = extra_eval.resolve(loaded.exp, specs, options)  # every --dataset checked before anything is scored
    target = extra_eval.run_target(loaded, args.tracking_uri) if args.log else None
    metrics: dict[str, float] = {}
    if not args.only_extra:
        results = evaluate_checkpoint(loaded, split=args.split)
        print(table(results))
        metrics.update(summary(results, loaded.families))
    if extra:
        found = extra_eval.evaluate_extra(loaded, extra)
        print(extra_eval.report(found))
        metrics.update(extra_eval.metric_names(found))
        if target is not None:
            n = extra_eval.log_to_run(target, found)
            print(f"logged {n} extra metrics to MLflow run {target.run_id} at {target.uri}")
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mtl.core.errors import ConfigError, DataError
    from mtl.inference import load, predict_file

    loaded = load(args.checkpoint, device=args.device, which="last" if args.last else "best")
    try:
        fields = json.loads(args.fields) if args.fields else None
    except json.JSONDecodeError as err:
        example = """--fields '{"text": "sentence"}'"""
        raise ConfigError(f"--fields {args.fields}: not JSON ({err.msg}); e.g. {example}") from None
    try:
        n = predict_file(loaded, args.task, args.input, args.output, language=args.language, fields=fields,
                         fmt=args.format)
    except DataError as err:
        raise DataError(_predict_hint(str(err), loaded, args.task)) from None
    print(f"wrote {n} predictions to {args.output}")
    return 0


def _predict_hint(message: str, loaded, task: str) -> str:
    """A reader's error said in `mtl predict`'s terms: its flags, not the experiment file's keys."""
    message = message.replace("set `format:` to one of", "pass --format, one of")
    if "no column" in message and task in loaded.exp.tasks:
        inputs = [k for k in loaded.exp.tasks[task].datasets[0].fields or {"text": None} if k not in ("label", "id")]
        example = json.dumps(dict.fromkeys(inputs, "COLUMN"))
        message += f"; say which of your file's columns holds each field with --fields '{example}'"
    return message


def cmd_rerun(args: argparse.Namespace) -> int:
    from mtl import reproduce
    from mtl.runtime import Runtime

    overrides = list(args.overrides)
    if args.nproc is not None:
        overrides.append(f"launch.nproc_per_node={args.nproc}")
    recorded = reproduce.fetch(args.run_id, args.tracking_uri)
    exp = reproduce.rebuild(recorded, overrides)
    short = recorded.run_id[:8]
    runtime = Runtime.from_environment()
    # Under torchrun the command that started it has already reported.
    report = runtime.main and not os.environ.get("MTL_RERUN_REPORTED")
    if report:
        found = reproduce.differences(recorded, exp)
        for line in found:
            print(f"mtl: warning: differs from run {short}: {line}", file=sys.stderr, flush=True)
        if not found:
            print(f"same data, code and versions as run {short}", flush=True)
    if args.check:
        return 0
    os.environ["MTL_RERUN_REPORTED"] = "1"
    try:
        outcome = _launch(exp, runtime)
    finally:
        os.environ.pop("MTL_RERUN_REPORTED", None)
    if isinstance(outcome, int):  # trained under torchrun: read the new run's metrics back
        if outcome != 0 or not report:
            return outcome
        metrics = reproduce.latest_rerun_metrics(recorded)
    else:
        metrics = outcome.metrics
    if report and metrics is not None:
        changed = reproduce.metric_differences(recorded.metrics, metrics)
        for name, before, now in changed:
            print(f"mtl: warning: metric differs from run {short}: {name}: {before} → {now}", file=sys.stderr)
        if not changed:
            print(f"all evaluation metrics are identical to run {short}", flush=True)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mtl import reproduce

    if len(args.run_ids) == 1:
        return _compare_regimes(args.run_ids[0], args)
    runs = [reproduce.fetch(run_id, args.tracking_uri) for run_id in args.run_ids]
    print(reproduce.compare_text(runs, all_rows=args.all))
    return 0


def _compare_regimes(target: str, args: argparse.Namespace) -> int:
    """The regime table of an experiment file, an MLflow experiment or a regime/compare run, from MLflow alone."""
    from mtl import regimes, reproduce

    if Path(target).is_file():
        from mtl.experiment import load_experiment

        exp = load_experiment(target, args.overrides, check_files=False)
        uri = reproduce.tracking_uri(args.tracking_uri or exp.tracking.uri)
        name = exp.tracking.experiment or exp.name
        print(regimes.recorded_table(target, uri, experiment=name, order=regimes.regimes_of(exp)))
    else:
        print(regimes.recorded_table(target, reproduce.tracking_uri(args.tracking_uri)))
    return 0


def cmd_families(_: argparse.Namespace) -> int:
    from tasks import family_names, get_family

    for name in family_names():
        doc = (get_family(name).__doc__ or "").strip().splitlines()
        print(f"{name:<16} {doc[0] if doc else ''}")
    return 0


def cmd_sync_metrics(args: argparse.Namespace) -> int:
    """Send what a run kept while its tracking server was down: metrics, artifacts, model, the run's end."""
    from datetime import datetime

    from mtl.core.errors import ConfigError
    from mtl.tracking import sync_unsent

    try:
        done = sync_unsent(args.file, args.uri)
    except ConfigError:
        raise
    except Exception as err:  # the store did not take it all: what was sent is out of the file, the rest stays
        print(f"mtl: error: {args.file}: not all sent ({type(err).__name__}: {str(err)[:300]}); what is left stays "
              "in the file: run sync-metrics again when the store answers", file=sys.stderr)
        return 1
    sent = args.file.with_name(args.file.name + ".sent")
    args.file.replace(sent)  # sent once: a second sync would log every value twice
    parts = [f"sent {done.metrics} metric values"]
    if done.artifacts or done.models:
        parts.append(f"uploaded {done.artifacts} artifacts and {done.models} models")
    for run_id, status, end_time in done.ended:
        stamp = datetime.fromtimestamp(end_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(f"run {run_id} ended {status} at {stamp}")
    for path in done.missing:
        print(f"mtl: warning: {path} is no longer there; not uploaded", file=sys.stderr)
    print("; ".join(parts) + f"; the file is now {sent}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from launch.slurm import SlurmJob, sbatch_script
    from mtl.experiment import load_experiment

    exp = load_experiment(args.config, args.overrides)  # a bad experiment fails here, not in the queue
    job = SlurmJob(experiment=args.config, name=exp.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                   partition=args.partition, time=args.time, account=args.account, cpus_per_task=args.cpus_per_task,
                   master_port=args.master_port, overrides=list(args.overrides))
    script = sbatch_script(job)
    if args.output is None:
        print(script, end="")
        return 0
    args.output.write_text(script, encoding="utf-8")
    args.output.chmod(0o755)
    print(f"wrote {args.output}; submit it with: sbatch {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    from mtl.core.errors import ConfigError, DataError, TrainingError

    handlers = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "predict": cmd_predict,
        "families": cmd_families,
        "sync-metrics": cmd_sync_metrics,
        "rerun": cmd_rerun,
        "compare": cmd_compare,
        "launch": cmd_launch,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, OSError, UnicodeError) as err:
        # Input problems (bad files, missing or unreadable paths) are the user's to fix: one line, no traceback.
        print(f"mtl: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # the run went wrong (diverged, …): said in one line; the run is marked FAILED
        print(f"mtl: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
