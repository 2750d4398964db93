"""Loading a Hugging Face Hub dataset split: one helper, one error policy for every family.

Whatever `datasets.load_dataset` raises becomes a DataError that names the dataset and split.
A hub that cannot be reached (offline mode, no network, a timeout) gets one clear message that
says how to run from local files instead.
"""

from __future__ import annotations

from typing import Any

from mtl.core.config import DatasetConfig
from mtl.core.errors import DataError

_UNREACHABLE_NAMES = ("OfflineModeIsEnabled", "ConnectTimeout", "ReadTimeout", "ConnectError", "Timeout")


def hub_source(dataset: DatasetConfig) -> str:
    """`name` or `name/config`, as messages name a hub dataset."""
    return dataset.hub if dataset.hub_config is None else f"{dataset.hub}/{dataset.hub_config}"


def unreachable(err: BaseException) -> bool:
    """Whether an exception from the hub means 'no connection' rather than 'bad request'."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _UNREACHABLE_NAMES:
            return True
        if "OfflineModeIsEnabled" in str(e) or "Couldn't reach" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def load_hub(dataset: DatasetConfig, split: str, streaming: bool = False) -> Any:
    """One split of a hub dataset (a `datasets.Dataset`, or with `streaming` an `IterableDataset` read as it
    is iterated), or a DataError that says what to do."""
    if not dataset.hub:
        raise DataError(f"dataset {dataset.name or dataset.language!r}: no hub name is set")
    import datasets

    source = hub_source(dataset)
    try:
        if streaming:
            return datasets.load_dataset(dataset.hub, dataset.hub_config, split=split, streaming=True)
        return datasets.load_dataset(dataset.hub, dataset.hub_config, split=split)
    except Exception as err:  # the hub raises many types; each becomes a message naming the dataset
        if unreachable(err):
            raise DataError(
                f"dataset {source} not reachable: offline? set data_root/local to use files "
                f"(or run once online; then HF_HUB_OFFLINE=1 uses the cached copy) [{type(err).__name__}: {err}]"
            ) from None
        why = f"{type(err).__name__}: {err}"
        raise DataError(f"dataset {source} [{split}]: could not load from the hub: {why}") from None
