# The course's commands. `make lab` opens the course; `make test` runs the whole suite.
# Both create the virtual environment .venv on first use (torch pinned, see pyproject.toml).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# the memories README.md's decode table compares (the growing cache and three fixed-size ones)
BENCH_ARGS  ?= --memory full --memory window --memory linear --memory compressive
# Extra flags for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port 8890"
LAB_ARGS ?=
# As root (containers) JupyterLab refuses to start unless told it may.
LAB_ROOT = $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: lab test test-fast env exercises notebooks lint bench gpu-check clean-venv site site-theme

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# JupyterLab at the project's root, so that notebooks/ (the lessons) and exercises/ (where you
# answer) are both in its file browser; it opens lesson 00.
lab: env
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(LAB_ROOT) $(LAB_ARGS) notebooks/00_welcome.ipynb

test: env
	COURSE_DEVICE=cpu COURSE_QUIET=1 PYTHONHASHSEED=0 $(PY) -m pytest $(PYTEST_ARGS)

# The development tier: tests/ only (addopts emptied: no nbval over notebooks/ and solutions/),
# no test marked slow, browser or gpu, in parallel (pytest-xdist), plus the doctests of
# course_lib's docstrings. `make test` (what CI runs) stays the whole suite.
test-fast: env
	COURSE_DEVICE=cpu COURSE_QUIET=1 PYTHONHASHSEED=0 $(PY) -m pytest -o addopts="" \
		-m "not slow and not browser and not gpu" -n auto --doctest-modules tests course_lib $(PYTEST_ARGS)

# Regenerate exercises/ from the solutions' sources (solutions/src/). A notebook holding a
# learner's answers (committed or not) is left as it is, and that is no error; FORCE=1 moves
# it to exercises/backups/ first and says how to bring it back.
exercises: env
	$(PY) -m course_lib.tools.make_exercises $(if $(FORCE),--force)

# Build each notebook in notebooks/ and solutions/ from its text source (src/NN_topic.md,
# jupytext MyST) and execute it in place with the project's own kernel: its outputs are
# what nbval then compares. NB=path (the .ipynb or its .md) for one notebook. An author's
# command: a notebook edited by hand (cells that no source generated) is left as it is;
# FORCE=1 moves it to backups/notebooks/ (or backups/solutions/) first.
notebooks: env
	$(PY) -m course_lib.tools.execute_notebooks $(if $(FORCE),--force) $(NB)

lint: env
	$(VENV)/bin/ruff check course_lib tests

# The plot goes to runs/ (ignored by git), not into the repository's root.
bench: env
	@mkdir -p runs
	$(PY) -m course_lib bench decode $(BENCH_ARGS) --out runs/bench_decode.png

# On a machine with a CUDA GPU: the tests marked gpu and the decode and chunked-training benchmarks on it,
# into runs/gpu (.ci/gpu-check says what each is).
gpu-check: env
	bash .ci/gpu-check

# The course's website in _build/site/html (view: python -m http.server -d _build/site/html 8000): Jupyter Book 2
# over the executed notebooks, nothing executed (course_lib/tools/site.py). Its theme, MyST's book theme, is built
# from its source in site/vendor/myst-theme with packages from the npm registry, once (`make site-theme`); needs Node.js >= 18.
THEME := site/vendor/myst-theme
site: env site-theme
	$(PY) -m course_lib.tools.site

site-theme: $(THEME)/build/index.js

$(THEME)/build/index.js: $(addprefix $(THEME)/,package.json package-lock.json prepare.cjs app/root.tsx app/katex.ts)
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "make site needs Node.js >= 18 and npm: apt-get install nodejs npm (or https://nodejs.org)" >&2; exit 1; }
	@node -e 'process.exit(parseInt(process.versions.node) < 18 ? 1 : 0)' || { echo "make site needs Node.js >= 18, found $$(node --version)" >&2; exit 1; }
	cd $(THEME) && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent >/dev/null
	@touch $@

clean-venv:
	rm -rf $(VENV)
