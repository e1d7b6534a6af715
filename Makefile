# Two commands a new user needs: `make run` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8888

.PHONY: run test bench bench-cold bench-aio soak lint sysdeps sysdeps-test sysdeps-bench clean

# Debian packages: libaio's headers and a C compiler to build aiobind (and the test shim).
sysdeps:
	@./scripts/need-debian-packages.sh libaio-dev:/usr/include/libaio.h gcc:cc

sysdeps-test: sysdeps
	@./scripts/need-debian-packages.sh wget:wget curl:curl openssl:openssl systemd:systemd-socket-activate util-linux:fincore

sysdeps-bench: sysdeps
	@./scripts/need-debian-packages.sh wrk:wrk nginx-light:nginx util-linux:taskset

$(STAMP): pyproject.toml setup.py src/aiobind/_ffi_build.py | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: sysdeps $(STAMP)
	$(PY) -m aws --root . --port $(PORT)

test: sysdeps-test $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: sysdeps-bench $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.httpbench

bench-cold: sysdeps-bench $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.httpbench.cold

bench-aio: sysdeps $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/aio_bench.py

soak: sysdeps $(STAMP)
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info src/aiobind/_native.* .pytest_cache
