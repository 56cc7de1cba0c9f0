# `make train` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# tensorflow-model-optimization (QAT, pruning) needs tf_keras, pins absl-py~=1.2 and sets
# TF_USE_LEGACY_KERAS on import: it lives in a virtualenv of its own, which mbakt_tf.optimize
# runs as a separate process (docs/optimize.md).
OPTIMIZE_VENV ?= .venv-optimize
# MediaPipe (TFLite Metadata writers, the Tasks API Android apps call) in a virtualenv of its own:
# 0.10.21 is the last release whose wheel ships the metadata writers' native part (later ones,
# 1.x included, cannot import them), and it pins numpy<2, protobuf<5. mbakt_tf.export.mediapipe_tasks
# runs it as a separate process.
MEDIAPIPE_VENV ?= .venv-mediapipe
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-optimize setup-mediapipe setup-all data train train-full test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup-optimize: $(OPTIMIZE_VENV)/.installed

$(OPTIMIZE_VENV)/.installed: constraints.txt
	$(PYTHON) -m venv $(OPTIMIZE_VENV)
	$(OPTIMIZE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OPTIMIZE_VENV)/bin/python -m pip install --quiet -c constraints.txt tensorflow tf-keras tensorflow-model-optimization
	touch $@

setup-mediapipe: $(MEDIAPIPE_VENV)/.installed

$(MEDIAPIPE_VENV)/.installed: constraints.txt
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet -c constraints.txt mediapipe
	touch $@

# Fashion-MNIST from Debian's package (offline); elsewhere see docs/training.md, "Data".
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST found in $(FASHION_MNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Put the four Fashion-MNIST IDX .gz files in ~/.keras/datasets/fashion-mnist (see docs/training.md)"; \
	fi

# The quickstart: MBAKT on Fashion-MNIST, a few minutes on 2 CPU cores. setup-mediapipe too, so that
# scripts/export.py after it writes the TFLite Metadata that MediaPipe Tasks need to load a file.
train: setup setup-mediapipe data
	$(PY) scripts/train.py --flagfile=flags/quickstart.cfg

# The full Fashion-MNIST schedule.
train-full: setup setup-mediapipe data
	$(PY) scripts/train.py --flagfile=flags/fashion_mnist.cfg

# pytest-xdist: one worker per core, a test file (or class) at a time (module-scoped fixtures are built
# once); PYTEST_WORKERS=0 runs in this process. The slowest tests' times close the output.
PYTEST_WORKERS ?= auto
PYTEST_XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope)

# The three virtualenvs install side by side (`make -j3`): on a fresh 2-core machine that takes about
# 2 minutes instead of 3.5 (docs/contributing.md#tests).
setup-all:
	$(MAKE) --no-print-directory -j3 setup setup-optimize setup-mediapipe

test: setup-all
	$(PY) -m pytest $(PYTEST_XDIST)

# Tests marked slow (real data, longer training).
test-slow: setup-all data
	$(PY) -m pytest $(PYTEST_XDIST) -m slow

clean:
	rm -rf $(VENV) $(OPTIMIZE_VENV) $(MEDIAPIPE_VENV) *.egg-info .pytest_cache
