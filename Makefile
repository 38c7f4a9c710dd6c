# Nephele: `make run` serves the portal on its embedded defaults,
# `make test` starts the test bed and runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test testbed-down venv migrate demo clean bench-submit

$(BIN)/python:
	scripts/ensure-python $(PYTHON) $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

migrate: venv
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py load_demo

run: demo
	HOST=$(HOST) PORT=$(PORT) scripts/run

test: venv
	scripts/testbed up
	. .testbed/env && $(BIN)/python -m pytest $(PYTEST_ARGS)

testbed-down:
	scripts/testbed down

clean:
	rm -rf $(VENV) var

# Submission throughput: raw sbatch on the node vs the portal end to end.
bench-submit: venv
	scripts/testbed up
	. .testbed/env && $(BIN)/python bench/submit_throughput.py $(BENCH_ARGS)
