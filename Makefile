VENV ?= .venv
PY = $(VENV)/bin/python
PYTEST_ARGS ?=
SRC = vhd migrate tests bench

.PHONY: venv deps lint test demo bench fmt clean

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps:
	@if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then \
		SUDO=; \
		if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		echo "installing qemu-utils"; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils; \
	fi

lint: venv
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy vhd migrate
	$(VENV)/bin/lint-imports

# Two workers (pytest-xdist), each test file on one of them (its module-scoped daemon
# once); .pyc files written, or every xfer subprocess compiles the package from source.
test: venv deps lint
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

demo: venv deps
	$(PY) -m migrate.cli.demo

$(VENV)/.bench-stamp: $(VENV)/.stamp
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: venv deps $(VENV)/.bench-stamp
	@missing=; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	command -v iperf3 >/dev/null 2>&1 || missing="$$missing iperf3"; \
	command -v socat >/dev/null 2>&1 || missing="$$missing socat"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	test -x /usr/bin/time || missing="$$missing time"; \
	if [ -n "$$missing" ]; then \
		SUDO=; \
		if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi; \
		echo "installing$$missing"; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@rc=0; \
	$(PY) bench/vhd_convert.py || rc=1; \
	$(PY) bench/vdi_transfer.py || rc=1; \
	$(PY) bench/guest_primitives.py || rc=1; \
	$(PY) bench/vm_migration.py || rc=1; \
	exit $$rc

fmt: venv
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
