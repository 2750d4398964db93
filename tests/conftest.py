"""Shared fixtures: real data from ../shared, offline hub, and small encoders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTL_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
E5 = SHARED / "models" / "multilingual-e5-small-q4"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Nothing a test does writes to the user's caches or to the repository's mlruns/."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA} (set MTL_SHARED to the shared/ folder)")
    return DATA


@pytest.fixture(scope="session")
def e5_path() -> Path:
    if not E5.is_dir():
        pytest.fail(f"shared model not found at {E5}")
    return E5


def tiny_encoder(hidden: int = 64, layers: int = 2, heads: int = 2) -> dict:
    """An `encoder:` block for a small random BERT that uses the multilingual e5 tokenizer."""
    return {
        "name": str(E5),
        "from_config": {
            "model_type": "bert",
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": hidden * 4,
        },
        "max_length": 128,
    }


@pytest.fixture
def tiny_encoder_cfg() -> dict:
    return tiny_encoder()
