# Two set-up commands (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test test-slow test-min dist-check lint format bench docs docs-serve clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,lab]'
	# timm is a test oracle for the CNN norm zoo; without its torchvision dependency (no CPU
	# build of it matches torch 2.13 here), so it cannot sit in an extra.
	$(PIP) install -q --no-deps -c constraints.txt 'timm==1.0.31'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/normkit lab --quick --out lab-report
	@echo "lab report: $(CURDIR)/lab-report/index.html"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src
	$(PY) -m pytest -n 2 -m "not slow" -q
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -m slow -q

# The suite against the declared minimum versions (constraints-min.txt), in its own venv.
test-min:
	$(PYTHON) -m venv .venv-min || python3 -m venv .venv-min
	.venv-min/bin/python -m pip install -q -c constraints-min.txt -e '.[test,lab]'
	.venv-min/bin/python -m pytest -n 2 -m "not slow" -q

# Build the sdist and wheel, twine check, install the wheel without extras in a fresh venv and
# smoke-test it from outside the source tree (CI runs it after `make test`).
dist-check: $(STAMP)
	bash scripts/dist_check.sh $(PY) $(PYTHON)

format: $(STAMP)
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

# The documentation site (guides, API reference from the docstrings, benchmarks) into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

bench: $(STAMP)
	$(VENV)/bin/normkit bench --quick --csv bench/results.csv

clean:
	rm -rf $(VENV) .venv-min build dist site *.egg-info src/*.egg-info
