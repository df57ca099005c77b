# The two commands of the README: `make demo` and `make test`.
# Both create their own virtual environment (.venv) and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast bench engines clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	# Non-editable install so data_files (launch, config, engines, ament index) land in the venv.
	$(PIP) install --quiet --no-deps --force-reinstall .
	touch $(STAMP)

demo: $(STAMP)
	$(PIP) install --quiet --no-deps --force-reinstall .
	$(VENV)/bin/ddfs-run --demo --sweeps 12 --out demo_out

test: $(STAMP)
	$(PIP) install --quiet --no-deps --force-reinstall .
	$(PY) -m pytest -q -rs test

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow" test

bench: $(STAMP)
	$(PY) -m bench.cost_volume
	$(PY) -m bench.backends
	$(PY) -m bench.node_latency
	$(PY) -m bench.memory


# Retrain and re-export the shipped engines on this machine (CPU: about an hour on 2 cores).
engines: $(STAMP)
	PY=$(PY) bash training/train_all.sh

clean:
	rm -rf $(VENV) build *.egg-info demo_out
