"""Names of the evaluation's metrics, in one type: what the evaluation logs, what train.select_best names,
what a regime's comparison scores and what `mtl compare` reads back from MLflow are all `MetricKey`s.

    eval/<task>/<dataset>/<metric>       a dataset in a language its stage trains on
    zeroshot/<task>/<dataset>/<metric>   a dataset in a language it does not (reported apart)
    eval/<task>/mean_<metric>            a task's mean over its in-language datasets (no dataset)
    score/<task>/<dataset>/<metric>      a regime's reported score, as its run logs it
    <task>/<dataset>/<metric>            a column of the comparison table (no prefix)

Task names hold no '/' (refused at the door) nor do metric names, so a dataset name that holds one still
parses back to itself. Imports nothing of the project: the experiment checks read select_best with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

EVAL = "eval"
ZERO_SHOT = "zeroshot"
SCORE = "score"
EXTRA = "extra"  # metrics of more data scored after training (mtl/extra_eval.py): extra/<task>/<lang>/<metric>
PREFIXES = (EVAL, ZERO_SHOT, SCORE, EXTRA)
_ROLES = {EVAL: "eval", ZERO_SHOT: "zero-shot"}  # prefix → the role of a dataset in a stage
MEAN = "mean_"


def mlflow_safe(name: str) -> str:
    """`name` with every character MLflow refuses in a metric key replaced by '_'.

    MLflow allows alphanumerics, _ - . space : and /; language codes like zh-TW are fine. Any metric name
    goes through here (not only a MetricKey), and the keys of runs already logged must read back the same.
    """
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


@dataclass(frozen=True)
class MetricKey:
    """One metric of one task (and dataset), under a prefix (None: a comparison column)."""

    prefix: str | None
    task: str
    dataset: str | None  # None: over the task's datasets (the metric is then mean_<metric>)
    metric: str

    @classmethod
    def for_role(cls, role: str, task: str, dataset: str, metric: str) -> MetricKey:
        """The key of a dataset evaluated in `role` ("eval", or "zero-shot": a language not trained on)."""
        return cls(ZERO_SHOT if role == "zero-shot" else EVAL, task, dataset, metric)

    @classmethod
    def mean(cls, task: str, metric: str) -> MetricKey:
        """A task's mean of `metric` over its in-language datasets: eval/<task>/mean_<metric>."""
        return cls(EVAL, task, None, MEAN + metric)

    @property
    def role(self) -> str | None:
        """The role of the dataset scored ("eval" or "zero-shot"); None where the prefix is no evaluation's."""
        return _ROLES.get(self.prefix or "")

    @property
    def zero_shot(self) -> bool:
        return self.prefix == ZERO_SHOT

    def with_prefix(self, prefix: str | None) -> MetricKey:
        return replace(self, prefix=prefix)

    def safe(self) -> MetricKey:
        """The key as MLflow stores it: every part through `mlflow_safe` ('/' is allowed, so the parts stay)."""
        return MetricKey(None if self.prefix is None else mlflow_safe(self.prefix), mlflow_safe(self.task),
                         None if self.dataset is None else mlflow_safe(self.dataset), mlflow_safe(self.metric))

    def format(self) -> str:
        parts = (self.prefix, self.task, self.dataset, self.metric)
        return "/".join(p for p in parts if p is not None)

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str, prefixed: bool = True) -> MetricKey:
        """The key `text` names; `prefixed=False` for a comparison column (<task>/<dataset>/<metric>).

        Raises ValueError naming `text` where it is none of the forms above."""
        parts = text.split("/") if isinstance(text, str) else []
        prefix = parts.pop(0) if prefixed and parts else None
        wanted = f"<{'|'.join(PREFIXES)}>/" if prefixed else ""
        if (prefixed and prefix not in PREFIXES) or len(parts) < (2 if prefixed else 3) or not all(parts):
            forms = f"{wanted}<task>/<dataset>/<metric>" + (f" or {wanted}<task>/{MEAN}<metric>" if prefixed else "")
            raise ValueError(f"{text!r} is not a metric name: write {forms}")
        dataset = "/".join(parts[1:-1]) if len(parts) > 2 else None
        return cls(prefix, parts[0], dataset, parts[-1])
