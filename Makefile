# goracs_ray — make demo | make test | make quality | make style
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# make demo/test build their tiny model locally: they never reach the Hub
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv test demo demo-select quality style clean

venv: $(VENV)/.installed

# Every extra (deepspeed, plots, sentence) as well as dev: the test suite uses them all.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

test: venv
	$(PY) -m ruff check goracs_ray tests benchmarks jobs
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m goracs_ray.cli bench jobs/configs/demo_ml100k.yaml

demo-select: venv
	$(PY) -m goracs_ray.demo

quality: venv
	$(PY) -m ruff check goracs_ray tests benchmarks jobs
	$(PY) -m ruff format --check goracs_ray tests benchmarks jobs

style: venv
	$(PY) -m ruff check --fix goracs_ray tests benchmarks jobs
	$(PY) -m ruff format goracs_ray tests benchmarks jobs

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
