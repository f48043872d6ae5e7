# Two commands do all the set-up on a fresh machine (Python >= 3.10 and a C++17 compiler):
#   make demo   -> virtual env, torch (CPU build if missing), bayesq built with its C++ kernels, main job
#   make test   -> the same install, then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bayesq-installed
# The CPU build of torch; only installed when no torch >= 2.3 is importable already.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-slow sanitize lint bench clean

# The editable install maps each Python module by name when it is installed, so a module added
# (or removed) since needs a reinstall: MODULE_LIST holds the names and changes only when they do.
MODULES := $(sort $(wildcard bayesq/*.py bayesq/*/*.py models/*.py experiments/*.py))
MODULE_LIST := $(VENV)/.bayesq-modules
$(shell mkdir -p $(VENV) && (echo '$(MODULES)' | cmp -s - $(MODULE_LIST) || echo '$(MODULES)' > $(MODULE_LIST)))

$(STAMP): pyproject.toml CMakeLists.txt $(MODULE_LIST) $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import sys, torch; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 3))" \
		|| $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.vnq

test: $(STAMP) sanitize
	$(PY) -m pytest

# The C++ kernels under AddressSanitizer + UBSan: a stand-alone driver (csrc/sanitize_test_driver.cpp)
# runs random cases on every ISA path against its own reference; any report fails the target.
SANITIZE_DIR := build/sanitize
sanitize: $(STAMP)
	$(VENV)/bin/cmake -S . -B $(SANITIZE_DIR) -DBAYESQ_SANITIZE_DRIVER=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	$(VENV)/bin/cmake --build $(SANITIZE_DIR) -j 2 > /dev/null
	$(SANITIZE_DIR)/bayesq_test_driver 300

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(PY) -m ruff check bayesq models experiments tests
	$(PY) -m ruff format --check bayesq models experiments tests

bench: $(STAMP)
	$(PY) -m experiments.bench_vnq
	$(PY) -m experiments.bench_kernels
	$(PY) -m experiments.bench_noise

clean:
	rm -rf build $(VENV) results
