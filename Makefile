# `make demo` and `make test` set everything up themselves: the virtual environment, the
# package with its C++ ops (rebuilt when cc_ops/ or setup.py change) and Fashion-MNIST.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.tfquant-installed
NATIVE_SOURCES := $(shell find cc_ops -name '*.cc' -o -name '*.h') setup.py pyproject.toml
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: demo test bench install data clean fuzz

demo: install data
	$(PY) examples/fashion_mnist.py

# Two pytest workers (pytest-xdist): much of a test's time is one-threaded (tracing, the
# converter, subprocess start-up); on 2 cores the suite took 12.4 min alone, 7.2 with two.
test: install data
	$(PY) -m pytest -q -n 2 tests

bench: install data
	$(PY) benchmarks/run_all.py

# ASan + UBSan build of the C++ parts in build/sanitized/, then >= 10^5 fuzzed calls and
# >= 10^4 mutated flatbuffers through the delegate (fuzz/README.md); not part of `test`.
fuzz: install
	$(PY) fuzz/run.py --op-cases 10000 --delegate-cases 12000 --json build/fuzz/report.json

install: $(INSTALLED)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

# Build dependencies first: the C++ build compiles against the installed TensorFlow.
$(INSTALLED): $(PY) $(NATIVE_SOURCES)
	$(PIP) install --quiet "tensorflow==2.21.*" "pybind11>=2.12" setuptools wheel
	$(PIP) install --quiet --no-build-isolation -e ".[test]"
	touch $@

data:
	@if [ -f "$(FASHION_MNIST)" ] || [ -n "$$TFQUANT_FASHION_MNIST_DIR" ]; then \
		true; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found. Install the Debian package dataset-fashion-mnist" \
		     "(apt-get install dataset-fashion-mnist), or set TFQUANT_FASHION_MNIST_DIR to a" \
		     "folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz." >&2; \
		exit 1; \
	fi

clean:
	rm -rf build *.egg-info tfquant/*.so $(VENV)
