# llamatool: `make demo` sets everything up and generates text with the default model;
# `make test` runs the test suite. Both start from a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LLAMATOOL := $(VENV)/bin/llamatool
MODEL  := models/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPT ?= The three most important things to know about the ocean are
N      ?= 64

.PHONY: install model warmup demo test test-reference test-install test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,serve,scripts]"
	touch $@

install: $(VENV)/.installed

$(MODEL): | $(VENV)/.installed
	$(PY) scripts/fetch_model.py

model: $(MODEL)

# Compile and cache every Numba kernel once, one process per core (later runs start warm).
warmup: install
	$(LLAMATOOL) warmup

# No warmup first: the first `run` compiles only its model's kernels (its weight types and the
# forward pass, on two cores), which is what the first token needs.
demo: install model
	$(LLAMATOOL) info $(MODEL)
	$(LLAMATOOL) run -m $(MODEL) -p "$(PROMPT)" -n $(N) --temp 0

# The parity tests against llama.cpp run when llama-cpp-python (the `compare` extra) and
# LLAMA_CPP_BIN (scripts/build_llamacpp.sh) are there, and skip otherwise; .ci/run has both.
test: install model
	$(PY) -m pytest -m "not reference and not install" -q

# Optional tier: compare with Hugging Face transformers (torch pinned: 2.13.0 is a CPU build here).
$(VENV)/.reference: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,serve,scripts,reference]"
	touch $@

test-reference: install model $(VENV)/.reference
	$(PY) -m pytest -m reference -q

# `pip install .` into a fresh venv, then `llamatool run`: the declared dependencies suffice.
test-install: install model
	$(PY) -m pytest -m install -q

test-all: test test-reference test-install

bench: install model
	$(LLAMATOOL) bench -m $(MODEL)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
