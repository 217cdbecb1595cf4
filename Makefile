# The course's commands. `make lab` opens the course; `make test` runs the whole suite.
# Both create the virtual environment .venv on first use (torch pinned, see pyproject.toml).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: lab test env exercises notebooks lint bench clean-venv

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lab: env
	$(VENV)/bin/jupyter lab notebooks/00_welcome.ipynb

test: env
	COURSE_DEVICE=cpu COURSE_QUIET=1 PYTHONHASHSEED=0 $(PY) -m pytest $(PYTEST_ARGS)

# Regenerate exercises/ from the solutions' sources (solutions/src/). A notebook holding a
# learner's answers is left as it is; FORCE=1 moves it to exercises/backups/ first.
exercises: env
	$(PY) -m course_lib.grading.make_exercises $(if $(FORCE),--force)

# Build each notebook in notebooks/ and solutions/ from its text source (src/NN_topic.md,
# jupytext MyST) and execute it in place with the project's own kernel: its outputs are
# what nbval then compares. NB=path (the .ipynb or its .md) for one notebook.
notebooks: env
	$(PY) -m course_lib.tools.execute_notebooks $(NB)

lint: env
	$(VENV)/bin/ruff check course_lib tests

bench: env
	$(PY) -m course_lib bench decode

clean-venv:
	rm -rf $(VENV)
