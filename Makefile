# The two commands of the README: `make demo` and `make test`.
# Both create their own virtual environment (.venv) and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast bench engines eval-bags eval-table clean

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
	$(PY) -m bench.stages
	$(PY) -m bench.refine
	$(PY) -m bench.throughput


# Retrain and re-export the shipped engines on this machine (CPU: about an hour on 2 cores).
engines: $(STAMP)
	PY=$(PY) bash training/train_all.sh

# Issue 9's held-out test bags (git-ignored out/bags/): every real_dfd test scene and every
# rgbd_7scenes test frame of ddfs_ros/data_splits.py, rendered with each data set's camera.
EVAL_BAGS := out/bags/real_dfd_test out/bags/rgbd_7scenes_test
eval-bags: $(EVAL_BAGS)

out/bags/real_dfd_test: ddfs_ros/data_splits.py
	rm -rf $@
	nice -n 10 $(PY) -m ddfs_ros.eval.bag_cli make $@ --source real_dfd --split test --seed 1

out/bags/rgbd_7scenes_test: ddfs_ros/data_splits.py
	rm -rf $@
	nice -n 10 $(PY) -m ddfs_ros.eval.bag_cli make $@ --source rgbd_7scenes --split test --seed 1

# The acceptance table of issue 9: every engines/*.json + both baselines, replayed through the node.
eval-table: $(EVAL_BAGS)
	nice -n 10 $(PY) -m ddfs_ros.eval.acceptance --out out/eval/acceptance.md --json out/eval/acceptance.json

clean:
	rm -rf $(VENV) build *.egg-info demo_out
