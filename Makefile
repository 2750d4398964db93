# Two commands on a fresh machine:  `make quickstart`  (set up + main job)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup quickstart test lint ui clean

$(BIN)/mtl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# torch first and pinned, so nothing below can pull a different (multi-GB CUDA) build
	$(BIN)/pip install -q "$(TORCH)"
	echo "$(TORCH)" > constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/mtl

setup: $(BIN)/mtl

quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/mtl train examples/quickstart.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

PORT ?= 5000
STORE ?= sqlite:///mlruns/mlflow.db
ui: setup  # make ui PORT=5001 STORE=sqlite:///path/to/mlflow.db (or a server's URI)
	$(BIN)/mlflow ui --backend-store-uri "$(STORE)" --host 127.0.0.1 --port $(PORT) --workers 1

clean:
	rm -rf runs .cache
