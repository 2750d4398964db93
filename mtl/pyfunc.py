"""A finished run's model as one MLflow pyfunc model per task.

With it, `mlflow models predict`, `mlflow.pyfunc.load_model` and the Model Registry work on
an mtl run like on any other MLflow model. The model folder holds the checkpoint (weights,
tokenizer, label vocabularies, experiment) and the `mtl`, `tasks` and `sampling` code, so
it loads wherever the listed packages are installed.

Two input shapes, chosen by the task's reader:
- table tasks (classification): a DataFrame whose columns are the task's input fields
  (`text`, and `text_pair` for pairs); the output is one label (or score) per row. The rows go to
  the task's reader as records in memory, checked as a file's rows are (errors name the row index);
- every other task: a DataFrame with a `document` column holding input in the task's own
  file format (CoNLL-U, CoNLL, SQuAD JSON); the output is the prediction file as text.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from mtl.records import REPO_ROOT, package_versions

CODE = ("mtl", "tasks", "sampling")
CHECKPOINT_FILES = ("model.pt", "vocab.json", "experiment.yaml", "trainer_state.json")
CHECKPOINT_DIRS = ("tokenizer", "encoder")
DOCUMENT = "document"
REQUIREMENTS = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "mlflow", "pyyaml", "numpy",
                "scipy", "conllu", "seqeval", "pandas", "tqdm")


def input_fields(exp: Any, task: str) -> list[str] | None:
    """The DataFrame columns a table task reads, or None for tasks that read whole documents."""
    from tasks import get_family
    from tasks.formats import ROWS

    family = get_family(exp.tasks[task].family)
    if ROWS not in family.accepts:
        return None
    fields = exp.tasks[task].datasets[0].fields or {"text": 0}
    return [k for k in fields if k not in ("label", "id")]


class TaskModel(mlflow.pyfunc.PythonModel):
    """Predicts one task of an mtl checkpoint."""

    def __init__(self, task: str | None = None):
        self.task = task
        self.loaded: Any = None

    def load_context(self, context):  # no type hints here: MLflow reads them as a signature
        from mtl.inference import load

        self.task = Path(context.artifacts["task"]).read_text(encoding="utf-8").strip()
        self.loaded = load(context.artifacts["checkpoint"])

    # A DataFrame hint: MLflow then neither warns that hints are missing nor validates the columns, which
    # differ per task (the task's own fields are checked below).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        fields = input_fields(self.loaded.exp, self.task)
        if fields is None:
            return [self._predict_document(str(doc)) for doc in frame[DOCUMENT]]
        return self._predict_rows(frame, fields)

    def _predict_rows(self, frame: Any, fields: list[str]) -> list[Any]:
        from mtl.core.config import DatasetConfig
        from mtl.data import read_split
        from mtl.evaluate import predict_features
        from mtl.runtime import Runtime
        from tasks.formats import InMemory, resolve_dataset

        missing = [f for f in fields if f not in frame.columns]
        if missing:
            raise ValueError(f"task {self.task}: input lacks column(s) {missing} (expected {fields})")
        template = self.loaded.exp.tasks[self.task].datasets[0]
        family = self.loaded.families[self.task]
        rows = [{f: (None if _missing(v) else str(v)) for f, v in zip(fields, row)}
                for row in frame[fields].itertuples(index=False)]
        ds = DatasetConfig(
            language=template.language,
            name="predict",
            test=InMemory(rows, "model input"),
            format="jsonl",  # any table format: they all take rows in memory alike
            fields={f: f for f in fields},
            options={k: v for k, v in _plain(template.options).items() if k != "header"},
        )
        examples = read_split(family, resolve_dataset(family, ds), "test")
        features = family.featurize(examples, "test")
        records = predict_features(
            self.loaded.model, family, self.task, features, self.loaded.exp.train.eval_batch_size,
            Runtime.local(self.loaded.device)
        )
        return list(family.finalize(examples, features, records))

    def _predict_document(self, text: str) -> str:
        from mtl.inference import predict_file

        family = self.loaded.families[self.task]
        template = self.loaded.exp.tasks[self.task].datasets[0]
        suffix = Path(template.split("dev") or template.split("train") or "input.txt").suffix or ".txt"
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / f"input{suffix}", Path(tmp) / f"output{family.prediction_suffix}"
            src.write_text(text, encoding="utf-8")
            predict_file(self.loaded, self.task, src, out)
            return out.read_text(encoding="utf-8")


def _plain(options: Any) -> dict[str, Any]:
    """A dataset's reader options as a mapping (typed once the experiment is assembled)."""
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options or {})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def slim_checkpoint(checkpoint: Path, target: Path) -> Path:
    """Copy what prediction needs from a checkpoint (no optimizer, scheduler or RNG state)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, target / name)
    for name in CHECKPOINT_DIRS:
        if (checkpoint / name).is_dir():
            shutil.copytree(checkpoint / name, target / name, dirs_exist_ok=True)
    return target


def input_example(exp: Any, task: str, split: Any | None) -> Any:
    """A few real input rows for the signature and the UI (None when no example is at hand)."""
    import pandas as pd

    fields = input_fields(exp, task)
    if fields is not None:
        if split is None:
            return None
        rows = [{f: getattr(ex, f, None) for f in fields} for ex in split.examples[:3]]
        return pd.DataFrame(rows)
    template = exp.tasks[task].datasets[0]
    path = template.split("dev") or template.split("train")
    if path is None or template.hub or not Path(path).is_file() or Path(path).suffix == ".json":
        return None
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        head = fh.read(2**16)  # the first blocks only: a training file may be gigabytes of text
    blocks = head.split("\n\n")
    return pd.DataFrame({DOCUMENT: ["\n\n".join(blocks[:2]).strip() + "\n\n"]})


def requirements() -> list[str]:
    found = package_versions(REQUIREMENTS)
    # A local build tag (torch's "+cpu") is not on the package index; pin the release itself.
    return [f"{name}=={version.split('+')[0]}" for name, version in found.items() if version != "not installed"]


def log_task_models(
    exp: Any, checkpoint: Path, examples: dict[str, Any] | None = None
) -> dict[str, str]:
    """Log one pyfunc model per task into the active MLflow run; returns task → model URI."""
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    from mtl.inference import load

    uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        slim = slim_checkpoint(Path(checkpoint), Path(tmp) / "checkpoint")
        code = [Path(tmp) / "code" / c for c in CODE]
        for target in code:
            shutil.copytree(REPO_ROOT / target.name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        loaded = load(slim, device="cpu")
        task_file = Path(tmp) / "task.txt"
        for task in exp.tasks:
            task_file.write_text(task, encoding="utf-8")
            fields = input_fields(exp, task)
            example = input_example(exp, task, (examples or {}).get(task))
            if example is not None:
                probe = TaskModel(task)
                probe.loaded = loaded
                signature = infer_signature(example, probe.predict(None, example))
            else:
                cols = fields if fields is not None else [DOCUMENT]
                signature = mlflow.models.ModelSignature(inputs=Schema([ColSpec("string", c) for c in cols]))
            info = mlflow.pyfunc.log_model(
                name=task,
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"checkpoint": str(slim), "task": str(task_file)},
                code_paths=[str(c) for c in code],
                pip_requirements=requirements(),
                signature=signature,
                input_example=example,
                tags={"mtl.task": task, "mtl.family": exp.tasks[task].family},
            )
            uris[task] = info.model_uri
    return uris
