# Two entry points a newcomer needs: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean merge-to-learn

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU wheel; any other torch spec pulls multi-GB CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	# [test] includes [server]: the demo and the registry tests start a local registry.
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python examples/quickstart.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python examples/trust_policy.py

# Merge to Learn on SmolLM2-135M-Instruct (examples/merge_to_learn/README.md); QUICK=1 for a pipeline check.
merge-to-learn: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[examples]'
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python examples/merge_to_learn/run.py $(if $(QUICK),--quick,--results examples/merge_to_learn/results)

# The venv's bin/ goes first on PATH so tests that run `tvreg`/`tvreg-server` get these installs.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/install.py

clean:
	rm -rf $(VENV) demo
